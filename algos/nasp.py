"""NASP: Efficient Neural Architecture Search via Proximal Iterations (Yao, Xu, Tu & Zhu, AAAI 2020).

Paper: https://arxiv.org/abs/1905.13577 -- official code: https://github.com/xujinfan/NASP-codes (codes/)

What this file implements (Algorithm 2 of the paper, first order, no second-order term):
  - a continuous architecture A, one matrix per cell type, kept in the box [0, 1] (prox onto C2: a clamp);
  - a discrete architecture A_bar = prox onto C1 of A: one op per edge (the argmax of its row) and, as the official
    code does, only the 2 incoming edges per node with the largest kept A value (the DARTS cell); all other rows 0;
  - architecture step: the gradient of the architecture loss (+ the model-size regulariser) is taken at A_bar and
    applied to A by Adam, then A is clamped into [0, 1]; every op on every edge is computed in this step, because
    dL/dA_bar[e, k] = <dL/d node, op_k(x)> needs op_k's output even where A_bar is 0, but the autograd graph runs
    only through the selected op of each kept edge (NaspEdge): the other outputs are computed without a graph;
  - weight step: forward/backward through the discrete child only (2 edges per node, 1 op each): this is where
    NASP's speed-up comes from (see benchmarks/speed.py).
  - the returned architecture is the final A_bar.
Search spaces: `--ops 12` is the paper's larger space (normal cells: identity + 7 convolutions, reduction cells:
identity + 4 poolings, no `none`); `--ops 7` is the DARTS space without `none`. `--space nb201` runs NASP on
NAS-Bench-201's cell without `none` (like NASP's spaces): there every edge exists, so prox onto C1 is the plain
one-op-per-edge projection of the paper. `--space nb1shot1-{1,2,3}` (our form of NASP there): A holds
the op rows of the choice nodes and the input rows `in{b}` / `out`; A_bar keeps the argmax op of every node and the
k largest inputs of each input row, k = the parents the space allows, so A_bar is always a valid 1Shot1 cell (the
weight step trains exactly that child) and the result is an NB101 spec. 1Shot1 settings: its common one-shot
training (batch 96; the rest as NASP's, which 1Shot1 shares); 50 epochs (NASP's; 1Shot1 has no NASP run).

Reproduce the paper's search (DARTS-style network, CIFAR-10, 50 epochs), 7 and 12 ops:
    python algos/nasp.py --ops 7
    python algos/nasp.py --ops 12
With the model-size regulariser (Eq. 8 of the paper):
    python algos/nasp.py --ops 12 --reg 0.1
Offline quick start on the real CIFAR-10 subset:
    python algos/nasp.py --dataset ../shared/data/images/cifar10_partial.npz --epochs 2 --C 8 --layers 5
On NAS-Bench-201, with the benchmark's accuracy of the derived cell each epoch (direct search on ImageNet16-120:
add --dataset imagenet16-120 --split-file ../shared/data/nb201/splits/imagenet-16-120-test-split.txt.gz):
    python algos/nasp.py --space nb201 --nb201-table ../shared/data/nb201/nb201_oracle.csv.gz
On NAS-Bench-1Shot1 search space 3 (NB101 spec for train_eval.py --genotype):
    python algos/nasp.py --space nb1shot1-3 --nb101-table nasbench_only108.tfrecord
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

_here = Path(__file__).resolve().parent
if not (_here / "spaces.py").exists():  # repository layout: algos/ beside spaces.py and data.py
    sys.path.insert(0, str(_here.parent))
import data  # noqa: E402
import spaces  # noqa: E402

OP_SETS = (7, 12)
PARAM_COUNT_C = 12  # the official code's PARAMS table counts each op at C=12, affine=False


# EXTENSION: NASP's RNN search code is not public (xujinfan/NASP-codes holds its CNN search only), so on --space rnn
# the defaults are DARTS' rnn/train_search.py settings (NASP's Table 3 compares with it at the same 23M model).
RNN_SEARCH = dict(dataset="ptb", epochs=50, batch_size=256, lr=20.0, momentum=0.0, wd=5e-7, grad_clip=0.25, arch_lr=3e-3,
                  arch_betas=(0.9, 0.999), arch_wd=1e-3, seed=3)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="NASP search (defaults: the paper's CIFAR-10 search).")
    p.add_argument("--space", default="darts", choices=spaces.SPACES + ("rnn",), help="search space (rnn: DARTS' recurrent cell on a language model)")
    p.add_argument("--ops", type=int, default=None, help="darts space: 7 = DARTS ops without `none` (default); 12 = the paper's larger space")
    p.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | imagenet16-120 | synthetic | path/to/file.npz")
    p.add_argument("--data-dir", default="./data", help="where datasets are (or are downloaded to)")
    p.add_argument("--single-level", action="store_true", help="ERM: weight and architecture steps both on the whole training set")
    p.add_argument("--train-portion", type=data.unit_interval, default=0.5, help="bilevel: fraction of the training set for the weights")
    p.add_argument("--split-file", default=None, help="bilevel: NB201 split file instead of --train-portion (cifar-split.txt, or cifar100- / imagenet-16-120-test-split.txt for direct search)")
    p.add_argument("--train-subset", type=data.nonneg_int, default=0, help="use only the first N training images (0 = all)")
    p.add_argument("--epochs", type=data.positive_int, default=50, help="search epochs")
    p.add_argument("--batch-size", type=data.positive_int, default=None, help="batch size of both steps (64; nb1shot1: 96)")
    p.add_argument("--C", type=data.positive_int, default=16, help="initial channels of the supernet")
    p.add_argument("--layers", type=data.positive_int, default=None, help="cells: darts total (8), nb201 per stage (5), nb1shot1 per stack (3)")
    p.add_argument("--lr", type=data.positive_float, default=0.025, help="SGD learning rate of the weights (cosine schedule)")
    p.add_argument("--lr-min", type=data.nonneg_float, default=0.001, help="final learning rate of the cosine schedule")
    p.add_argument("--momentum", type=data.fraction, default=0.9, help="SGD momentum")
    p.add_argument("--wd", type=data.nonneg_float, default=3e-4, help="weight decay of the weights")
    p.add_argument("--grad-clip", type=data.positive_float, default=5.0, help="gradient-norm clip of the weights")
    p.add_argument("--arch-lr", type=data.positive_float, default=3e-4, help="Adam learning rate of A")
    p.add_argument("--arch-betas", type=data.fraction, nargs=2, default=(0.5, 0.999), help="Adam betas of A")
    p.add_argument("--arch-wd", type=data.nonneg_float, default=1e-3, help="Adam weight decay (coupled L2) of A")
    p.add_argument("--abar-value", default="one", choices=("one", "paper"),
                   help="value of a kept entry of A_bar: one (official code) or A's own value (the paper's prox onto C1)")
    p.add_argument("--reg", type=data.nonneg_float, default=0.0, help="eta of the model-size regulariser R(A) (Eq. 8 of the paper); 0 = off")
    p.add_argument("--nb201-table", default=None, help="CSV with arch_str + accuracy columns: log the derived cell's benchmark accuracy")
    p.add_argument("--nb101-table", default=None, help="nb1shot1: nasbench_only108.tfrecord (or nasbench_full, or an NB101 CSV): log the derived cell's NB101 accuracy and test regret")
    p.add_argument("--seed", type=data.seed, default=2, help="random seed")
    p.add_argument("--device", type=data.device_name, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out-dir", type=data.out_dir, default="runs", help="results go to OUT_DIR/RUN_NAME/")
    p.add_argument("--run-name", type=data.run_name, default=None, help="default: nasp{ops}_{space}_{dataset}_s{seed}")
    data.add_run_args(p)  # --resume, --tensorboard, --log-every, --deterministic
    data.add_lm_args(p)  # --space rnn: --emsize, --nhid, --bptt, the five dropouts, --ar, --tar
    if p.parse_known_args(argv)[0].space == "rnn":
        p.set_defaults(**RNN_SEARCH)
    args = p.parse_args(argv)
    if args.space == "enas":  # the ENAS micro cell chooses each node's inputs: there are no edges to weight
        p.error("--space enas is ASNG-NAS's ENAS micro space (inputs are choices, not edges); nasp.py weights the ops of fixed edges: use algos/asng.py")
    if args.space == "rnn" and (args.single_level or args.split_file or args.train_subset or args.layers or args.reg or args.abar_value != "one"):
        p.error("--space rnn: --single-level, --split-file, --train-subset, --layers, --reg, --abar-value paper do not apply")
    if args.space != "darts" and args.ops is not None:
        p.error(f"--ops chooses NASP's DARTS-space op set; {args.space} has its own ops (without `none`)")
    args.batch_size = args.batch_size or (96 if args.space.startswith("nb1shot1") else 64)
    args.ops = 7 if args.space == "darts" and args.ops is None else args.ops
    if args.space == "darts" and args.ops not in OP_SETS:
        p.error(f"--ops must be 7 (DARTS ops without `none`) or 12 (NASP's larger space), got {args.ops}")
    data.check_search_args(args, p)
    return args


def nasp_space(n_ops: int | None, name: str = "darts"):
    """The DARTS cell space with NASP's op sets: 7 = DARTS without `none` (both cell types), 12 = identity +
    convolutions in normal cells, identity + poolings in reduction cells. nb201: its ops without `none`."""
    if name == "nb201":  # EXTENSION: NASP on NAS-Bench-201, which no paper ran
        return spaces.get_space("nb201", ops=[o for o in spaces.NB201_OPS if o != "none"])
    if name == "rnn":  # the activations without `none`, like NASP's CNN spaces
        return spaces.get_space("rnn", ops=spaces.RNN_OPS[1:])
    if name.startswith("nb1shot1"):  # EXTENSION: NASP on NAS-Bench-1Shot1 (no `none` there either), which no paper ran
        return spaces.get_space(name)
    if n_ops == 7:
        return spaces.get_space("darts", ops=[o for o in spaces.DARTS_OPS if o != "none"])
    if n_ops == 12:
        return spaces.get_space("darts", ops=spaces.NASP_NORMAL_OPS, ops_reduce=spaces.NASP_REDUCE_OPS)
    raise spaces.SpaceError(f"NASP has a 7-op and a 12-op space, got {n_ops} ops")


# ALGO LOGIC: A lives in [0, 1]; the official code starts every entry at 0.5, with no noise (so the first
# A_bar picks column 0 on the first two edges of every node; Adam's first step breaks the ties).
def init_arch(space, device) -> dict[str, nn.Parameter]:
    return {g: nn.Parameter(torch.full(shape, 0.5, device=device)) for g, shape in space.arch_shapes().items()}


# ALGO LOGIC: prox onto C2 = the box [0, 1], i.e. a clamp. PAPER: Alg. 2, line "A = prox_C2(...)"
@torch.no_grad()
def prox_c2_(A: dict[str, torch.Tensor]) -> None:
    for a in A.values():
        a.clamp_(0.0, 1.0)


# ALGO LOGIC: prox onto C1 keeps one op per edge: its argmax (ties: first op). PAPER: Alg. 2, "A_bar = prox_C1(A)"
# DEVIATION: the kept entry is set to 1, as the official code's binarization() does; the paper's projection onto C1
# keeps the entry's value A[e, k] (`--abar-value paper`, values=True; floored at 1e-12 so a kept edge stays kept) —
# the official code is what produced NASP's published cells.
# DEVIATION: as in the official code (not in the paper's C1), only the top-2 incoming edges per node (ranked by the
# kept raw A value, ties: lower edge) stay; the other rows are all 0 — so A_bar is exactly a DARTS cell.
# On nb201 (keep=None) every edge stays: one op per edge, the paper's C1.
@torch.no_grad()
def prox_c1(a: torch.Tensor, node_slices, keep: int | None = 2, values: bool = False) -> torch.Tensor:
    best_v, best_k = a.max(dim=1)
    scores, ops = best_v.tolist(), best_k.tolist()  # read once: no device sync per edge
    kept = []
    for start, end in node_slices:
        kept += sorted(range(start, end), key=lambda e: -scores[e])[:keep]  # stable sort: ties keep lower e
    abar = torch.zeros_like(a)
    abar[kept, [ops[e] for e in kept]] = best_v[kept].clamp_min(1e-12) if values else 1.0
    return abar


# ALGO LOGIC: on NAS-Bench-1Shot1 a node's inputs are one row of candidates (`in{b}`, `out`): prox onto C1 keeps the
# k largest entries, k = the parents the space allows (ties: lower input), the analogue of the top-2 edges above.
@torch.no_grad()
def prox_c1_inputs(a: torch.Tensor, k: int, values: bool = False) -> torch.Tensor:
    top = torch.argsort(-a, dim=1, stable=True)[:, :k]
    return torch.zeros_like(a).scatter_(1, top, a.gather(1, top).clamp_min(1e-12) if values else 1.0)


def discretize(A: dict[str, torch.Tensor], node_slices, keep=2, values: bool = False) -> dict[str, torch.Tensor]:
    """A_bar of every group. keep: incoming edges per node (int, or None = all); on 1Shot1 {input group: k} (each row
    of `ops`, one per choice node, keeps its op)."""
    if isinstance(keep, dict):
        return {g: prox_c1_inputs(a, keep[g], values) if g in keep else prox_c1(a, [(0, len(a))], None, values)
                for g, a in A.items()}
    return {g: prox_c1(a, node_slices, keep, values) for g, a in A.items()}


def edges_kept(space):
    """What A_bar keeps per node: 2 incoming edges in the DARTS cell, all of NB201's, the allowed parents on 1Shot1."""
    if isinstance(space, spaces.NB1Shot1Space):
        return space.parents()
    if isinstance(space, spaces.RecurrentSpace):  # ALGO LOGIC: each recurrent node has one input (DARTS' rnn cell)
        return 1
    return 2 if isinstance(space, spaces.DartsSpace) else None


