"""GAEA PC-DARTS: Geometry-Aware Exponentiated Algorithm on PC-DARTS (Li, Khodak, Balcan & Talwalkar, ICLR 2021),
built on PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search (Xu et al., ICLR 2020).

Papers: https://arxiv.org/abs/2004.07802 (GAEA, App. C.1, C.2) and https://arxiv.org/abs/1907.05737 (PC-DARTS)
Official code: https://github.com/liamcli/gaea_release (cnn/, `eedarts`) and https://github.com/yuhuixu1993/PC-DARTS

What this file implements: a PC-DARTS supernet -- on every edge only the first 1/K of the channels go through the
candidate ops, the rest bypass, then a channel shuffle with K groups (partial channels, K = 4) -- and edge
normalisation: each node weights its incoming edges by per-node edge weights. In GAEA (`--arch-update eg`, default)
both the op weights and the edge weights live on simplices and are trained by exponentiated gradient (EG, lr 0.1):
op rows are clamped at 1e-5 and renormalised, edge weights are renormalised per node. `--arch-update softmax-adam`
runs the PC-DARTS baseline instead: logits, softmax over ops and per node over edges, Adam (lr 6e-4, wd 1e-3).
Order per step: architecture step on the architecture batch (after the warm-up epochs), then SGD on the weights.
Genotype: W = op weight x edge weight, then the standard rule (DARTS: top-2 edges per node; NB201: argmax per edge).
NAS-Bench-1Shot1 has no separate edge weights: its per-node input weights are the space's `in{b}` groups (and
`out` for the output node); here they are treated as the edge weights (EG with --edge-lr, per-node renormalisation).
1Shot1 settings (GAEA App. C.2 runs GAEA PC-DARTS there against 1Shot1's PC-DARTS): the values of GAEA's 1Shot1
fork (liamcli/nasbench-1shot1, optimizers/epc_edarts/train_search.py) and of 1Shot1's pc_darts: 100 epochs, batch
96, SGD 0.025 cosine to 0.001, 9 cells (3 per stack), warm-up 10 (eg; the fork's default) / 0 (softmax-adam, 1Shot1),
Adam 3e-4 for the PC-DARTS baseline; eg keeps the DARTS-space EG rate 0.1 (see the note at the --arch-lr default).

Reproduce GAEA PC-DARTS (DARTS space, CIFAR-10, bilevel, 50 epochs, batch 256):
    python algos/gaea_pcdarts.py
The PC-DARTS baseline in the same file:
    python algos/gaea_pcdarts.py --arch-update softmax-adam
NAS-Bench-201 with the benchmark's accuracy of the derived cell each epoch; direct search on ImageNet16-120:
    python algos/gaea_pcdarts.py --space nb201 --batch-size 64 --nb201-table ../shared/data/nb201/nb201_oracle.csv.gz
    python algos/gaea_pcdarts.py --space nb201 --batch-size 64 --dataset imagenet16-120 \
        --split-file ../shared/data/nb201/splits/imagenet-16-120-test-split.txt.gz
NAS-Bench-1Shot1 search space 3 (NB101 spec for train_eval.py --genotype):
    python algos/gaea_pcdarts.py --space nb1shot1-3 --nb101-table nasbench_only108.tfrecord
Search directly on ImageNet (PC-DARTS' protocol, GAEA's 24.0% top-1 setting; DIR/train is an ImageFolder), 8 GPUs:
    torchrun --nproc_per_node 8 algos/gaea_pcdarts.py --dataset imagenet --data-dir DIR [--arch-update softmax-adam]
  weights on 10% and architecture on 2.5% of every class (disjoint, seed 0: data.per_class_subsets; or --subset-files),
  RandomResizedCrop 224 + flip, the stride-2 stems of PC-DARTS' model_search_imagenet.py, 8 cells, C=16, K=2, global
  batch 1024, SGD lr 0.5 (5 warm-up epochs, then cosine), wd 3e-4, 50 epochs, architecture steps after epoch 35
  (PC-DARTS Adam 6e-3, GAEA EG 0.1). Retrain: torchrun ... train_eval.py --genotype runs/<run>/genotype.json --dataset imagenet
Under torchrun the processes run ONE search (weights in DDP, architecture gradients averaged over the ranks, rank 0
writes); --batch-size is the global batch.
Offline quick start on the real CIFAR-10 subset:
    python algos/gaea_pcdarts.py --space nb201 --dataset ../shared/data/images/cifar10_partial.npz --epochs 2 \
        --warmup-epochs 0 --train-subset 1024 --batch-size 64 --C 8 --layers 1
"""
from __future__ import annotations

