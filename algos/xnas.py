"""XNAS: Neural Architecture Search with Expert Advice (Nayman, Noy, Ridnik, Friedman, Jin & Zelnik-Manor, NeurIPS 2019).

Paper: https://arxiv.org/abs/1906.08031 -- official code: https://github.com/NivNayman/XNAS (evaluation only; the
authors never released the search). Independent re-implementation with known flaws: microsoft/archai (xnas/).

What this file implements (Prediction with Expert Advice, one forecaster per edge, the edge's ops are the experts):
  * Weights in log space: l_{e,i} = eta * R_{e,i} (cumulative reward), renormalised to log-probabilities after every
    update; mixture p_e = softmax(l_e). A wiped-out op has l = -inf, weight exactly 0, and is never computed again.
  * Expert loss (linearised loss of op i): for y = sum_i p_i o_i, dloss/dp_i = <dloss/dy, o_i>. One batched backward
    gives it per sample AND per cell: every cell gets its own per-sample copy of the mixture weights, shape
    (cells, B, K) per edge (XnasEdge picks its cell's copy), and the summed per-sample loss is differentiated
    w.r.t. those copies. Each cell that shares a group's weights is one round of the forecaster (the paper's
    "multiple learning rates"; archai counts rounds the same way).
  * Per data point, per cell, per edge the expert-loss vector is clipped to max-abs L (scaled, so its direction is
    kept), then averaged over the batch: every round's expert losses lie in [-L, L], which is exactly the bound the
    regret analysis and the wipeout rule assume. (archai clips the *weight* gradients instead, so its L bounds nothing.)
  * Update l <- l - eta * g (Alg. 1 of the paper, v_{t,i} = v_{t-1,i} exp(-eta grad.u_i): dual averaging, fixed eta),
    with eta_g = sqrt(2 ln N / (T_g L^2)) (the paper's optimal learning rate), N = ops per edge,
    T_g = cells of group g x architecture steps x epochs: normal and reduction cells get different eta.
  * Wipeout after every update (Alg. 1, theta_t = max_j v_{t,j} exp(-2 eta L (T - t))): in log space drop op i
    for good if l_i < max_j l_j - 2 eta L (T_g - t_g). The step counter t counts each architecture update exactly once
    (t_g = cells x t), unlike archai's counter. At the last step (t = T) only the leader of every edge survives.
  * Network weights: the DARTS search setting (SGD 0.025 cosine, momentum 0.9, wd 3e-4, batch 64, 50 epochs, 8 cells,
    C=16, bilevel 25k/25k), architecture step on the held-out batch first, then the weight step (DARTS' order).
  * Genotype: DARTS rule on softmax(l) without `none` (space.derive); NB201: argmax per edge.
  * NAS-Bench-1Shot1 (our form of XNAS there): the experts of a choice node are its 3 ops (a forecaster
    per node, as per edge above); and a node's input mixture sum_j w_j h_j (and the output's weighted concat) is a
    forecast over its candidate inputs, so the input rows `in{b}` / `out` are forecasters too, with the same expert
    losses <dloss/dy, dy/dw_j>, clipping, eta (N = candidates) and update. Wipeout keeps what the space allows: an
    input is dropped once it can no longer reach the top k (l_i < l_(k) - 2 eta L (T - t), k = the parents allowed),
    so k inputs survive the search. Settings: 1Shot1's common one-shot training (batch 96), 50 epochs (DARTS').
Choices the paper leaves open, and departures from archai (the only public search code), are marked in the code:
a round is one cell on one batch; one batched backward; L = 1.0.

Reproduce the search (DARTS space, CIFAR-10, 50 epochs):
    python algos/xnas.py
NAS-Bench-201 (as run by the GAEA authors), with the benchmark's accuracy of the derived cell each epoch, and
direct search on CIFAR-100 (weights on the train set, architecture on the test set's xvalid half):
    python algos/xnas.py --space nb201 --nb201-table ../shared/data/nb201/nb201_oracle.csv.gz
    python algos/xnas.py --space nb201 --dataset cifar100 --split-file ../shared/data/nb201/splits/cifar100-test-split.txt.gz
NAS-Bench-1Shot1 search space 2 (NB101 spec for train_eval.py --genotype):
    python algos/xnas.py --space nb1shot1-2 --nb101-table nasbench_only108.tfrecord
One search on 8 GPUs (DDP weights, architecture gradients averaged over the ranks; --batch-size is the global batch):
    torchrun --nproc_per_node 8 algos/xnas.py --batch-size 512
Offline quick start on the real CIFAR-10 subset:
    python algos/xnas.py --space nb201 --dataset ../shared/data/images/cifar10_partial.npz --epochs 2 --C 8 --layers 1
"""
from __future__ import annotations