def child_specs(abar: dict[str, torch.Tensor], op_groups=("normal", "reduce", "ops")) -> dict[str, list]:
    """A_bar as MixedEdge specs: the hot op's index on a kept edge (only that op runs; scaled by its entry when that
    is not 1, --abar-value paper), None on a dropped edge. 1Shot1's input rows go in as they are (0/1 weights)."""
    specs = {}
    for g, a in abar.items():
        v, k = (t.tolist() for t in a.max(1))
        specs[g] = [None if vi == 0 else ki if vi == 1 else (a[e], ki) for e, (vi, ki) in enumerate(zip(v, k))] \
            if g in op_groups else a
    return specs


class NaspEdge(spaces.MixedEdge):
    """MixedEdge whose architecture step builds the autograd graph only through the ops A_bar selects.
    For a weight row w that needs gradient (A_bar's row on this edge: one-hot on a kept edge, all 0 on a dropped one)
    the output is sum_k w_k * op_k(x) as in MixedEdge, but op_k(x) is computed without a graph wherever w_k = 0:
    it enters only as a constant multiplied by w_k, so w_k still gets its exact gradient <dL/d out, op_k(x)>, and
    nothing flows into op_k's weights or back into x through it, where the full graph sends exactly 0 (w_k = 0).
    Scalar weights per edge only (a (K,) row). Every other spec (weight step, evaluation) is MixedEdge's."""

    def forward(self, x, spec):
        if not (torch.is_tensor(spec) and spec.requires_grad):
            return super().forward(x, spec)
        selected = (spec.detach() != 0).tolist()  # one host read per edge (as XnasEdge)
        out = None
        for k in self.computable:
            if selected[k]:
                y = spec[k] * self.ops[k](x)
            else:
                with torch.no_grad():  # ALGO LOGIC: unselected op: value only, no graph
                    y_k = self.ops[k](x)
                y = spec[k] * y_k
            out = y if out is None else out + y
        return x[:, :, ::self.stride, ::self.stride].mul(0.0) if out is None else out


