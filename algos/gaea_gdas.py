"""GAEA GDAS: GDAS (Dong & Yang, CVPR 2019) with GAEA's exponentiated-gradient update (Li et al., ICLR 2021, App. C.3).

Papers: GAEA https://arxiv.org/abs/2004.07802 -- GDAS https://arxiv.org/abs/1910.04465
Official code: GAEA https://github.com/liamcli/gaea_release (cnn/architect/architect_egdas.py) -- GDAS
https://github.com/D-X-Y/AutoDL-Projects (xautodl/models/cell_searchs/search_model_gdas.py, exps/NAS-Bench-201-algos/GDAS.py)

What this file implements: every forward draws ONE op per edge (one Gumbel-max sample per forward, shared by all
cells of a type): index = argmax(log p + g), g ~ Gumbel(0, 1). Only the sampled op of each edge is computed, so a
weight step costs what the sampled child network costs. The architecture step back-propagates through the hard
one-hot with the straight-through weights h - stopgrad(softmax((log p + g)/tau)) + softmax(...), tau annealed
linearly from 10 to 0.1 over the epochs. Two ways to hold and update the distribution p (`--arch-update`):
  eg           GAEA: p lives on the simplex (uniform init), log p = log(alpha); exponentiated-gradient step
               alpha <- alpha * exp(-eta * grad), eta = 0.1 (GAEA paper), back onto the simplex; loss + 0.01 *
               KL(alpha || uniform) (the release's egdas config; the paper gives no such term); weights alone for
               the first 50 epochs (the release's warm-up; the paper gives none).
  softmax-adam GDAS: p = softmax(theta), theta logits (init 1e-3 * N(0, 1)) trained by Adam 3e-4, wd 1e-3.
Per step: weight step (SGD on a training batch) first, then the architecture step (GDAS' order). The genotype
takes the argmax op per edge (NB201), or the DARTS top-2 rule on p (DARTS space).
NAS-Bench-1Shot1 (our form of GDAS there): one Gumbel-max op per choice node (as an edge above), and the
inputs of each node with a choice (and of the output) by Gumbel-top-k: the k largest log p + g, k = the parents the
space allows (a sample of k inputs without replacement), as a k-hot row whose gradient is that of
softmax((log p + g)/tau) (straight-through). Every forward thus runs a valid 1Shot1 child; the result is an NB101
spec. 1Shot1 settings (its GDAS run): 100 epochs, tau 10 -> 1, batch 96, no warm-up.

Reproduce GAEA GDAS on NAS-Bench-201 (CIFAR-10, 150 epochs), with the benchmark accuracy of the cell per epoch:
    python algos/gaea_gdas.py --nb201-table ../shared/data/nb201/nb201_oracle.csv.gz
The GDAS baseline (NB201 paper: 250 epochs); direct search on CIFAR-100 (weights: train set, architecture: xvalid):
    python algos/gaea_gdas.py --arch-update softmax-adam --epochs 250
    python algos/gaea_gdas.py --dataset cifar100 --split-file ../shared/data/nb201/splits/cifar100-test-split.txt.gz
NAS-Bench-1Shot1 search space 1 (NB101 spec for train_eval.py --genotype):
    python algos/gaea_gdas.py --space nb1shot1-1 --nb101-table nasbench_only108.tfrecord
DARTS search space:
    python algos/gaea_gdas.py --space darts --epochs 50
Offline quick start on the real CIFAR-100 subset:
    python algos/gaea_gdas.py --dataset ../shared/data/images/cifar100_partial.npz --epochs 2 --C 8 --layers 1
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

ARCH_UPDATES = ("eg", "softmax-adam")
# per update rule: flag -> default; a flag of the other rule is an error, never silently ignored
ARCH_DEFAULTS = {"eg": {"arch_lr": 0.1, "kl_coef": 0.01},
                 "softmax-adam": {"arch_lr": 3e-4, "arch_betas": (0.5, 0.999), "arch_wd": 1e-3}}
# DEVIATION: eg pairs eta = 0.1 (the GAEA paper's, App. C.3) with the release's KL coefficient 0.01, which its egdas
# config pairs with eta = 0.01 (`--arch-lr 0.01` runs that pairing) — the paper's eta, and the only KL coefficient
# either source names (the paper has no KL term); a combination neither ran.
EG_FLOOR = 1e-5  # GAEA's clamp of simplex entries


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GAEA GDAS / GDAS search (defaults: GAEA GDAS on NAS-Bench-201, CIFAR-10).")
    p.add_argument("--space", default="nb201", choices=spaces.SPACES, help="search space")
    p.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | imagenet16-120 | synthetic | path/to/file.npz")
    p.add_argument("--data-dir", default="./data", help="where datasets are (or are downloaded to)")
    p.add_argument("--arch-update", default="eg", choices=ARCH_UPDATES, help="eg: GAEA (simplex + exponentiated gradient); softmax-adam: GDAS (logits + Adam)")
    p.add_argument("--single-level", action="store_true", help="ERM: weight and architecture steps both on the whole training set")
    p.add_argument("--train-portion", type=data.unit_interval, default=0.5, help="bilevel: fraction of the training set for the weights")
    p.add_argument("--split-file", default=None, help="bilevel: NB201 split file instead of --train-portion (cifar-split.txt, or cifar100- / imagenet-16-120-test-split.txt for direct search)")
    p.add_argument("--train-subset", type=data.nonneg_int, default=0, help="use only the first N training images (0 = all)")
    p.add_argument("--epochs", type=data.positive_int, default=None, help="search epochs (150; nb1shot1: 100)")
    p.add_argument("--warmup-epochs", type=data.nonneg_int, default=None, help="epochs of weight training only (eg 50, GAEA's release; softmax-adam and nb1shot1: 0)")
    p.add_argument("--batch-size", type=data.positive_int, default=None, help="batch size of both steps (64; nb1shot1: 96)")
    p.add_argument("--C", type=data.positive_int, default=16, help="initial channels of the supernet")
    p.add_argument("--layers", type=data.positive_int, default=None, help="cells: nb201 per stage (5), darts total (8), nb1shot1 per stack (3)")
    p.add_argument("--lr", type=data.positive_float, default=0.025, help="SGD learning rate of the weights (cosine schedule)")
    p.add_argument("--lr-min", type=data.nonneg_float, default=0.001, help="final learning rate of the cosine schedule")
    p.add_argument("--momentum", type=data.fraction, default=0.9, help="SGD momentum")
    p.add_argument("--wd", type=data.nonneg_float, default=3e-4, help="weight decay of the weights")
    p.add_argument("--grad-clip", type=data.positive_float, default=5.0, help="gradient-norm clip of the weights")
    p.add_argument("--tau-max", type=data.positive_float, default=10.0, help="Gumbel-softmax temperature at the first (post-warm-up) epoch")
    p.add_argument("--tau-min", type=data.positive_float, default=None, help="Gumbel-softmax temperature at the last epoch (0.1; nb1shot1: 1)")
    p.add_argument("--selected-only", action="store_true", help="drop AutoDL's zero-valued terms of the non-sampled ops (forward_gdas_v1)")
    p.add_argument("--arch-lr", type=data.positive_float, default=None, help="architecture step size: eg 0.1 (eta; the release: 0.01), softmax-adam 3e-4 (Adam)")
    p.add_argument("--kl-coef", type=data.nonneg_float, default=None, help="eg only: coefficient of KL(alpha || uniform) in the architecture loss (0.01)")
    p.add_argument("--arch-betas", type=data.fraction, nargs=2, default=None, help="softmax-adam only: Adam betas (0.5 0.999)")
    p.add_argument("--arch-wd", type=data.nonneg_float, default=None, help="softmax-adam only: Adam weight decay of the logits (1e-3)")
    p.add_argument("--nb201-table", default=None, help="CSV with arch_str + accuracy columns: log the derived cell's benchmark accuracy")
    p.add_argument("--nb101-table", default=None, help="nb1shot1: nasbench_only108.tfrecord (or nasbench_full, or an NB101 CSV): log the derived cell's NB101 accuracy and test regret")
    p.add_argument("--seed", type=data.seed, default=2, help="random seed")
    p.add_argument("--device", type=data.device_name, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out-dir", type=data.out_dir, default="runs", help="results go to OUT_DIR/RUN_NAME/")
    p.add_argument("--run-name", type=data.run_name, default=None, help="default: {gaea_gdas|gdas}_{space}_{dataset}_s{seed}")
    data.add_run_args(p)  # --resume, --tensorboard, --log-every, --deterministic
    # DEVIATION: weights as GAEA's NB201 config (plain momentum, wd 3e-4, lr cosine per epoch) for both rules, where
    # AutoDL's GDAS uses nesterov, wd 5e-4 and a per-iteration cosine; C=16 as NB201's GDAS (GAEA's egdas config: 24)
    # — the two rules then train the weights alike and differ only in the architecture update.
    args = p.parse_args(argv)
    if args.space == "enas":  # the ENAS micro cell chooses each node's inputs: there are no edges to weight
        p.error("--space enas is ASNG-NAS's ENAS micro space (inputs are choices, not edges); gaea_gdas.py weights the ops of fixed edges: use algos/asng.py")
    oneshot = args.space.startswith("nb1shot1")
    for k, v in (("epochs", 100 if oneshot else 150), ("batch_size", 96 if oneshot else 64), ("tau_min", 1.0 if oneshot else 0.1),
                 ("warmup_epochs", 50 if args.arch_update == "eg" and not oneshot else 0)):
        setattr(args, k, v if getattr(args, k) is None else getattr(args, k))
    data.check_search_args(args, p)
    if not 0 < args.tau_min <= args.tau_max:
        p.error("need 0 < --tau-min <= --tau-max")
    if not 0 <= args.warmup_epochs < args.epochs:
        p.error(f"--warmup-epochs {args.warmup_epochs} must be >= 0 and < --epochs {args.epochs} (otherwise no architecture step runs)")
    for rule, defaults in ARCH_DEFAULTS.items():
        for key, value in defaults.items():
            if rule == args.arch_update and getattr(args, key) is None:
                setattr(args, key, value)
            elif rule != args.arch_update and key not in ARCH_DEFAULTS[args.arch_update] and getattr(args, key) is not None:
                p.error(f"--{key.replace('_', '-')} only applies to --arch-update {rule}")
    return args


# ALGO LOGIC: GAEA stores p itself on the simplex (uniform rows); GDAS stores logits theta, p = softmax(theta).
def init_arch(space, arch_update: str, device) -> dict[str, nn.Parameter]:
    if arch_update == "eg":
        return {g: nn.Parameter(torch.full(shape, 1.0 / shape[-1], device=device)) for g, shape in space.arch_shapes().items()}
    return {g: nn.Parameter(1e-3 * torch.randn(*shape, device=device)) for g, shape in space.arch_shapes().items()}


def log_probs(arch: dict[str, torch.Tensor], arch_update: str) -> dict[str, torch.Tensor]:
    """log p per edge: GAEA takes the log of the simplex point (in place of GDAS' log_softmax of the logits)."""
    return {g: a.log() if arch_update == "eg" else F.log_softmax(a, dim=-1) for g, a in arch.items()}  # ALGO LOGIC


def distribution(arch: dict[str, torch.Tensor], arch_update: str) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {g: lp.exp() for g, lp in log_probs(arch, arch_update).items()}


def gumbel_noise(shape, generator: torch.Generator, device) -> torch.Tensor:
    """Standard Gumbel noise -log(E), E ~ Exp(1), drawn on CPU from `generator` (reproducible on any device)."""
    return torch.empty(shape).exponential_(generator=generator).log_().neg_().to(device)


def top_k_mask(z: torch.Tensor, k: int = 1) -> torch.Tensor:
    """1 at the k largest entries of each row (ties: lower index), 0 elsewhere. k = 1: the one-hot argmax."""
    return torch.zeros_like(z).scatter_(-1, torch.argsort(-z, dim=-1, stable=True)[..., :k], 1.0)


def straight_through(logp: torch.Tensor, noise: torch.Tensor, tau: float, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Gumbel-max sample with the straight-through estimator. Returns (hardwts: one-hot in value, softmax gradient;
    index per row); k > 1 (1Shot1 inputs): Gumbel-top-k, a k-hot row with the same softmax gradient."""
    # PAPER: GDAS' Gumbel-max sample: hard one-hot forward, softmax((log p + g)/tau) backward
    # ALGO LOGIC: k > 1 samples k inputs without replacement (1Shot1)
    # DEVIATION: 1Shot1's GDAS mixes a node's inputs with soft Gumbel-softmax weights ("hard gave exploding gradients"
    # there), so its forwards are not single children; here inputs are sampled like the ops — a valid 1Shot1 child.
    probs = F.softmax((logp + noise) / tau, dim=-1)
    return top_k_mask(logp + noise, k) - probs.detach() + probs, probs.argmax(dim=-1)


def sample_arch(arch, arch_update: str, tau: float, generator: torch.Generator, parents=None) -> dict[str, list]:
    """One sample per forward per group (shared by every cell of that type) as MixedEdge specs (hardwts_row, k);
    1Shot1 input groups (`parents`: {group: k}) as their k-hot straight-through row."""
    specs, parents = {}, parents or {}
    for g, logp in log_probs(arch, arch_update).items():
        for _ in range(100):  # GDAS resamples when the noise makes the softmax non-finite (E = 0 -> g = inf)
            hardwts, index = straight_through(logp, gumbel_noise(logp.shape, generator, logp.device), tau, parents.get(g, 1))
            if torch.isfinite(hardwts).all():
                break
        else:
            raise FloatingPointError(f"architecture parameters of group {g!r} are not finite")
        specs[g] = hardwts if g in parents else list(zip(hardwts.unbind(0), index.tolist()))
    return specs


def sample_child(arch, arch_update: str, generator: torch.Generator, parents=None) -> dict[str, list[int]]:
    """The weight step's sample: index = argmax(log p + g) per edge (tau does not change the argmax). Plain op
    indices, so each edge computes exactly op_k(x): the weight step costs what the child network costs.
    1Shot1 input groups: the k-hot row of the k largest log p + g."""
    # DEVIATION: AutoDL multiplies the op by hardwts[k] = 1 - p + p (1 up to rounding); here the factor is dropped — the
    # weight step needs no gradient of the distribution, and plain indices run the child network alone.
    child, parents = {}, parents or {}
    with torch.no_grad():
        for g, lp in log_probs(arch, arch_update).items():
            z = lp + gumbel_noise(lp.shape, generator, lp.device)
            child[g] = top_k_mask(z, parents[g]) if g in parents else z.argmax(dim=-1).tolist()
    return child


def argmax_child(arch, arch_update: str, parents=None) -> dict:
    """The most likely child: argmax op per edge (1Shot1: and the k most likely inputs)."""
    parents = parents or {}
    return {g: top_k_mask(p, parents[g]) if g in parents else p.argmax(dim=-1).tolist()
            for g, p in distribution(arch, arch_update).items()}


class GDASEdge(spaces.MixedEdge):
    """MixedEdge plus GDAS' `forward_gdas` quirk: for a (hardwts, k) spec the non-sampled hardwts[j] (0 in value,
    exactly: (0 - p) + p) are added to the output, so each receives the sum of the upstream gradient. Only op k runs.
    AutoDL's NB201 and DARTS-space search cells both run this per edge, so it is the default in both spaces.
    (`--selected-only` uses plain MixedEdge: only hardwts[k] * op_k(x), AutoDL's forward_gdas_v1.)"""

    def forward(self, x, spec):
        out = super().forward(x, spec)
        if isinstance(spec, tuple):
            w, k = spec
            out = out + torch.cat([w[:k], w[k + 1:]]).sum()  # ALGO LOGIC: zero-valued, gradient-carrying terms
        return out


class ExponentiatedGradient(torch.optim.Optimizer):
    """GAEA's mirror-descent step on rows that live on the simplex: alpha <- alpha * exp(-eta * grad), then each row
    back onto the simplex; eta = 0.1 is the GAEA paper's value (App. C.3)."""

    def __init__(self, params, lr: float):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for a in group["params"]:
                if a.grad is None:  # a group no cell used (e.g. no normal cell in a tiny DARTS net)
                    continue
                a.mul_(torch.exp(-group["lr"] * a.grad))  # PAPER: GAEA's exponentiated-gradient update
                # ALGO LOGIC: egdas order -- divide by the row sum, then clamp at 1e-5 (rows may sum to 1 + O(1e-5))
                a.div_(a.sum(dim=-1, keepdim=True)).clamp_(min=EG_FLOOR)


def kl_to_uniform(arch: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum over groups and rows of KL(alpha || uniform) = sum alpha * log(alpha * n_ops) (GAEA's egdas regulariser)."""
    return sum((a * (a * a.shape[-1]).log()).sum() for a in arch.values())


def tau_at(epoch: int, epochs: int, warmup: int, tau_max: float, tau_min: float) -> float:
    """Linear temperature for 0-based `epoch`: tau_max through the warm-up, tau_min at the last epoch."""
    # DEVIATION: GAEA's egdas divides by (epochs - 1) ignoring the warm-up, so tau never reaches tau_min; 1Shot1's GDAS
    # drops tau by 9/epochs per epoch (ending at 1 + 9/epochs) — here every schedule ends at --tau-min, as GDAS' own.
    return tau_max - (tau_max - tau_min) * max(epoch - warmup, 0) / max(epochs - 1 - warmup, 1)


def weight_step(model, child: dict[str, list[int]], opt, x, y, grad_clip) -> tuple[float, float]:
    """One SGD step on the weights of the sampled child (only its ops run forward and backward)."""
    opt.zero_grad(set_to_none=True)
    logits = model(x, child)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.item(), (logits.argmax(1) == y).float().mean().item()


def arch_step(model, arch, arch_update, arch_opt, x, y, tau, generator, kl_coef=0.0, parents=None) -> tuple[float, float]:
    """One step on the distribution with the architecture batch: a fresh Gumbel sample, CE through the
    straight-through weights (+ kl_coef * KL(alpha || uniform) for GAEA), then EG or Adam."""
    logits = model(x, sample_arch(arch, arch_update, tau, generator, parents))
    loss = F.cross_entropy(logits, y)
    total = loss + kl_coef * kl_to_uniform(arch) if kl_coef else loss  # ALGO LOGIC
    params = list(arch.values())  # gradients of the distribution only: no weight gradients are computed
    for a, g in zip(params, torch.autograd.grad(total, params, allow_unused=True)):
        a.grad = g
    arch_opt.step()
    return loss.item(), (logits.argmax(1) == y).float().mean().item()


def derive_genotype(space, arch, arch_update):
    """NB201: argmax op per edge (`none` can win, as in GDAS); DARTS: top-2 incoming edges per node by their best
    non-`none` probability, each with that op; 1Shot1: argmax op per node, top-k inputs (spaces.*Space.derive)."""
    # DEVIATION: AutoDL's DARTS-space GDAS genotype ranks all (edge, non-`none` op) pairs of a node and keeps the top
    # 2, so both can come from one edge; here the DARTS rule (two distinct edges), as GAEA's spaces — a DARTS genotype.
    return space.derive(distribution(arch, arch_update))


def main(argv=None) -> dict:
    args = parse_args(argv)
    data.refuse_torchrun("gaea_gdas.py samples one child architecture per step and has no multi-process search: run it as one "
                         "process, not under torchrun")
    torch.manual_seed(args.seed)
    device = data.resolve_device(args.device)
    # everything that can fail on bad input happens before the run directory exists
    space = spaces.get_space(args.space)
    # EXTENSION: GAEA GDAS (--arch-update eg) on the darts and nb1shot1 spaces, which no paper ran (its config is NB201's)
    parents = space.parents() if isinstance(space, spaces.NB1Shot1Space) else None  # 1Shot1: inputs kept per group
    paired, test_loader, info = data.search_loaders(
        args.dataset, args.data_dir, args.batch_size, bilevel=not args.single_level, seed=args.seed,
        train_portion=args.train_portion, split_file=args.split_file, train_subset=args.train_subset)
    table = data.load_table(args.nb201_table) if args.nb201_table else None
    nb101 = data.load_nb101(args.nb101_table) if args.nb101_table else None
    edge = spaces.MixedEdge if args.selected_only else GDASEdge
    model = space.supernet(args.C, args.layers, info.num_classes, in_channels=info.channels, edge=edge)
    model = model.to(device)
    arch = init_arch(space, args.arch_update, device)
    opt = torch.optim.SGD(model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs, eta_min=args.lr_min)
    if args.arch_update == "eg":  # ALGO LOGIC: GAEA
        arch_opt, kl_coef = ExponentiatedGradient(arch.values(), args.arch_lr), args.kl_coef
    else:  # GDAS
        arch_opt, kl_coef = torch.optim.Adam(arch.values(), args.arch_lr, betas=tuple(args.arch_betas), weight_decay=args.arch_wd), 0.0
    gen, gumbel_gen = torch.Generator().manual_seed(args.seed), torch.Generator().manual_seed(args.seed + 1)
    augment, test_augment = data.Augment(info, train=True, generator=gen), data.Augment(info, train=False)

    algorithm = "gaea_gdas" if args.arch_update == "eg" else "gdas"
    run = data.Run(args, f"{algorithm}_{args.space}_{Path(args.dataset).stem}_s{args.seed}", argv)
    # everything the next epoch depends on (checkpointed each epoch; data.py adds the torch/numpy/python RNGs)
    state = {"model": model, "arch": arch, "opt": opt, "sched": sched, "arch_opt": arch_opt,
             "augment_gen": gen, "gumbel_gen": gumbel_gen, "data_order": paired}
    for epoch in range(run.restore(state), args.epochs + 1):
        t0, sums = time.time(), {"train_loss": 0.0, "train_acc": 0.0, "arch_loss": 0.0, "arch_acc": 0.0}
        tau = tau_at(epoch - 1, args.epochs, args.warmup_epochs, args.tau_max, args.tau_min)
        search = epoch > args.warmup_epochs
        for (x, y), (xa, ya) in run.steps(paired, epoch, sums):
            x, y = augment(x.to(device)), y.to(device)
            # ALGO LOGIC: weight step on a sampled child first, then the architecture step (GDAS' order)
            # DEVIATION: GAEA's release runs the architecture step first — one order for both rules, GDAS' (AutoDL's)
            train_loss, train_acc = weight_step(model, sample_child(arch, args.arch_update, gumbel_gen, parents), opt, x, y, args.grad_clip)
            sums["train_loss"], sums["train_acc"] = sums["train_loss"] + train_loss, sums["train_acc"] + train_acc
            if search:
                xa, ya = augment(xa.to(device)), ya.to(device)
                arch_loss, arch_acc = arch_step(model, arch, args.arch_update, arch_opt, xa, ya, tau, gumbel_gen, kl_coef, parents)
                sums["arch_loss"], sums["arch_acc"] = sums["arch_loss"] + arch_loss, sums["arch_acc"] + arch_acc
        sched.step()
        genotype = derive_genotype(space, arch, args.arch_update)
        keep = sums if search else {k: v for k, v in sums.items() if k.startswith("train")}
        metrics = {"epoch": epoch, **{k: v / len(paired) for k, v in keep.items()}, "tau": tau, "arch_updated": search,
                   "lr": sched.get_last_lr()[0], "epoch_time_s": time.time() - t0, "genotype": str(genotype)}
        metrics.update({f"entropy_{g}": h for g, h in spaces.mean_entropy(distribution(arch, args.arch_update)).items()})
        metrics.update(data.oracle_metrics(table, genotype, args.dataset))
        metrics.update(data.nb101_metrics(nb101, genotype, args.space))
        run.end_epoch(state, metrics, distribution(arch, args.arch_update),
                      show=("train_loss", "train_acc", "arch_acc", "tau", "entropy_normal", "oracle_test"))

    # ALGO LOGIC: the supernet's test accuracy runs the most likely child (GAEA's per-epoch evaluation)
    test_loss, test_acc = data.evaluate(model, test_loader, test_augment, device, argmax_child(arch, args.arch_update, parents))
    # DEVIATION: the last epoch's cell is returned; the release returns the cell of the epoch with the best validation
    # accuracy of the argmax child — no validation pass per epoch; metrics.jsonl holds every epoch's genotype.
    genotype = derive_genotype(space, arch, args.arch_update)
    result = {"algorithm": algorithm, "search_space": args.space, "genotype": genotype.to_json(),
              "genotype_str": str(genotype), "supernet_test_acc": test_acc, "supernet_test_loss": test_loss,
              "search_time_s": time.time() - run.start, "arch_update": args.arch_update,
              "alphas": {g: a.detach().cpu().tolist() for g, a in arch.items()}}
    return run.finish(result, genotype, spaces.genotype_to_dot(genotype))


if __name__ == "__main__":
    data.cli(main)