import argparse
import functools
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

EG_CLAMP = 1e-5  # GAEA: op weights are clamped at this value before each row is renormalised
# Weight-side defaults per dataset: GAEA / PC-DARTS CIFAR-10 search; PC-DARTS train_search_imagenet.py (8 V100s: batch
# 1024 = 8 x 128, lr 0.5 with a 5-epoch linear warm-up, K = 2). `--arch-lr` / `--warmup-epochs` are set below.
CIFAR = dict(partial_k=4, epochs=50, batch_size=256, lr=0.1, lr_min=0.0, lr_warmup_epochs=0, workers=None)
ONESHOT = dict(CIFAR, epochs=100, batch_size=96, lr=0.025, lr_min=0.001)  # GAEA's 1Shot1 fork, 1Shot1's PC-DARTS
IMAGENET = dict(CIFAR, partial_k=2, batch_size=1024, lr=0.5, lr_warmup_epochs=5, workers=8)


def cosine_schedule(opt: torch.optim.Optimizer, epochs: int, lr_min: float, warmup_epochs: int):
    """Per-epoch scheduler: cosine from the optimizer's lr to lr_min over `epochs`; epochs e < W (0-based) run at
    lr x (e + 1) / W instead (PC-DARTS' ImageNet warm-up)."""
    base = opt.param_groups[0]["lr"]
    # DEVIATION: the warm-up runs at every --batch-size; train_search_imagenet.py warms up only for batch > 256 — a
    # default that does not depend on another flag (--lr-warmup-epochs 0: official at <= 256).
    # DEVIATION: the cosine is the closed form over all epochs, warm-up included (0.4878 at e = 5, lr 0.5; 4.9e-4 in the
    # last epoch). train_search_imagenet.py steps its scheduler at the start of each epoch, so on PyTorch >= 1.1 its
    # epoch e is at the value for e + 1, from the lr its warm-up left (0.4946 at e = 5; 0 last): here the phase is one
    # epoch earlier — the CIFAR searches' schedule, and the official script's own on the PyTorch <= 1.0 it was written for.
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: (e + 1) / warmup_epochs if e < warmup_epochs else
                                             (lr_min + (base - lr_min) * 0.5 * (1 + math.cos(math.pi * e / epochs))) / base)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GAEA PC-DARTS search (defaults: the GAEA paper's CIFAR-10 search).")
    p.add_argument("--space", default="darts", choices=spaces.SPACES, help="search space")
    p.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | imagenet16-120 | synthetic | path/to/file.npz"
                   " | imagenet (ImageFolder DATA_DIR/train: PC-DARTS' ImageNet search and its defaults)")
    p.add_argument("--subset-files", nargs=2, default=None, metavar=("WEIGHTS", "ARCH"), help="imagenet: image lists "
                   "(paths relative to train/, one per line) instead of the seeded per-class 10%% / 2.5%% draw")
    p.add_argument("--workers", type=data.nonneg_int, default=None, help="imagenet: loader processes per loader and rank (8; 0: load in the main process)")
    p.add_argument("--data-dir", default="./data", help="where datasets are (or are downloaded to)")
    p.add_argument("--arch-update", default="eg", choices=("eg", "softmax-adam"),
                   help="eg: GAEA (simplex weights, exponentiated gradient); softmax-adam: the PC-DARTS baseline")
    p.add_argument("--partial-k", type=data.positive_int, default=None, help="K: 1/K of each edge's channels go through the ops (4; imagenet 2)")
    p.add_argument("--single-level", action="store_true", help="ERM: weight and architecture steps both on the whole training set")
    p.add_argument("--train-portion", type=data.unit_interval, default=0.5, help="bilevel: fraction of the training set for the weights")
    p.add_argument("--split-file", default=None, help="bilevel: NB201 split file instead of --train-portion (cifar-split.txt, or cifar100- / imagenet-16-120-test-split.txt for direct search)")
    p.add_argument("--train-subset", type=data.nonneg_int, default=0, help="use only the first N training images (0 = all)")
    p.add_argument("--epochs", type=data.positive_int, default=None, help="search epochs (50; nb1shot1: 100)")
    p.add_argument("--warmup-epochs", type=data.nonneg_int, default=None, help="epochs without architecture steps (eg 10, softmax-adam 15; nb1shot1: 0; imagenet 35)")
    p.add_argument("--batch-size", type=data.positive_int, default=None, help="global batch of both steps, split over torchrun's processes (256; nb1shot1: 96; imagenet 1024)")
    p.add_argument("--C", type=data.positive_int, default=16, help="initial channels of the supernet (divisible by --partial-k)")
    p.add_argument("--layers", type=data.positive_int, default=None, help="cells: darts total (8), nb201 per stage (5), nb1shot1 per stack (3)")
    p.add_argument("--lr", type=data.positive_float, default=None, help="SGD learning rate of the weights, cosine schedule (0.1; nb1shot1: 0.025; imagenet 0.5)")
    p.add_argument("--lr-warmup-epochs", type=data.nonneg_int, default=None, help="weight lr x (e+1)/W in the first W epochs (0; imagenet 5)")
    p.add_argument("--lr-min", type=data.nonneg_float, default=None, help="final learning rate of the cosine schedule (0; nb1shot1: 0.001)")
    p.add_argument("--momentum", type=data.fraction, default=0.9, help="SGD momentum")
    p.add_argument("--wd", type=data.nonneg_float, default=3e-4, help="weight decay of the weights")
    p.add_argument("--grad-clip", type=data.positive_float, default=5.0, help="gradient-norm clip of the weights")
    p.add_argument("--arch-lr", type=data.positive_float, default=None, help="architecture learning rate (eg 0.1; softmax-adam 6e-4, nb1shot1: 3e-4, imagenet 6e-3)")
    p.add_argument("--edge-lr", type=data.positive_float, default=None, help="eg only: EG learning rate of the edge weights (default 0.1)")
    p.add_argument("--arch-betas", type=data.fraction, nargs=2, default=None, help="softmax-adam only: Adam betas (default 0.5 0.999)")
    p.add_argument("--arch-wd", type=data.nonneg_float, default=None, help="softmax-adam only: Adam weight decay (default 1e-3)")
    p.add_argument("--nb201-table", default=None, help="CSV with arch_str + accuracy columns: log the derived cell's benchmark accuracy")
    p.add_argument("--nb101-table", default=None, help="nb1shot1: nasbench_only108.tfrecord (or nasbench_full, or an NB101 CSV): log the derived cell's NB101 accuracy and test regret")
    p.add_argument("--seed", type=data.seed, default=2, help="random seed")
    p.add_argument("--device", type=data.device_name, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out-dir", type=data.out_dir, default="runs", help="results go to OUT_DIR/RUN_NAME/")
    p.add_argument("--run-name", type=data.run_name, default=None, help="default: gaea_pcdarts_{arch_update}_{space}_{dataset}_s{seed}")
    data.add_run_args(p)  # --resume, --tensorboard, --log-every, --deterministic
    args = p.parse_args(argv)
    if args.space == "enas":  # the ENAS micro cell chooses each node's inputs: there are no edges to weight
        p.error("--space enas is ASNG-NAS's ENAS micro space (inputs are choices, not edges); gaea_pcdarts.py weights the ops of fixed edges: use algos/asng.py")
    eg, imagenet, oneshot = args.arch_update == "eg", args.dataset == "imagenet", args.space.startswith("nb1shot1")
    for k, v in (IMAGENET if imagenet else ONESHOT if oneshot else CIFAR).items():  # defaults of the flags left unset
        setattr(args, k, v if getattr(args, k) is None else getattr(args, k))
    if imagenet and (args.space != "darts" or args.single_level or args.split_file or args.train_subset):
        p.error("--dataset imagenet searches the DARTS space on per-class subsets (bilevel): no --space other than darts, "
                "--single-level, --split-file or --train-subset")
    if not imagenet and (args.subset_files or args.workers is not None):
        p.error("--subset-files and --workers are for --dataset imagenet")
    data.check_search_args(args, p)
    if eg and (args.arch_betas is not None or args.arch_wd is not None):
        p.error("--arch-betas/--arch-wd configure Adam: they need --arch-update softmax-adam (EG has neither)")
    if not eg and args.edge_lr is not None:
        p.error("--edge-lr is for --arch-update eg; softmax-adam trains the edge logits with --arch-lr (as PC-DARTS)")
    # every edge has C * 2^s channels, so C % K == 0 suffices; a stride-2 skip (FactorizedReduce) needs C/K >= 2
    min_part = 2 if args.space == "darts" else 1
    if args.partial_k < 1 or args.C % args.partial_k or args.C // args.partial_k < min_part:
        p.error(f"--C {args.C} must be a multiple of --partial-k {args.partial_k} with C/K >= {min_part} on {args.space}")
    # ALGO LOGIC: ImageNet: PC-DARTS Adam 6e-3 (train_search_imagenet.py); GAEA keeps EG 0.1 (GAEA App. C)
    # DEVIATION: on nb1shot1 eg keeps 0.1 too: GAEA's 1Shot1 fork takes the EG rates from the command line (its cluster
    # script) and the value used for App. C.2 is not in the repository — 0.1 is GAEA PC-DARTS' DARTS-space value.
    args.arch_lr = args.arch_lr if args.arch_lr is not None else (0.1 if eg else 6e-3 if imagenet else 3e-4 if oneshot else 6e-4)
    args.edge_lr = args.edge_lr if args.edge_lr is not None else (0.1 if eg else None)
    args.arch_betas = tuple(args.arch_betas) if args.arch_betas is not None else (None if eg else (0.5, 0.999))
    args.arch_wd = args.arch_wd if args.arch_wd is not None else (None if eg else 1e-3)
    # DEVIATION: 10 warm-up epochs for GAEA, as GAEA's App. C.1.1 states (and the 1Shot1 fork's default); its DARTS-space
    # release (cnn/, eedarts) has none — the paper's setting. PC-DARTS: 15 (its code); 1Shot1's: 0; ImageNet: 35 (PC-DARTS').
    args.warmup_epochs = args.warmup_epochs if args.warmup_epochs is not None else (35 if imagenet else 10 if eg else 0 if oneshot else 15)
    if not 0 <= args.warmup_epochs < args.epochs:
        p.error(f"--warmup-epochs {args.warmup_epochs} must be in [0, --epochs {args.epochs}): otherwise no architecture step runs")
    return args


# ALGO LOGIC: PC-DARTS partial channels. PAPER: PC-DARTS Sec. 3.2
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, G*c, H, W) -> view (N, G, c, H, W) -> swap G and c -> flatten: channel g*c + j moves to j*G + g."""
    n, ch, h, w = x.shape
    return x.view(n, groups, ch // groups, h, w).transpose(1, 2).reshape(n, ch, h, w)


class PartialChannelEdge(nn.Module):
    """An edge that mixes its ops on the first C/K channels only; the other channels bypass (max-pooled 2x2 when the
    edge has stride 2), [mixture, bypass] are concatenated and shuffled with K groups. Same `forward(x, spec)` as
    spaces.MixedEdge. Pass as `space.supernet(..., edge=functools.partial(PartialChannelEdge, k=K))`."""

    def __init__(self, C: int, stride: int, op_names, pool_bn: bool = False, k: int = 4):
        super().__init__()
        if C % k:
            raise spaces.SpaceError(f"partial channels: {C} channels are not divisible by K={k}")
        self.k, self.part = k, C // k
        self.mixed = spaces.MixedEdge(self.part, stride, op_names, pool_bn)
        # DEVIATION: ceil_mode (PC-DARTS: floor; identical on even sizes) — so odd map sizes match the strided ops.
        self.bypass = nn.MaxPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor, spec):
        if spec is None:
            return None
        mixed = self.mixed(x[:, : self.part], spec)
        return channel_shuffle(torch.cat([mixed, self.bypass(x[:, self.part:])], dim=1), self.k)


def edge_layout(space) -> dict[str, list[tuple[int, int]]]:
    """Edge-weight groups and each one's per-node slices (of the flattened tensor)."""
    if isinstance(space, spaces.NB1Shot1Space):  # the input weights of one node per group: `out`, `in{b}`
        return {g: [(0, shape[1])] for g, shape in space.arch_shapes().items() if g != "ops"}
    return {g: list(space.node_slices) for g in space.arch_shapes()}