import argparse
import math
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

# EXTENSION: XNAS on NAS-Bench-201 and on NAS-Bench-1Shot1 (input forecasters, top-k wipeout): its paper searched the
# DARTS space only (GAEA's release ships an xnas_nasbench201.pdf of the GAEA authors' own NB201 run).
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="XNAS search (defaults: the DARTS CIFAR-10 search setting).")
    p.add_argument("--space", default="darts", choices=spaces.SPACES, help="search space")
    p.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | imagenet16-120 | synthetic | path/to/file.npz")
    p.add_argument("--data-dir", default="./data", help="where datasets are (or are downloaded to)")
    p.add_argument("--single-level", action="store_true", help="ERM: weight and architecture steps both on the whole training set")
    p.add_argument("--train-portion", type=data.unit_interval, default=0.5, help="bilevel: fraction of the training set for the weights")
    p.add_argument("--split-file", default=None, help="bilevel: NB201 split file instead of --train-portion (cifar-split.txt, or cifar100- / imagenet-16-120-test-split.txt for direct search)")
    p.add_argument("--train-subset", type=data.nonneg_int, default=0, help="use only the first N training images (0 = all)")
    p.add_argument("--epochs", type=data.positive_int, default=50, help="search epochs (also sets T, hence eta and the wipeout margin)")
    p.add_argument("--batch-size", type=data.positive_int, default=None, help="global batch of both steps, split over torchrun's processes (64; nb1shot1: 96)")
    p.add_argument("--C", type=data.positive_int, default=16, help="initial channels of the supernet")
    p.add_argument("--layers", type=data.positive_int, default=None, help="cells: darts total (8), nb201 per stage (5), nb1shot1 per stack (3)")
    p.add_argument("--lr", type=data.positive_float, default=0.025, help="SGD learning rate of the weights (cosine schedule)")
    p.add_argument("--lr-min", type=data.nonneg_float, default=0.001, help="final learning rate of the cosine schedule")
    p.add_argument("--momentum", type=data.fraction, default=0.9, help="SGD momentum")
    p.add_argument("--wd", type=data.nonneg_float, default=3e-4, help="weight decay of the weights")
    p.add_argument("--grad-clip", type=data.positive_float, default=5.0, help="gradient-norm clip of the weights")
    # DEVIATION: L = 1.0 is archai's value (its grad_clip) — the paper's value is not confirmed here
    p.add_argument("--expert-clip", type=data.positive_float, default=1.0,
                   help="L: per-sample max-abs bound of every expert loss; sets eta and the wipeout margin")
    p.add_argument("--no-wipeout", action="store_true", help="ablation: never remove ops (plain exponentiated gradient)")
    p.add_argument("--nb201-table", default=None, help="CSV with arch_str + accuracy columns: log the derived cell's benchmark accuracy")
    p.add_argument("--nb101-table", default=None, help="nb1shot1: nasbench_only108.tfrecord (or nasbench_full, or an NB101 CSV): log the derived cell's NB101 accuracy and test regret")
    p.add_argument("--seed", type=data.seed, default=2, help="random seed")
    p.add_argument("--device", type=data.device_name, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out-dir", type=data.out_dir, default="runs", help="results go to OUT_DIR/RUN_NAME/")
    p.add_argument("--run-name", type=data.run_name, default=None, help="default: xnas_{space}_{dataset}_s{seed}")
    data.add_run_args(p)  # --resume, --tensorboard, --log-every, --deterministic
    args = p.parse_args(argv)
    if args.space == "enas":  # the ENAS micro cell chooses each node's inputs: there are no edges to weight
        p.error("--space enas is ASNG-NAS's ENAS micro space (inputs are choices, not edges); xnas.py weights the ops of fixed edges: use algos/asng.py")
    args.batch_size = args.batch_size or (96 if args.space.startswith("nb1shot1") else 64)
    data.check_search_args(args, p)
    if not args.expert_clip > 0:
        p.error(f"--expert-clip must be > 0, got {args.expert_clip}")
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    return args


class XnasEdge(spaces.MixedEdge):
    """MixedEdge that (a) in the architecture step takes per-cell, per-sample weights of shape (cells, B, K) and uses
    the row of its own cell (`cell_rank`, set by `assign_cell_ranks`), and (b) never computes an op whose weight is
    zero for every sample (wiped out), even when the weights carry gradient. Otherwise it is MixedEdge."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cell_rank = None

    def forward(self, x, spec):
        if not (torch.is_tensor(spec) and spec.requires_grad):
            return super().forward(x, spec)  # weight step / evaluation: MixedEdge skips zero-weight ops itself
        if spec.dim() != 3 or self.cell_rank is None:
            raise spaces.SpaceError("XnasEdge with gradient needs (cells, B, K) weights and assign_cell_ranks(model)")
        w = spec[self.cell_rank]  # (B, K): this cell's own copy of the mixture weights
        alive = (w.detach() != 0).any(0).tolist()
        terms = [w[:, k].view(-1, 1, 1, 1) * self.ops[k](x) for k in self.computable if alive[k]]
        if not terms:  # only `none` survives on this edge
            return x[:, :, :: self.stride, :: self.stride].mul(0.0)
        return sum(terms[1:], terms[0])


def assign_cell_ranks(model, groups=()) -> dict[str, int]:
    """Number the cells of each group in forward order and tell every XnasEdge its cell's rank. Returns the number
    of cells per group (darts L=8: normal 6, reduce 2; nb201 N=5: normal 15; 1Shot1: every group of `groups` is
    used once by each of its cells, 9 at 3 per stack)."""
    counts: dict[str, int] = {}
    for m in model.modules():  # registration order = forward order in all supernets
        if isinstance(m, spaces.OneShotCell):
            m.cell_rank = counts.get("ops", 0)
            for edge in m.blocks:
                edge.cell_rank = m.cell_rank
            counts.update({g: m.cell_rank + 1 for g in groups})
        elif isinstance(m, (spaces.DartsSearchCell, spaces.NB201SearchCell)):
            g = "reduce" if getattr(m, "reduction", False) else "normal"
            for edge in m.edges:
                edge.cell_rank = counts.get(g, 0)
            counts[g] = counts.get(g, 0) + 1
    return counts


# ALGO LOGIC: log-weights l = eta * R start at 0 (v = 1 for every expert, PAPER: Alg. 1 init), kept as log-probabilities.
# float64: after ~1e5 rounds the increments (~1e-5) would fall below float32 resolution of |l| ~ 100.
def init_log_weights(space, device) -> dict[str, torch.Tensor]:
    return {g: torch.full(shape, -math.log(shape[1]), dtype=torch.float64, device=device)
            for g, shape in space.arch_shapes().items()}


# ALGO LOGIC: the forecast mixes the surviving experts with normalised weights. PAPER: Alg. 1, p_t = sum v u / sum v
def mixture_weights(log_w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {g: torch.softmax(lw, dim=-1).float() for g, lw in log_w.items()}


def learning_rate(n_experts: int, rounds: int, L: float) -> float:
    """eta = sqrt(2 ln N / (T L^2)): the Hedge learning rate that minimises the regret bound for losses in [-L, L]."""
    return math.sqrt(2.0 * math.log(n_experts) / (rounds * L * L))  # PAPER: optimal eta of the regret bound


def per_sample_expert_losses(model, log_w, cells, x, y) -> tuple[dict[str, torch.Tensor], float, float]:
    """One forward + one backward. Returns {g: G} with G[c, b, e, k] = <dloss_b/dy, o_k> on edge e of the c-th cell of
    group g for sample b (the linearised loss of expert k), plus the batch's mean loss and accuracy.
    With BatchNorm in training mode the samples interact through the batch statistics, so G[c, b] is the effect of
    sample b's weights on the summed batch loss (exact per-sample gradients in eval mode; see the tests)."""
    # DEVIATION: one batched backward instead of archai's loop over single samples — one pass per step; with BatchNorm
    # in training mode the samples of a batch then interact through the batch statistics (exact in eval mode).
    p = mixture_weights(log_w)
    copies = {g: p[g].expand(cells[g], len(y), *p[g].shape).clone().requires_grad_(True) for g in p}  # (c, B, E, K)
    arch = {g: list(w.unbind(2)) for g, w in copies.items()}  # per edge: (c, B, K)
    logits = model(x, arch)
    loss = F.cross_entropy(logits, y, reduction="sum")  # sum: row b of the gradient is sample b's, not divided by B
    grads = torch.autograd.grad(loss, list(copies.values()))
    acc = (logits.argmax(1) == y).float().mean().item()
    return dict(zip(copies, grads)), loss.item() / len(y), acc


# ALGO LOGIC: per data point, per cell (round) and per edge, scale the expert-loss vector so |g_k| <= L for every k.
def clip_expert_losses(g: torch.Tensor, L: float) -> torch.Tensor:
    """Max-abs clipping of the last axis: g * min(1, L / max_k |g_k|)."""
    # PAPER: the regret bound assumes expert losses bounded by L
    peak = g.abs().amax(dim=-1, keepdim=True)
    return g * (L / peak.clamp_min(L))


def xnas_update(log_w: torch.Tensor, loss: torch.Tensor, eta: float, L: float,
                rounds_left: int | None, keep: int = 1) -> tuple[torch.Tensor, int]:
    """One exponentiated-gradient step on one group's log-weights (E, K) with the step's expert losses (E, K) (sum over
    the group's rounds), then the wipeout with `rounds_left` = T_g - t_g rounds to go (None: no wipeout); an expert
    survives while it can still reach the top `keep` (1: the leader; 1Shot1 inputs: the parents allowed).
    Returns (new log-probabilities, number of ops wiped out by this step)."""
    alive_before = torch.isfinite(log_w)
    new = log_w - eta * loss.to(log_w.dtype)  # PAPER: Alg. 1, v <- v exp(-eta grad.u); -inf stays -inf
    if rounds_left is not None:
        # PAPER: Alg. 1 wipeout, v_i < max_j v_j exp(-2 eta L (T - t)), i.e. in log space l_i < max_j l_j - 2 eta L (T - t):
        # every round moves the gap to the leader by at most 2L in reward (eta 2L in log-weight), so op i can no
        # longer overtake the leader in the rounds left.
        # EXTENSION: keep > 1 (1Shot1 input rows) is the top-k wipeout: drop what can no longer reach the k-th best
        threshold = new.topk(keep, dim=-1).values[..., -1:] - 2.0 * eta * L * rounds_left
        new = new.masked_fill(new < threshold, float("-inf"))
    new = torch.log_softmax(new, dim=-1)  # renormalise (archai never does; here it only re-centres the log-weights)
    return new, int((alive_before & ~torch.isfinite(new)).sum())


def arch_step(model, log_w, x, y, cells, etas, L, rounds_left, keep=None) -> tuple[float, float]:
    """Expert losses on the architecture batch at the current weights, clipped per sample, averaged over the batch,
    summed over the cells (rounds) of each group; then the XNAS update and wipeout of every group (in place)."""
    grads, loss, acc = per_sample_expert_losses(model, log_w, cells, x, y)
    # DEVIATION: a round is one cell on one batch (expert losses averaged over the batch, T counts steps); archai makes
    # every sample a round (T x B rounds, losses summed), i.e. an eta and a wipeout margin sqrt(B) larger — one update
    # per architecture step and batch, whatever the batch size.
    step_losses = {g: clip_expert_losses(G, L).mean(dim=1).sum(dim=0) for g, G in grads.items()}  # (E, K) each
    data.all_reduce_mean_(list(step_losses.values()))  # torchrun: the mean over the global batch (equal shards)
    for g, step_loss in step_losses.items():
        log_w[g], _ = xnas_update(log_w[g], step_loss, etas[g], L, None if rounds_left is None else rounds_left[g],
                                  (keep or {}).get(g, 1))
    return loss, acc


def weight_step(model, log_w, opt, x, y, grad_clip) -> tuple[float, float]:
    """One SGD step on the supernet weights with the training batch; wiped-out ops (weight 0) are not computed."""
    opt.zero_grad(set_to_none=True)
    logits = model(x, mixture_weights(log_w))
    loss = F.cross_entropy(logits, y)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.item(), (logits.argmax(1) == y).float().mean().item()


def derive_genotype(space, log_w):
    """DARTS space: top-2 incoming edges per node by their best non-`none` weight, each with that op; NB201: argmax
    per edge; 1Shot1: argmax op per node, top-k inputs (spaces.*Space.derive on the mixture weights; wiped-out ops
    have weight 0)."""
    return space.derive(mixture_weights(log_w))


def wiped_counts(log_w) -> dict[str, int]:
    return {g: int((~torch.isfinite(lw)).sum()) for g, lw in log_w.items()}


def jsonable_log_weights(log_w) -> dict[str, list]:
    """Log-weights as lists, wiped-out entries as None (JSON has no -inf)."""
    return {g: [[v if math.isfinite(v) else None for v in row] for row in lw.tolist()] for g, lw in log_w.items()}


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    rank, world, device = data.init_distributed(args.device)  # torchrun: one process per GPU, one search
    # everything that can fail on bad input happens before the run directory exists
    space = spaces.get_space(args.space)
    paired, test_loader, info = data.search_loaders(
        args.dataset, args.data_dir, data.per_rank_batch(args.batch_size, world), bilevel=not args.single_level,
        seed=args.seed, train_portion=args.train_portion, split_file=args.split_file, train_subset=args.train_subset,
        rank=rank, world=world)
    table = data.load_table(args.nb201_table) if args.nb201_table else None
    # DEVIATION: under torchrun every rank's BatchNorm normalises with the statistics of its own shard (batch / ranks
    # images), not of the global batch, and the running statistics are rank 0's (DDP broadcasts buffers) — plain DDP,
    # as data-parallel NAS code runs; SyncBatchNorm would add an all-reduce per BatchNorm layer. One process: unchanged.
    nb101 = data.load_nb101(args.nb101_table) if args.nb101_table else None
    # torchrun: wiped-out ops are never computed, so DDP must expect parameters without gradient
    model = data.wrap_ddp(space.supernet(args.C, args.layers, info.num_classes, in_channels=info.channels, edge=XnasEdge).to(device), device, True)
    keep = space.parents() if isinstance(space, spaces.NB1Shot1Space) else {}  # 1Shot1: inputs each row keeps
    cells = assign_cell_ranks(model, space.arch_shapes() if keep else ())
    if missing := [g for g in space.arch_shapes() if cells.get(g, 0) == 0]:
        raise spaces.SpaceError(f"--layers {args.layers} leaves no {' / '.join(missing)} cell to search")
    log_w = init_log_weights(space, device)
    L, steps = args.expert_clip, args.epochs * len(paired)  # T: architecture updates in the whole search
    # ALGO LOGIC: each cell sharing a group's weights is one round, so T_g = cells_g * T and eta differs per group
    etas = {g: learning_rate(space.arch_shapes()[g][1], cells[g] * steps, L) for g in log_w}
    opt = torch.optim.SGD(model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs, eta_min=args.lr_min)
    gen = torch.Generator().manual_seed(args.seed)
    augment, test_augment = data.Augment(info, True, generator=gen, shard=(rank, world)), data.Augment(info, False)

    run = data.Run(args, f"xnas_{args.space}_{Path(args.dataset).stem}_s{args.seed}", argv)
    # everything the next epoch depends on (checkpointed each epoch; data.py adds the torch/numpy/python RNGs)
    state = {"model": model, "log_w": log_w, "opt": opt, "sched": sched,
             "augment_gen": gen, "data_order": paired}
    print(f"xnas: T = {steps} steps, rounds per step {cells}, eta {', '.join(f'{g} {e:.3g}' for g, e in etas.items())}")
    for epoch in range(run.restore(state), args.epochs + 1):
        t0, sums = time.time(), {"train_loss": 0.0, "train_acc": 0.0, "arch_loss": 0.0, "arch_acc": 0.0}
        t = (epoch - 1) * len(paired)  # architecture updates done before this epoch
        for (x, y), (xa, ya) in run.steps(paired, epoch, sums):
            x, y = augment(x.to(device)), y.to(device)
            xa, ya = augment(xa.to(device)), ya.to(device)
            t += 1
            rounds_left = None if args.no_wipeout else {g: cells[g] * (steps - t) for g in log_w}
            # ALGO LOGIC: architecture step first, then weight step (DARTS' order)
            with data.local_grads(model):  # torchrun: no weight gradients in this step
                arch_loss, arch_acc = arch_step(model, log_w, xa, ya, cells, etas, L, rounds_left, keep)
            train_loss, train_acc = weight_step(model, log_w, opt, x, y, args.grad_clip)
            for k, v in zip(sums, (train_loss, train_acc, arch_loss, arch_acc)):
                sums[k] += v
        sched.step()
        genotype = derive_genotype(space, log_w)
        metrics = {"epoch": epoch, **{k: v / len(paired) for k, v in sums.items()}, "lr": sched.get_last_lr()[0],
                   "epoch_time_s": time.time() - t0, "genotype": str(genotype)}
        metrics.update({f"entropy_{g}": h for g, h in spaces.mean_entropy(mixture_weights(log_w)).items()})
        metrics.update({f"wiped_{g}": n for g, n in wiped_counts(log_w).items()})
        metrics.update(data.oracle_metrics(table, genotype, args.dataset))
        metrics.update(data.nb101_metrics(nb101, genotype, args.space))
        run.end_epoch(state, metrics, mixture_weights(log_w),
                      show=("train_loss", "train_acc", "arch_acc", "entropy_normal", "wiped_normal", "oracle_test"))

    test_loss, test_acc = data.evaluate(model, test_loader, test_augment, device, mixture_weights(log_w))
    genotype = derive_genotype(space, log_w)
    gap = spaces.discretisation_check(space, genotype, lambda w: data.evaluate(  # GAEA Sec. 4.1: the derived cell
        model, test_loader, test_augment, device, w), device)
    result = {"algorithm": "xnas", "search_space": args.space, "genotype": genotype.to_json(),
              "genotype_str": str(genotype), "supernet_test_acc": test_acc, "supernet_test_loss": test_loss, **gap,
              "search_time_s": time.time() - run.start, "steps": steps, "rounds_per_step": cells, "eta": etas,
              "expert_clip": L, "wiped": wiped_counts(log_w), "log_weights": jsonable_log_weights(log_w)}
    return run.finish(result, genotype, spaces.genotype_to_dot(genotype))


if __name__ == "__main__":
    data.cli(main)