def op_param_counts(op_names, C: int = PARAM_COUNT_C) -> list[int]:
    """p_k: parameters of each op built at C channels, stride 1, affine=False (the official PARAMS table)."""
    return [sum(t.numel() for t in spaces.make_op(n, C, 1, affine=False).parameters()) for n in op_names]


def size_weights(space, device) -> dict[str, torch.Tensor]:
    """p_k / p_bar per regularised group, p_bar = sum_j p_j (a sum, as in the official code, not a mean)."""
    # ALGO LOGIC: only normal cells are regularised, as in the official code (its 12-op reduction cells have only
    # parameter-free ops). The official code has no 7-op setting; at 7 ops the same rule holds (normal only).
    g = "ops" if isinstance(space, spaces.NB1Shot1Space) else "normal"  # 1Shot1: its one op group
    p = torch.tensor(op_param_counts(space.ops[g]), dtype=torch.float32, device=device)
    return {g: p / p.sum()} if p.sum() > 0 else {}


# ALGO LOGIC: model-size regulariser R(A) = eta * sum_k (p_k / p_bar) ||a_k||^2, a_k = column k (op k over all
# edges). PAPER: Eq. (8)
def size_penalty(A: dict[str, torch.Tensor], rel_size: dict[str, torch.Tensor]) -> torch.Tensor:
    terms = [(w * A[g].pow(2).sum(0)).sum() for g, w in rel_size.items()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def mean_entropy(A: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean entropy (nats) of A's rows normalised to sum 1: how far the continuous A is from one op per edge."""
    out = {}
    for g, a in A.items():
        w = a.detach().clamp_min(1e-12)
        w = w / w.sum(-1, keepdim=True)
        out[g] = float(-(w * w.log()).sum(-1).mean())
    return out


def arch_step(model, A, arch_opt, x, y, node_slices, rel_size, reg, keep=2, values=False) -> tuple[float, float]:
    """A_bar = prox_C1(A); gradient of L(w, A_bar) + R(A_bar) with respect to A_bar; Adam step on A with it."""
    # PAPER: Alg. 2 (first order: no term through w), Eq. (8) for R
    # ALGO LOGIC: A_bar needs grad: every op on every edge is computed (dL/dA_bar needs all op outputs); with
    # NaspEdge the graph (and the backward pass) runs only through the selected op of each kept edge
    abar = {g: a.requires_grad_(True) for g, a in discretize(A, node_slices, keep, values).items()}
    logits = model(x, abar)
    loss = F.cross_entropy(logits, y)
    total = loss + reg * size_penalty(abar, rel_size) if reg > 0 else loss
    grads = torch.autograd.grad(total, list(abar.values()))  # no weight gradients: this step only moves A
    arch_opt.zero_grad(set_to_none=True)
    for a, g in zip(A.values(), grads):
        a.grad = g  # ALGO LOGIC: the gradient taken at A_bar is applied to A
    arch_opt.step()
    return loss.item(), (logits.argmax(1) == y).float().mean().item()


def weight_step(model, abar, opt, x, y, grad_clip) -> tuple[float, float]:
    """One SGD step on the weights of the discrete child A_bar only (cross-entropy, no regulariser)."""
    # DEVIATION: gradients are reset to None, so ops outside A_bar get no weight decay / momentum in this step. In the
    # official code every weight holds a (zeroed) gradient tensor (its arch step backpropagates into all weights), so
    # there unselected ops keep decaying — here the step touches exactly the child, as the paper's update reads.
    opt.zero_grad(set_to_none=True)
    logits = model(x, child_specs(abar))  # ALGO LOGIC: only the selected op on each kept edge is computed
    loss = F.cross_entropy(logits, y)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.item(), (logits.argmax(1) == y).float().mean().item()


def derive_genotype(space, A):
    """The returned architecture is A_bar = prox_C1(A): per node its 2 kept edges (1Shot1: its allowed parents),
    each with its one op (the same cell for either --abar-value)."""
    # DEVIATION: the official code's genotype ranks edges by softmax(A) instead, which can differ from the last A_bar —
    # the paper's Alg. 2 returns A_bar, the discrete architecture the weights were trained for.
    return space.derive(discretize(A, getattr(space, "node_slices", None), edges_kept(space)))


# ---- the recurrent cell space (--space rnn): A (36 x 4) holds, per node, a row per earlier node; A_bar keeps one
# activation on one input per node (prox_c1 with keep=1), so the weight step runs a single path through the cell.
def lm_arch_step(model, A, arch_opt, batch, hidden, node_slices) -> tuple[float, torch.Tensor]:
    """arch_step on a language-model window: the NLL's gradient at A_bar applied to A by Adam (the mixture forward
    computes every input and activation of every node: they share each node's one matrix product)."""
    abar = {g: a.requires_grad_(True) for g, a in discretize(A, node_slices, 1).items()}
    _, nll, hidden = spaces.lm_loss(model, *batch, hidden, abar)
    grads = torch.autograd.grad(nll, list(abar.values()))
    arch_opt.zero_grad(set_to_none=True)
    for a, g in zip(A.values(), grads):
        a.grad = g  # ALGO LOGIC: the gradient taken at A_bar is applied to A
    arch_opt.step()
    return nll.item(), hidden.detach()


def rnn_search(args, argv=None) -> dict:
    space = nasp_space(None, "rnn")
    lm = data.LMSearch(args, space, f"nasp_rnn_{Path(args.dataset).stem}_s{args.seed}", argv)
    A = init_arch(space, lm.device)
    arch_opt = torch.optim.Adam(A.values(), args.arch_lr, betas=tuple(args.arch_betas), weight_decay=args.arch_wd)
    state = {"model": lm.model, "A": A, "opt": lm.opt, "arch_opt": arch_opt}
    for epoch in range(lm.run.restore(state), args.epochs + 1):
        t0, sums = time.time(), {"train_loss": 0.0, "arch_loss": 0.0}
        hidden = hidden_a = lm.model.init_hidden(args.batch_size)
        for batch, arch_batch in lm.steps(epoch, sums):  # ALGO LOGIC: Algorithm 2 order, as on the CNN spaces
            arch_loss, hidden_a = lm_arch_step(lm.model, A, arch_opt, arch_batch, hidden_a, space.node_slices)
            prox_c2_(A)
            path = derive_genotype(space, A).recurrent  # A_bar = prox_C1(A) as (activation, input) pairs
            # ALGO LOGIC: the weight step runs A_bar's single path only (one input, one activation per node)
            train_loss, hidden = spaces.lm_weight_step(lm.model, lm.opt, batch, hidden, path, args.grad_clip, args.ar, args.tar)
            sums["train_loss"], sums["arch_loss"] = sums["train_loss"] + train_loss, sums["arch_loss"] + arch_loss
        genotype = derive_genotype(space, A)
        lm.end_epoch(state, {"epoch": epoch, "epoch_time_s": time.time() - t0, "genotype": str(genotype),
                             **{f"entropy_{g}": h for g, h in mean_entropy(A).items()}}, sums, genotype.recurrent, A)
    return lm.finish("nasp", derive_genotype(space, A), A)


def main(argv=None) -> dict:
    args = parse_args(argv)
    data.refuse_torchrun("nasp.py trains only the selected child each step and has no multi-process search: run it as one "
                         "process, not under torchrun")
    if args.space == "rnn":
        return rnn_search(args, argv)
    torch.manual_seed(args.seed)
    device = data.resolve_device(args.device)
    # everything that can fail on bad input happens before the run directory exists
    space = nasp_space(args.ops, args.space)
    slices, keep, values = getattr(space, "node_slices", None), edges_kept(space), args.abar_value == "paper"
    paired, test_loader, info = data.search_loaders(
        args.dataset, args.data_dir, args.batch_size, bilevel=not args.single_level, seed=args.seed,
        train_portion=args.train_portion, split_file=args.split_file, train_subset=args.train_subset)
    table, nb101 = (args.nb201_table and data.load_table(args.nb201_table)), (args.nb101_table and data.load_nb101(args.nb101_table))
    model = space.supernet(args.C, args.layers, info.num_classes, in_channels=info.channels, edge=NaspEdge).to(device)
    A, rel_size = init_arch(space, device), size_weights(space, device)
    opt = torch.optim.SGD(model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs, eta_min=args.lr_min)
    arch_opt = torch.optim.Adam(A.values(), args.arch_lr, betas=tuple(args.arch_betas), weight_decay=args.arch_wd)
    gen = torch.Generator().manual_seed(args.seed)
    augment, test_augment = data.Augment(info, train=True, generator=gen), data.Augment(info, train=False)

    run = data.Run(args, f"nasp{args.ops or ''}_{args.space}_{Path(args.dataset).stem}_s{args.seed}", argv)
    # everything the next epoch depends on (checkpointed each epoch; data.py adds the torch/numpy/python RNGs)
    state = {"model": model, "A": A, "opt": opt, "sched": sched, "arch_opt": arch_opt,
             "augment_gen": gen, "data_order": paired}
    for epoch in range(run.restore(state), args.epochs + 1):
        t0, sums = time.time(), {"train_loss": 0.0, "train_acc": 0.0, "arch_loss": 0.0, "arch_acc": 0.0}
        times, changes, prev = {"arch_step_s": 0.0, "weight_step_s": 0.0}, 0, discretize(A, slices, keep, values)
        for (x, y), (xa, ya) in run.steps(paired, epoch, sums):
            x, y = augment(x.to(device)), y.to(device)
            xa, ya = augment(xa.to(device)), ya.to(device)
            # DEVIATION: the official code takes each architecture batch from a fresh iterator (a random batch); here
            # data.PairedBatches walks a shuffled pass over the architecture split — each image once per epoch, resumable.
            # ALGO LOGIC: Algorithm 2 order: arch step at A_bar -> prox_C2 (clamp) -> A_bar = prox_C1(A) -> weight step
            t_arch = time.time()
            arch_loss, arch_acc = arch_step(model, A, arch_opt, xa, ya, slices, rel_size, args.reg, keep, values)
            prox_c2_(A)
            abar = discretize(A, slices, keep, values)
            t_weight = time.time()
            train_loss, train_acc = weight_step(model, abar, opt, x, y, args.grad_clip)
            times["arch_step_s"], times["weight_step_s"] = times["arch_step_s"] + t_weight - t_arch, times["weight_step_s"] + time.time() - t_weight
            changes += sum(int(not torch.equal(abar[g], prev[g])) for g in abar)
            prev = abar
            for k, v in zip(sums, (train_loss, train_acc, arch_loss, arch_acc)):
                sums[k] += v
        sched.step()
        abar = discretize(A, slices, keep, values)
        genotype = derive_genotype(space, A)
        metrics = {"epoch": epoch, **{k: v / len(paired) for k, v in sums.items()}, "lr": sched.get_last_lr()[0],
                   "epoch_time_s": time.time() - t0, **times, "abar_changes": changes,
                   "size_term": float(size_penalty(abar, rel_size)), "genotype": str(genotype)}
        metrics.update({f"entropy_{g}": h for g, h in mean_entropy(A).items()})
        metrics.update({**data.oracle_metrics(table, genotype, args.dataset), **data.nb101_metrics(nb101, genotype, args.space)})
        run.end_epoch(state, metrics, A, show=("train_loss", "train_acc", "arch_acc", "entropy_normal", "abar_changes", "oracle_test"))

    abar = discretize(A, slices, keep, values)
    test_loss, test_acc = data.evaluate(model, test_loader, test_augment, device, child_specs(abar))  # the child, as the official validation
    genotype = derive_genotype(space, A)
    result = {"algorithm": "nasp", "search_space": args.space, "ops": args.ops, "genotype": genotype.to_json(),
              "genotype_str": str(genotype), "supernet_test_acc": test_acc, "supernet_test_loss": test_loss,
              "search_time_s": time.time() - run.start,
              "alphas": {g: a.detach().cpu().tolist() for g, a in A.items()},
              "alphas_discrete": {g: a.cpu().tolist() for g, a in abar.items()}}
    return run.finish(result, genotype, spaces.genotype_to_dot(genotype))


if __name__ == "__main__":
    data.cli(main)