def segments(v: torch.Tensor, slices) -> list[torch.Tensor]:
    flat = v.reshape(-1)
    return [flat[s:e] for s, e in slices]


def per_node(v: torch.Tensor, slices, fn) -> torch.Tensor:
    """Apply fn to each node's segment of v (flattened) and put the results back in v's shape."""
    return torch.cat([fn(seg) for seg in segments(v, slices)]).view_as(v)


def init_arch(space, mode: str, device) -> tuple[dict, dict]:
    """(op params, edge params). eg: op rows uniform 1/n_ops, edges 1/k per node (k = its inputs). softmax-adam:
    logits 1e-3 * N(0, 1) for both (PC-DARTS' alphas and betas)."""
    layout, shapes = edge_layout(space), space.arch_shapes()
    op_shapes = {g: shapes[g] for g in space.ops}  # darts: normal, reduce; nb201: normal; 1Shot1: ops
    edge_shapes = {g: (shapes[g][0],) if g in space.ops else shapes[g] for g in layout}
    if mode == "softmax-adam":
        return ({g: nn.Parameter(1e-3 * torch.randn(*s, device=device)) for g, s in op_shapes.items()},
                {g: nn.Parameter(1e-3 * torch.randn(*s, device=device)) for g, s in edge_shapes.items()})
    # ALGO LOGIC: GAEA stores the weights directly on the simplex (no logits)
    alphas = {g: nn.Parameter(torch.full(s, 1.0 / s[-1], device=device)) for g, s in op_shapes.items()}
    edges = {g: nn.Parameter(per_node(torch.ones(s, device=device), layout[g], lambda seg: seg / len(seg)))
             for g, s in edge_shapes.items()}
    return alphas, edges


