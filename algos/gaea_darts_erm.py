"""GAEA DARTS (ERM): Geometry-Aware Gradient Algorithms for NAS (Li, Khodak, Balcan & Talwalkar, ICLR 2021).

Paper: https://arxiv.org/abs/2004.07802 (Sec. 3.3, App. C.3) -- official code: https://github.com/liamcli/gaea_release

What this file implements: first-order DARTS (diff it with algos/darts.py) with architecture weights theta on a
product of simplices (uniform start), used directly as mixture weights (no softmax) and updated by exponentiated
gradient: theta <- theta * exp(-eta * grad) renormalised per edge (Eq. 8 of the paper), eta = 0.1, no Adam, no weight decay.
ERM by default (both steps on the whole training set; `--bilevel`: theta on the held-out half). NB201 without `none`.

Reproduce the paper's NB201 search (ERM, CIFAR-10, 25 epochs), with the benchmark accuracy of the cell each epoch:
    python algos/gaea_darts_erm.py --nb201-table ../shared/data/nb201/nb201_oracle.csv.gz
The "GAEA DARTS (bilevel)" row: add --bilevel --split-file ../shared/data/nb201/splits/cifar-split.txt.gz
Offline quick start on the real CIFAR-10 subset:
    python algos/gaea_darts_erm.py --dataset ../shared/data/images/cifar10_partial.npz --epochs 2 --C 8 --layers 1
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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GAEA DARTS search (defaults: the paper's NB201 ERM search).")
    p.add_argument("--space", default="nb201", choices=spaces.SPACES, help="search space")
    p.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | imagenet16-120 | synthetic | path/to/file.npz")
    p.add_argument("--data-dir", default="./data", help="where datasets are (or are downloaded to)")
    p.add_argument("--bilevel", action="store_true", help="architecture steps on the held-out half (default ERM: whole training set)")
    p.add_argument("--train-portion", type=data.unit_interval, default=0.5, help="bilevel: fraction of the training set for the weights")
    p.add_argument("--split-file", default=None, help="bilevel: NB201 split file instead of --train-portion (cifar-split.txt, or cifar100- / imagenet-16-120-test-split.txt for direct search)")
    p.add_argument("--train-subset", type=data.nonneg_int, default=0, help="use only the first N training images (0 = all)")
    p.add_argument("--epochs", type=data.positive_int, default=25, help="search epochs")
    p.add_argument("--batch-size", type=data.positive_int, default=64, help="global batch of both steps (split over torchrun's processes)")
    # DEVIATION: the release's NB201 config: C=24, cosine period 50 (lr ends at ~0.0138); here 16, 25 — NB201's C, lr to --lr-min
    p.add_argument("--C", type=data.positive_int, default=16, help="initial channels of the supernet")
    p.add_argument("--layers", type=data.positive_int, default=None, help="cells: darts total (8), nb201 per stage (5), nb1shot1 per stack (3)")
    p.add_argument("--lr", type=data.positive_float, default=0.025, help="SGD learning rate of the weights (cosine schedule)")
    p.add_argument("--lr-min", type=data.nonneg_float, default=0.001, help="final learning rate of the cosine schedule")
    p.add_argument("--momentum", type=data.fraction, default=0.9, help="SGD momentum")
    p.add_argument("--wd", type=data.nonneg_float, default=3e-4, help="weight decay of the weights")
    p.add_argument("--grad-clip", type=data.positive_float, default=5.0, help="gradient-norm clip of the weights")
    p.add_argument("--arch-lr", type=data.positive_float, default=0.1, help="exponentiated-gradient step size eta (constant)")
    p.add_argument("--nb201-table", default=None, help="CSV with arch_str + accuracy columns: log the derived cell's benchmark accuracy")
    p.add_argument("--nb101-table", default=None, help="nb1shot1: nasbench_only108.tfrecord (or nasbench_full, or an NB101 CSV): log the derived cell's NB101 accuracy and test regret")
    p.add_argument("--seed", type=data.seed, default=2, help="random seed")
    p.add_argument("--device", type=data.device_name, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out-dir", type=data.out_dir, default="runs", help="results go to OUT_DIR/RUN_NAME/")
    p.add_argument("--run-name", type=data.run_name, default=None, help="default: gaea_darts_{erm|bilevel}_{space}_{dataset}_s{seed}")
    data.add_run_args(p)  # --resume, --tensorboard, --log-every, --deterministic
    args = p.parse_args(argv)
    if args.space == "enas":  # the ENAS micro cell chooses each node's inputs: there are no edges to weight
        p.error("--space enas is ASNG-NAS's ENAS micro space (inputs are choices, not edges); gaea_darts_erm.py weights the ops of fixed edges: use algos/asng.py")
    data.check_search_args(args, p)
    return args


# ALGO LOGIC: weights on a product of simplices (rows sum to 1), one matrix per group (cell type), rows start uniform.
def init_alphas(space, device) -> dict[str, nn.Parameter]:
    return {g: nn.Parameter(torch.full(shape, 1.0 / shape[-1], device=device)) for g, shape in space.arch_shapes().items()}


# ALGO LOGIC: mixture weights = the simplex values themselves, no softmax (a copy: constants under no_grad).
def mixture_weights(alphas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {g: a.clone() for g, a in alphas.items()}


def eg_update(theta: torch.Tensor, grad: torch.Tensor, lr: float, floor: float = 1e-5) -> torch.Tensor:
    """theta * exp(-lr * grad) per row, normalised, then the release's clamp at `floor` and renormalisation."""
    # PAPER: Eq. (8)
    # DEVIATION: in the log domain — the release's product overflows float32 once lr * |grad| > ~88. Exact where no
    # entry hits the floor: softmax(log theta - lr grad) = theta e^(-lr grad) / sum. Not where it does: the release
    # clamps the unnormalised product at 1e-5, then divides; here the normalised row is clamped (and theta before the log).
    theta = F.softmax(theta.clamp_min(floor).log() - lr * grad, dim=-1).clamp_min(floor)
    return theta / theta.sum(-1, keepdim=True)


