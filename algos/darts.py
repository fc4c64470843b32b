"""DARTS, first and second order: Differentiable Architecture Search (Liu, Simonyan & Yang, ICLR 2019).

Paper: https://arxiv.org/abs/1806.09055 -- official code: https://github.com/quark0/darts (cnn/)

What this file implements: every edge of a supernet mixes its candidate ops with weights softmax(alpha)
(Eq. 2 of the paper); the architecture logits alpha are trained by Adam on the loss of an architecture batch, the
network weights by SGD on a training batch, alternating every step. First order (default): the gradient of alpha
is taken at the current weights (Eq. 6 with xi = 0). Second order (`--unrolled`, bilevel only): the gradient
of alpha is taken after one virtual SGD step of the weights, with the implicit term by a finite-difference
Hessian-vector product (Eqs. 6-8). At the end each node keeps its two strongest incoming
edges with their strongest non-`none` op (DARTS space), or each edge its strongest op (NB201).
Bilevel by default (weights on one half of the training set, alpha on the other); `--single-level` trains both
on the whole training set (the ERM variant that GAEA studies).

Reproduce the paper's search (DARTS space, CIFAR-10, 50 epochs), first and second order:
    python algos/darts.py
    python algos/darts.py --unrolled
NAS-Bench-201's DARTS-V1 baseline, with the benchmark's accuracy of the derived cell each epoch:
    python algos/darts.py --space nb201 --nb201-table ../shared/data/nb201/nb201_oracle.csv.gz
(add --unrolled for its DARTS-V2 row.)
One search on 8 GPUs (DDP weights, architecture gradients averaged over the ranks; --batch-size is the global batch):
    torchrun --nproc_per_node 8 algos/darts.py --batch-size 512
Offline quick start on the real CIFAR-10 subset:
    python algos/darts.py --space nb201 --dataset ../shared/data/images/cifar10_partial.npz --epochs 2 --C 8 --layers 1
"""
# DEVIATION: on nb201 DARTS keeps its own settings (momentum SGD, wd 3e-4, cosine per epoch, architecture step first);
# NB201's DARTS-V1 run used nesterov, wd 5e-4, a per-step cosine and the weight step first — one DARTS, with its own
# paper's settings, on every space.
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

_here = Path(__file__).resolve().parent
if not (_here / "spaces.py").exists():  # repository layout: algos/ beside spaces.py and data.py
    sys.path.insert(0, str(_here.parent))
import data  # noqa: E402
import spaces  # noqa: E402