def mixture_weights(alphas: dict, edges: dict, layout: dict, mode: str) -> tuple[dict, dict]:
    """(op weights, edge weights). eg: the parameters as they are; softmax-adam: softmax over each edge's ops
    and over each node's incoming edges."""
    if mode == "eg":
        return dict(alphas), dict(edges)
    return ({g: F.softmax(a, dim=-1) for g, a in alphas.items()},  # PAPER: DARTS Eq. (2)
            {g: per_node(b, layout[g], functools.partial(F.softmax, dim=0)) for g, b in edges.items()})  # PAPER: PC-DARTS Sec. 3.3


def fixed_weights(alphas: dict, edges: dict, layout: dict, mode: str) -> tuple[dict, dict]:
    """mixture_weights without gradient (weight step, evaluation, logging): EG's parameters are detached too."""
    with torch.no_grad():
        return tuple({g: w.detach() for g, w in ws.items()} for ws in mixture_weights(alphas, edges, layout, mode))


def forward(model, space, x, op_w: dict, edge_w: dict) -> torch.Tensor:
    """DARTS / NB201: edge weights go in as `edge_weights`; 1Shot1: they are arch groups themselves."""
    if isinstance(space, spaces.NB1Shot1Space):
        return model(x, {**op_w, **edge_w})
    return model(x, op_w, edge_w)