class ExponentiatedGradient(torch.optim.Optimizer):
    """EG (mirror descent, entropy mirror map) on each row's simplex: no momentum, no weight decay."""
    def __init__(self, params, lr=0.1, floor=1e-5):
        super().__init__(params, {"lr": lr, "floor": floor})

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in (p for p in g["params"] if p.grad is not None):
                p.copy_(eg_update(p, p.grad, g["lr"], g["floor"]))


def arch_step(model, alphas, arch_opt, x, y) -> tuple[float, float]:
    """One EG step on theta with the architecture batch, at the current weights (first order)."""
    arch_opt.zero_grad(set_to_none=True)
    logits = model(x, mixture_weights(alphas))
    loss = F.cross_entropy(logits, y)
    loss.backward()
    arch_opt.step()
    return loss.item(), (logits.argmax(1) == y).float().mean().item()


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


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    rank, world, device = data.init_distributed(args.device)  # torchrun: one process per GPU, one search
    # everything that can fail on bad input happens before the run directory exists
    # ALGO LOGIC: NB201 without `none`, as GAEA's release runs it (search.exclude_zero); the DARTS space keeps it (GAEA PC-DARTS)
    space = spaces.get_space(args.space, ops=[o for o in spaces.NB201_OPS if o != "none"] if args.space == "nb201" else None)
    paired, test_loader, info = data.search_loaders(
        args.dataset, args.data_dir, data.per_rank_batch(args.batch_size, world), bilevel=args.bilevel,
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
    arch_opt = ExponentiatedGradient(alphas.values(), args.arch_lr)  # ALGO LOGIC: EG replaces Adam
    data.average_grads_before_step(arch_opt)  # torchrun: the global batch's gradient on every rank
    gen = torch.Generator().manual_seed(args.seed)
    augment, test_augment = data.Augment(info, True, generator=gen, shard=(rank, world)), data.Augment(info, False)

    mode = "bilevel" if args.bilevel else "erm"
    run = data.Run(args, f"gaea_darts_{mode}_{args.space}_{Path(args.dataset).stem}_s{args.seed}", argv)
    # everything the next epoch depends on (checkpointed each epoch; data.py adds the torch/numpy/python RNGs)
    state = {"model": model, "alphas": alphas, "opt": opt, "sched": sched, "arch_opt": arch_opt,
             "augment_gen": gen, "data_order": paired}
    for epoch in range(run.restore(state), args.epochs + 1):
        t0, sums = time.time(), {"train_loss": 0.0, "train_acc": 0.0, "arch_loss": 0.0, "arch_acc": 0.0}
        for (x, y), (xa, ya) in run.steps(paired, epoch, sums):
            x, y = augment(x.to(device)), y.to(device)
            xa, ya = augment(xa.to(device)), ya.to(device)
            # ALGO LOGIC: architecture step first, then weight step (GAEA keeps DARTS' order; no warm-up)
            with data.local_grads(model):  # torchrun: the weight gradients of this step are not needed
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
    # DEVIATION: the last epoch's genotype (release, bilevel: the best-validation epoch's) — one rule; metrics.jsonl has all
    genotype = derive_genotype(space, alphas)
    gap = spaces.discretisation_check(space, genotype, lambda w: data.evaluate(  # GAEA Sec. 4.1: the derived cell
        model, test_loader, test_augment, device, w), device)
    result = {"algorithm": "gaea_darts_erm", "bilevel": args.bilevel, "search_space": args.space, "genotype": genotype.to_json(),
              "genotype_str": str(genotype), "supernet_test_acc": test_acc, "supernet_test_loss": test_loss, **gap,
              "search_time_s": time.time() - run.start,
              "alphas": {g: a.detach().cpu().tolist() for g, a in alphas.items()}}
    return run.finish(result, genotype, spaces.genotype_to_dot(genotype))


if __name__ == "__main__":
    data.cli(main)