# quark0/darts rnn/train_search.py: the search settings on the recurrent cell space (the CNN flags' defaults otherwise)
RNN_SEARCH = dict(dataset="ptb", epochs=50, batch_size=256, lr=20.0, momentum=0.0, wd=5e-7, grad_clip=0.25, arch_lr=3e-3,
                  arch_betas=(0.9, 0.999), arch_wd=1e-3, seed=3)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="DARTS search (defaults: the paper's first-order CIFAR-10 search).")
    p.add_argument("--space", default="darts", choices=spaces.SPACES + ("rnn",), help="search space (rnn: DARTS' recurrent cell on a language model)")
    p.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | imagenet16-120 | synthetic | path/to/file.npz")
    p.add_argument("--data-dir", default="./data", help="where datasets are (or are downloaded to)")
    p.add_argument("--single-level", action="store_true", help="ERM: weight and architecture steps both on the whole training set")
    p.add_argument("--unrolled", action="store_true", help="second order: alpha's gradient after a virtual weight step (bilevel only)")
    p.add_argument("--train-portion", type=data.unit_interval, default=0.5, help="bilevel: fraction of the training set for the weights")
    p.add_argument("--split-file", default=None, help="bilevel: NB201 split file instead of --train-portion (cifar-split.txt, or cifar100- / imagenet-16-120-test-split.txt for direct search)")
    p.add_argument("--train-subset", type=data.nonneg_int, default=0, help="use only the first N training images (0 = all)")
    p.add_argument("--epochs", type=data.positive_int, default=50, help="search epochs")
    p.add_argument("--batch-size", type=data.positive_int, default=64, help="global batch of both steps (split over torchrun's processes)")
    p.add_argument("--C", type=data.positive_int, default=16, help="initial channels of the supernet")
    p.add_argument("--layers", type=data.positive_int, default=None, help="cells: darts total (8), nb201 per stage (5), nb1shot1 per stack (3)")
    p.add_argument("--lr", type=data.positive_float, default=0.025, help="SGD learning rate of the weights (cosine schedule)")
    p.add_argument("--lr-min", type=data.nonneg_float, default=0.001, help="final learning rate of the cosine schedule")
    p.add_argument("--momentum", type=data.fraction, default=0.9, help="SGD momentum")
    p.add_argument("--wd", type=data.nonneg_float, default=3e-4, help="weight decay of the weights")
    p.add_argument("--grad-clip", type=data.positive_float, default=5.0, help="gradient-norm clip of the weights")
    p.add_argument("--arch-lr", type=data.positive_float, default=3e-4, help="Adam learning rate of the architecture logits")
    p.add_argument("--arch-betas", type=data.fraction, nargs=2, default=(0.5, 0.999), help="Adam betas of the architecture logits")
    p.add_argument("--arch-wd", type=data.nonneg_float, default=1e-3, help="Adam weight decay of the architecture logits")
    p.add_argument("--nb201-table", default=None, help="CSV with arch_str + accuracy columns: log the derived cell's benchmark accuracy")
    p.add_argument("--nb101-table", default=None, help="nb1shot1: nasbench_only108.tfrecord (or nasbench_full, or an NB101 CSV): log the derived cell's NB101 accuracy and test regret")
    p.add_argument("--seed", type=data.seed, default=2, help="random seed")
    p.add_argument("--device", type=data.device_name, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out-dir", type=data.out_dir, default="runs", help="results go to OUT_DIR/RUN_NAME/")
    p.add_argument("--run-name", type=data.run_name, default=None, help="default: darts_{space}_{dataset}_s{seed} (darts2_... with --unrolled)")
    data.add_run_args(p)  # --resume, --tensorboard, --log-every, --deterministic
    data.add_lm_args(p)  # --space rnn: --emsize, --nhid, --bptt, the five dropouts, --ar, --tar
    if p.parse_known_args(argv)[0].space == "rnn":
        p.set_defaults(**RNN_SEARCH)
    args = p.parse_args(argv)
    if args.space == "enas":  # the ENAS micro cell chooses each node's inputs: there are no edges to weight
        p.error("--space enas is ASNG-NAS's ENAS micro space (inputs are choices, not edges); darts.py weights the ops of fixed edges: use algos/asng.py")
    if args.space == "rnn" and (args.single_level or args.split_file or args.train_subset or args.layers):
        p.error("--space rnn searches as DARTS' rnn/ code (weights on the training text, architecture on the validation "
                "text): --single-level, --split-file, --train-subset and --layers do not apply")
    data.check_search_args(args, p)
    if args.unrolled and args.single_level:
        p.error("--unrolled is DARTS' bilevel second order: it needs separate weight and architecture batches, not --single-level")
    return args


# ALGO LOGIC: architecture parameters are unconstrained logits, one matrix per group (cell type),
# shared by every cell of that type; DARTS initialises them at 1e-3 * N(0, 1).
def init_alphas(space, device) -> dict[str, nn.Parameter]:
    return {g: nn.Parameter(1e-3 * torch.randn(*shape, device=device)) for g, shape in space.arch_shapes().items()}


# ALGO LOGIC: continuous relaxation, mixture weights = softmax over each edge's ops. PAPER: Eq. (2)
def mixture_weights(alphas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {g: F.softmax(a, dim=-1) for g, a in alphas.items()}


def arch_step(model, alphas, arch_opt, x, y) -> tuple[float, float]:
    """One Adam step on alpha with the architecture batch, at the current weights (first order)."""
    # PAPER: Eq. (6) with xi = 0: the gradient of L_val at the current weights
    arch_opt.zero_grad(set_to_none=True)
    logits = model(x, mixture_weights(alphas))
    loss = F.cross_entropy(logits, y)
    loss.backward()
    arch_opt.step()
    return loss.item(), (logits.argmax(1) == y).float().mean().item()


# ALGO LOGIC: second order (--unrolled). Virtual weights are plain tensors handed to the supernet through
# torch.func.functional_call: the model's own parameters are never overwritten.
def virtual_step(model, alphas, opt, x, y, xi) -> dict[str, torch.Tensor]:
    """w' = w - xi * (momentum * buf + grad_w L_train(w, alpha) + wd * w) with the momentum buffers, momentum and
    weight decay of the SGD optimizer `opt`: the step `opt` would take next, without gradient clipping (as the
    official code). Returns {parameter name: w'}, tensors without graph."""
    # PAPER: Eq. (6) w' = w - xi grad_w L_train(w, alpha)
    with torch.no_grad():
        weights = mixture_weights(alphas)
    names, params = zip(*model.named_parameters())
    loss = F.cross_entropy(model(x, weights), y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    group_of = {p: group for group in opt.param_groups for p in group["params"]}
    w_virtual = {}
    with torch.no_grad():
        for name, p, g in zip(names, params, grads):
            # DEVIATION: the momentum and weight-decay terms are the official code's (its virtual step is the optimizer's
            # step); the paper's Eq. (6) is a plain gradient step — the official code made DARTS' second-order results
            step = group_of[p]["weight_decay"] * p + (0.0 if g is None else g)
            buf = opt.state[p].get("momentum_buffer") if p in opt.state else None
            if buf is not None:  # no buffer before the first real step: the official code uses zeros
                step = step + group_of[p]["momentum"] * buf
            w_virtual[name] = p - xi * step
    return w_virtual


def _grads_or_zeros(grads, tensors) -> list[torch.Tensor]:
    """autograd.grad(allow_unused=True) gives None for a tensor the loss does not use (e.g. a group no cell has)."""
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]


def hessian_vector_product(model, alphas, vector: dict[str, torch.Tensor], x, y, r: float = 1e-2) -> list[torch.Tensor]:
    """grad^2_{alpha, w} L_train(w, alpha) @ vector by central differences at the current weights w:
    (grad_alpha L_train(w + eps v, alpha) - grad_alpha L_train(w - eps v, alpha)) / (2 eps), eps = r / ||v||.
    Returns one tensor per alpha group."""
    alpha_list = list(alphas.values())
    # PAPER: Eq. (8), eps = 0.01 / ||grad_w' L_val(w', alpha)||
    eps = r / torch.cat([v.reshape(-1) for v in vector.values()]).norm()
    params = dict(model.named_parameters())
    grads = []
    for sign in (1.0, -1.0):
        w = {n: params[n].detach() + sign * eps * v for n, v in vector.items()}
        loss = F.cross_entropy(functional_call(model, w, (x, mixture_weights(alphas))), y)
        grads.append(_grads_or_zeros(torch.autograd.grad(loss, alpha_list, allow_unused=True), alpha_list))
    return [(gp - gn) / (2 * eps) for gp, gn in zip(*grads)]


def unrolled_arch_grads(model, alphas, opt, x, y, xa, ya, xi) -> tuple[list[torch.Tensor], float, float]:
    """The second-order architecture gradient grad_alpha L_val(w', alpha) - xi * grad^2_{alpha,w} L_train(w, alpha)
    grad_w' L_val(w', alpha), w' = virtual_step(...) on the training batch (x, y), L_val on the architecture batch
    (xa, ya). Returns (one gradient per alpha group, loss and accuracy of L_val at w')."""
    # PAPER: Eq. (7)-(8)
    alpha_list = list(alphas.values())
    leaves = {n: t.requires_grad_(True) for n, t in virtual_step(model, alphas, opt, x, y, xi).items()}
    # the virtual network's BatchNorm running statistics are thrown away, as with the official code's model copy
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    logits = functional_call(model, {**leaves, **buffers}, (xa, mixture_weights(alphas)))
    loss = F.cross_entropy(logits, ya)
    grads = torch.autograd.grad(loss, alpha_list + list(leaves.values()), allow_unused=True)
    vector = {n: g for n, g in zip(leaves, grads[len(alpha_list):]) if g is not None}  # grad_w' L_val(w', alpha)
    hvp = hessian_vector_product(model, alphas, vector, x, y)
    arch_grads = [g - xi * h for g, h in zip(_grads_or_zeros(grads[:len(alpha_list)], alpha_list), hvp)]
    return arch_grads, loss.item(), (logits.argmax(1) == ya).float().mean().item()


def unrolled_arch_step(model, alphas, arch_opt, opt, x, y, xa, ya, xi) -> tuple[float, float]:
    """One Adam step on alpha with the second-order gradient (unrolled_arch_grads); the weights do not move."""
    arch_grads, loss, acc = unrolled_arch_grads(model, alphas, opt, x, y, xa, ya, xi)
    arch_opt.zero_grad(set_to_none=True)
    for a, g in zip(alphas.values(), arch_grads):
        a.grad = g
    arch_opt.step()
    return loss, acc


def weight_step(model, alphas, opt, x, y, grad_clip) -> tuple[float, float]:
    """One SGD step on the supernet weights with the training batch, alpha fixed."""
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        weights = mixture_weights(alphas)
    logits = model(x, weights)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.item(), (logits.argmax(1) == y).float().mean().item()


def derive_genotype(space, alphas):
    """DARTS space: top-2 incoming edges per node by their best non-`none` op weight; NB201: argmax per edge;
    1Shot1: argmax op per node and top-k inputs (spaces.*Space.derive)."""
    with torch.no_grad():
        return space.derive(mixture_weights(alphas))


# ---- the recurrent cell space (--space rnn): DARTS' rnn/ search on a language model; alpha (36 x 5) mixes, per
# node, every earlier node and every activation (spaces.RecurrentCell). Hidden states run on along each stream.
def lm_arch_step(model, alphas, arch_opt, batch, hidden) -> tuple[float, torch.Tensor]:
    """First order: one Adam step on alpha with the NLL of an architecture window at the current weights.
    PAPER: Eq. (6), xi = 0"""
    _, nll, hidden = spaces.lm_loss(model, *batch, hidden, mixture_weights(alphas))
    grads = torch.autograd.grad(nll, list(alphas.values()))
    arch_opt.zero_grad(set_to_none=True)
    for a, g in zip(alphas.values(), grads):
        a.grad = g
    arch_opt.step()
    return nll.item(), hidden.detach()


def clip_factor(grads, max_norm: float) -> float:
    """The factor clip_grad_norm_ would scale `grads` by: min(1, max_norm / (norm + 1e-6))."""
    return min(1.0, max_norm / (torch.cat([g.reshape(-1) for g in grads]).norm().item() + 1e-6))


def lm_unrolled_arch_grads(model, alphas, batch, hidden, arch_batch, hidden_a, xi, wd, clip, r=1e-2):
    """Second order as rnn/architect.py: w' = w - xi (c grad_w L_train + wd w), c = the clip factor of grad_w,
    no momentum (the RNN search's SGD has none); grad_alpha L_val(w', alpha) - xi c H v, v = grad_w' L_val(w')
    clipped to `clip`, H v by central differences at w (eps = r / ||v||). PAPER: Eq. (6)-(8).
    Returns (one gradient per alpha group, L_val at w', the architecture stream's next hidden)."""
    # DEVIATION: c is capped at 1; rnn/architect.py scales the implicit term by max_norm / norm even when that is > 1
    names, params = zip(*model.named_parameters())
    alpha_list = list(alphas.values())
    buffers = {n: b.clone() for n, b in model.named_buffers()}  # the virtual model's BN statistics are thrown away
    call = lambda w: (lambda *a: functional_call(model, {**w, **buffers}, a))  # noqa: E731
    with torch.no_grad():
        weights = mixture_weights(alphas)
    grads = torch.autograd.grad(spaces.lm_loss(model, *batch, hidden, weights)[1], params)
    c = clip_factor(grads, clip)
    w_virtual = {n: (p - xi * (c * g + wd * p)).detach().requires_grad_(True) for n, p, g in zip(names, params, grads)}
    _, nll, hidden_a = spaces.lm_loss(call(w_virtual), *arch_batch, hidden_a, mixture_weights(alphas))
    g = torch.autograd.grad(nll, alpha_list + list(w_virtual.values()))
    v = [t * clip_factor(g[len(alpha_list):], clip) for t in g[len(alpha_list):]]
    eps = r / torch.cat([t.reshape(-1) for t in v]).norm()
    hv = []  # grad_alpha L_train(w +- eps v, alpha)
    for sign in (1.0, -1.0):
        w_shifted = {n: p.detach() + sign * eps * t for n, p, t in zip(names, params, v)}
        loss = spaces.lm_loss(call(w_shifted), *batch, hidden, mixture_weights(alphas))[1]
        hv.append(torch.autograd.grad(loss, alpha_list))
    grads = [ga - xi * c * (gp - gn) / (2 * eps) for ga, gp, gn in zip(g[:len(alpha_list)], *hv)]
    return grads, nll.item(), hidden_a.detach()


def rnn_search(args, argv=None) -> dict:
    """rnn/train_search.py: per window an architecture step (first or second order), then a weight step."""
    data.refuse_torchrun("--space rnn runs as one process (as DARTS' rnn/ search), not under torchrun")
    space = spaces.get_space("rnn")
    lm = data.LMSearch(args, space, f"darts{'2' if args.unrolled else ''}_rnn_{Path(args.dataset).stem}_s{args.seed}", argv)
    alphas = init_alphas(space, lm.device)
    arch_opt = torch.optim.Adam(alphas.values(), args.arch_lr, betas=tuple(args.arch_betas), weight_decay=args.arch_wd)
    state = {"model": lm.model, "alphas": alphas, "opt": lm.opt, "arch_opt": arch_opt}
    for epoch in range(lm.run.restore(state), args.epochs + 1):
        t0, sums = time.time(), {"train_loss": 0.0, "arch_loss": 0.0}
        hidden = hidden_a = lm.model.init_hidden(args.batch_size)  # each epoch starts from zero states (as DARTS)
        for batch, arch_batch in lm.steps(epoch, sums):
            if args.unrolled:  # xi = the weights' lr of this step (scaled by its window length, as DARTS)
                grads, arch_loss, hidden_a = lm_unrolled_arch_grads(lm.model, alphas, batch, hidden, arch_batch,
                                                                    hidden_a, lm.opt.param_groups[0]["lr"], args.wd,
                                                                    args.grad_clip)
                arch_opt.zero_grad(set_to_none=True)
                for a, g in zip(alphas.values(), grads):
                    a.grad = g
                arch_opt.step()
            else:
                arch_loss, hidden_a = lm_arch_step(lm.model, alphas, arch_opt, arch_batch, hidden_a)
            with torch.no_grad():  # the weight step: alpha fixed, the softmax mixture of every input and activation
                weights = mixture_weights(alphas)
            train_loss, hidden = spaces.lm_weight_step(lm.model, lm.opt, batch, hidden, weights, args.grad_clip, args.ar, args.tar)
            sums["train_loss"], sums["arch_loss"] = sums["train_loss"] + train_loss, sums["arch_loss"] + arch_loss
        genotype = derive_genotype(space, alphas)
        with torch.no_grad():
            weights = mixture_weights(alphas)
        lm.end_epoch(state, {"epoch": epoch, "epoch_time_s": time.time() - t0, "genotype": str(genotype),
                             **{f"entropy_{g}": h for g, h in spaces.mean_entropy(weights).items()}}, sums, weights, weights)
    return lm.finish("darts", derive_genotype(space, alphas), alphas)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.space == "rnn":
        return rnn_search(args, argv)
    torch.manual_seed(args.seed)
    if args.unrolled:  # its virtual weight step would use each rank's own batch
        data.refuse_torchrun("--unrolled (second order) does not run under torchrun: run it as one process")
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
    model = data.wrap_ddp(space.supernet(args.C, args.layers, info.num_classes, in_channels=info.channels).to(device), device)
    alphas = init_alphas(space, device)
    opt = torch.optim.SGD(model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs, eta_min=args.lr_min)
    arch_opt = torch.optim.Adam(alphas.values(), args.arch_lr, betas=tuple(args.arch_betas), weight_decay=args.arch_wd)
    data.average_grads_before_step(arch_opt)  # torchrun: the global batch's gradient on every rank
    gen = torch.Generator().manual_seed(args.seed)
    augment, test_augment = data.Augment(info, True, generator=gen, shard=(rank, world)), data.Augment(info, False)

    run = data.Run(args, f"darts{'2' if args.unrolled else ''}_{args.space}_{Path(args.dataset).stem}_s{args.seed}", argv)
    # everything the next epoch depends on (checkpointed each epoch; data.py adds the torch/numpy/python RNGs)
    state = {"model": model, "alphas": alphas, "opt": opt, "sched": sched, "arch_opt": arch_opt,
             "augment_gen": gen, "data_order": paired}
    for epoch in range(run.restore(state), args.epochs + 1):
        t0, sums = time.time(), {"train_loss": 0.0, "train_acc": 0.0, "arch_loss": 0.0, "arch_acc": 0.0}
        for (x, y), (xa, ya) in run.steps(paired, epoch, sums):
            x, y = augment(x.to(device)), y.to(device)
            xa, ya = augment(xa.to(device)), ya.to(device)
            # ALGO LOGIC: architecture step first, then weight step (DARTS' order); second order: xi = the weights'
            # current learning rate (the official code passes its scheduler's lr)
            with data.local_grads(model):  # torchrun: the weight gradients of this step are not needed
                if args.unrolled:
                    arch_loss, arch_acc = unrolled_arch_step(model, alphas, arch_opt, opt, x, y, xa, ya, opt.param_groups[0]["lr"])
                else:
                    arch_loss, arch_acc = arch_step(model, alphas, arch_opt, xa, ya)
            train_loss, train_acc = weight_step(model, alphas, opt, x, y, args.grad_clip)
            for k, v in zip(sums, (train_loss, train_acc, arch_loss, arch_acc)):
                sums[k] += v
        sched.step()
        genotype = derive_genotype(space, alphas)
        metrics = {"epoch": epoch, **{k: v / len(paired) for k, v in sums.items()}, "lr": sched.get_last_lr()[0],
                   "epoch_time_s": time.time() - t0, "genotype": str(genotype)}
        with torch.no_grad():
            metrics.update({f"entropy_{g}": h for g, h in spaces.mean_entropy(mixture_weights(alphas)).items()})
        metrics.update(data.oracle_metrics(table, genotype, args.dataset))
        metrics.update(data.nb101_metrics(nb101, genotype, args.space))
        run.end_epoch(state, metrics, mixture_weights(alphas),
                      show=("train_loss", "train_acc", "arch_acc", "entropy_normal", "oracle_test"))

    test_loss, test_acc = data.evaluate(model, test_loader, test_augment, device, mixture_weights(alphas))
    genotype = derive_genotype(space, alphas)
    gap = spaces.discretisation_check(space, genotype, lambda w: data.evaluate(  # GAEA Sec. 4.1: the derived cell
        model, test_loader, test_augment, device, w), device)
    result = {"algorithm": "darts", "search_space": args.space, "genotype": genotype.to_json(),
              "genotype_str": str(genotype), "supernet_test_acc": test_acc, "supernet_test_loss": test_loss, **gap,
              "search_time_s": time.time() - run.start,
              "alphas": {g: a.detach().cpu().tolist() for g, a in alphas.items()}}
    return run.finish(result, genotype, spaces.genotype_to_dot(genotype))


if __name__ == "__main__":
    data.cli(main)