class ExponentiatedGradient(torch.optim.Optimizer):
    """GAEA's EG step (mirror descent with the entropic map) on simplex parameters: p <- p * exp(-lr * grad),
    then op rows (group without `slices`): clamp at 1e-5 and divide by the row sum; edge weights (group with
    `slices`): divide by the sum over each node's incoming edges, no clamp. No momentum, no weight decay."""

    def __init__(self, groups: list[dict]):
        super().__init__(groups, defaults={"lr": 0.1, "slices": None})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.mul_(torch.exp(-group["lr"] * p.grad))  # PAPER: GAEA's EG (multiplicative) update
                if group["slices"] is None:
                    p.clamp_(min=EG_CLAMP)
                    p.div_(p.sum(dim=-1, keepdim=True))
                else:
                    p.copy_(per_node(p, group["slices"], lambda seg: seg / seg.sum()))


def make_arch_optimizer(args, alphas: dict, edges: dict, layout: dict) -> torch.optim.Optimizer:
    if args.arch_update == "softmax-adam":  # ALGO LOGIC: PC-DARTS: one Adam over alphas and betas
        return torch.optim.Adam([*alphas.values(), *edges.values()], args.arch_lr, betas=args.arch_betas,
                                weight_decay=args.arch_wd)
    return ExponentiatedGradient([{"params": list(alphas.values()), "lr": args.arch_lr}]
                                 + [{"params": [e], "lr": args.edge_lr, "slices": layout[g]} for g, e in edges.items()])


def mean_entropy(op_w: dict, edge_w: dict, layout: dict) -> dict[str, float]:
    """Mean entropy (nats) of each op group's rows and of each edge group's per-node distributions."""
    h = lambda w: -(w * w.clamp_min(1e-12).log()).sum(-1)  # noqa: E731
    out = {f"entropy_{g}": float(h(w).mean()) for g, w in op_w.items()}
    for g, e in edge_w.items():
        out[f"entropy_edges_{g}"] = float(torch.stack([h(seg / seg.sum()) for seg in segments(e, layout[g])]).mean())
    return out


def arch_step(model, space, alphas, edges, layout, mode, arch_opt, x, y) -> tuple[float, float]:
    """One architecture step (EG or Adam) on the architecture batch at the current weights (first order)."""
    arch_opt.zero_grad(set_to_none=True)
    logits = forward(model, space, x, *mixture_weights(alphas, edges, layout, mode))
    loss = F.cross_entropy(logits, y)
    loss.backward()
    # DEVIATION: no clip of the architecture gradient on any dataset; PC-DARTS' train_search_imagenet.py clips it at
    # norm 5 (its CIFAR search and GAEA do not) — one architecture update for every dataset.
    arch_opt.step()
    return loss.item(), (logits.argmax(1) == y).float().mean().item()


def weight_step(model, space, alphas, edges, layout, mode, opt, x, y, grad_clip) -> tuple[float, float]:
    """One SGD step on the supernet weights with the training batch, architecture fixed."""
    opt.zero_grad(set_to_none=True)
    op_w, edge_w = fixed_weights(alphas, edges, layout, mode)
    logits = forward(model, space, x, op_w, edge_w)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.item(), (logits.argmax(1) == y).float().mean().item()


def combined_weights(space, alphas, edges, layout, mode) -> dict:
    """W[e, k] = op weight x edge weight (PC-DARTS / GAEA genotype); 1Shot1: op and input weights."""
    op_w, edge_w = fixed_weights(alphas, edges, layout, mode)
    if isinstance(space, spaces.NB1Shot1Space):
        return {**op_w, **edge_w}
    return {g: w * edge_w[g].unsqueeze(-1) for g, w in op_w.items()}  # ALGO LOGIC: op weight x edge weight


def derive_genotype(space, alphas, edges, layout, mode):
    """DARTS space: top-2 incoming edges per node by their best non-`none` combined weight; NB201: argmax per edge;
    1Shot1: argmax op per node and top-k inputs (spaces.*Space.derive)."""
    return space.derive(combined_weights(space, alphas, edges, layout, mode))


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    rank, world, device = data.init_distributed(args.device)  # torchrun: one process per GPU, one search
    # everything that can fail on bad input happens before the run directory exists
    space = spaces.get_space(args.space)
    batch, imagenet = data.per_rank_batch(args.batch_size, world), args.dataset == "imagenet"
    if imagenet:  # PC-DARTS: 10% of every class for the weights, 2.5% for the architecture, loader workers
        # DEVIATION: a seeded per-class draw (or --subset-files) — PC-DARTS' lists, drawn offline by an unreleased script, are not public
        paired, test_loader, info = data.imagenet_search_loaders(
            args.data_dir, batch, args.seed, args.workers, rank, world, subset_files=args.subset_files,
            pin_memory=device.type == "cuda")
    else:
        paired, test_loader, info = data.search_loaders(
            args.dataset, args.data_dir, batch, bilevel=not args.single_level, seed=args.seed, rank=rank, world=world,
            train_portion=args.train_portion, split_file=args.split_file, train_subset=args.train_subset)
    table = data.load_table(args.nb201_table) if args.nb201_table else None
    # EXTENSION: the PC-DARTS baseline (softmax-adam) on nb201, which neither the PC-DARTS nor the NB201 paper ran
    nb101 = data.load_nb101(args.nb101_table) if args.nb101_table else None
    edge = functools.partial(PartialChannelEdge, k=args.partial_k)
    stem = {"stem": "imagenet"} if imagenet else {}  # PC-DARTS ImageNet: three stride-2 convolutions, 224 -> 28 px
    # DEVIATION: under torchrun every rank's BatchNorm uses the statistics of its own shard (batch / ranks images), not
    # of the global batch, and rank 0's running statistics (DDP broadcasts buffers) — plain DDP, per-GPU statistics as
    # in PC-DARTS' nn.DataParallel ImageNet search; SyncBatchNorm would add an all-reduce per BatchNorm layer.
    model = data.wrap_ddp(space.supernet(args.C, args.layers, info.num_classes, in_channels=info.channels, edge=edge, **stem).to(device), device)
    mode, layout = args.arch_update, edge_layout(space)
    alphas, edges = init_arch(space, mode, device)
    opt = torch.optim.SGD(model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.wd)
    sched = cosine_schedule(opt, args.epochs, args.lr_min, args.lr_warmup_epochs)
    arch_opt = make_arch_optimizer(args, alphas, edges, layout)
    data.average_grads_before_step(arch_opt)  # torchrun: the global batch's gradient on every rank
    gen = torch.Generator().manual_seed(args.seed)
    augment, test_augment = data.Augment(info, True, generator=gen, shard=(rank, world)), data.Augment(info, False)

    run = data.Run(args, f"gaea_pcdarts_{mode}_{args.space}_{Path(args.dataset).stem}_s{args.seed}", argv)
    # everything the next epoch depends on (checkpointed each epoch; data.py adds the torch/numpy/python RNGs)
    state = {"model": model, "alphas": alphas, "edges": edges, "opt": opt, "sched": sched, "arch_opt": arch_opt,
             "augment_gen": gen, "data_order": paired}
    for epoch in range(run.restore(state), args.epochs + 1):
        t0, sums = time.time(), {"train_loss": 0.0, "train_acc": 0.0, "arch_loss": 0.0, "arch_acc": 0.0}
        search = epoch > args.warmup_epochs  # ALGO LOGIC: warm-up epochs train the weights only
        for (x, y), (xa, ya) in run.steps(paired, epoch, sums):
            x, y = augment(x.to(device)), y.to(device)
            xa, ya = augment(xa.to(device)), ya.to(device)
            if search:  # ALGO LOGIC: architecture step first, then weight step (PC-DARTS' and GAEA's order)
                with data.local_grads(model):  # torchrun: the weight gradients of this step are not needed
                    arch_loss, arch_acc = arch_step(model, space, alphas, edges, layout, mode, arch_opt, xa, ya)
                sums["arch_loss"], sums["arch_acc"] = sums["arch_loss"] + arch_loss, sums["arch_acc"] + arch_acc
            train_loss, train_acc = weight_step(model, space, alphas, edges, layout, mode, opt, x, y, args.grad_clip)
            sums["train_loss"], sums["train_acc"] = sums["train_loss"] + train_loss, sums["train_acc"] + train_acc
        sched.step()
        genotype = derive_genotype(space, alphas, edges, layout, mode)
        keep = sums if search else {k: v for k, v in sums.items() if k.startswith("train")}
        metrics = {"epoch": epoch, **{k: v / len(paired) for k, v in keep.items()}, "arch_steps": len(paired) if search else 0,
                   "lr": sched.get_last_lr()[0], "epoch_time_s": time.time() - t0, "genotype": str(genotype)}
        metrics.update(mean_entropy(*fixed_weights(alphas, edges, layout, mode), layout))
        metrics.update(data.oracle_metrics(table, genotype, args.dataset))
        metrics.update(data.nb101_metrics(nb101, genotype, args.space))
        run.end_epoch(state, metrics, combined_weights(space, alphas, edges, layout, mode),
                      show=("train_loss", "train_acc", "arch_acc", "entropy_normal", "oracle_test"))

    op_w, edge_w = fixed_weights(alphas, edges, layout, mode)
    arch = ({**op_w, **edge_w},) if isinstance(space, spaces.NB1Shot1Space) else (op_w, edge_w)  # as forward()
    # DEVIATION: imagenet: supernet_test_acc once, at the end, on the architecture subset with Resize + CenterCrop; the
    # official script validates in its last 3 epochs with the training augmentation — a score without random crops.
    test_loss, test_acc = data.evaluate(model, test_loader, test_augment, device, *arch)
    # DEVIATION: the last epoch's genotype is reported; GAEA's bilevel runs pick the best-validation epoch's — no
    # validation pass per epoch (PC-DARTS' own validates in its last epoch only); metrics.jsonl has every epoch's.
    genotype = derive_genotype(space, alphas, edges, layout, mode)
    gap = spaces.discretisation_check(space, genotype, lambda w: data.evaluate(  # GAEA Sec. 4.1: the derived cell, same weights
        model, test_loader, test_augment, device, w, {g: v.sum(-1) for g, v in w.items()}), device)
    result = {"algorithm": "gaea_pcdarts" if mode == "eg" else "pcdarts", "search_space": args.space,
              "genotype": genotype.to_json(), "genotype_str": str(genotype), "arch_update": mode,
              "supernet_test_acc": test_acc, "supernet_test_loss": test_loss, **gap, "search_time_s": time.time() - run.start,
              "alphas": {g: a.detach().cpu().tolist() for g, a in alphas.items()},
              "edges": {g: e.detach().cpu().tolist() for g, e in edges.items()}}
    return run.finish(result, genotype, spaces.genotype_to_dot(genotype))


if __name__ == "__main__":
    data.cli(main)
