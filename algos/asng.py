"""ASNG-NAS: Adaptive Stochastic Natural Gradient Method for One-Shot Neural Architecture Search
(Akimoto, Shirakawa, Yoshinari, Uchida, Saito & Nishida, ICML 2019).

Paper: https://arxiv.org/abs/1905.08537 -- official code: https://github.com/shirakawas/ASNG-NAS

What this file implements: independent categorical variables with probabilities theta, plus (inpainting) integer
variables, each a Gaussian in expectation parameters (E z, E z^2), sampled in mirrored pairs and rounded. Each step
(1) trains the supernet weights by SGD on the mean loss of lambda=2 sampled architectures (only the sampled child
runs); (2) ranks lambda=2 fresh samples on a validation batch (+1 / -1; a tie skips the update), moves theta along the
natural gradient T(x) - theta by a fixed Fisher length delta (one norm over both parts), floors the categoricals at
theta_min, clips the Gaussians, and adapts delta from the accumulated normalised natural gradients (SNR threshold
alpha = 1.5). The final architecture is the mode of theta. The paper's spaces (spaces.EnasSpace, spaces.CAESpace) are
their own variables; other papers' spaces (darts, the default; nb201; nb1shot1-{1,2,3}) get ArchVariables.

The paper's CIFAR-10 search (ENAS micro space, 100 epochs, batch 64, cutout 16) and its retraining (C by binary search
for <= 4.0M parameters, 600 epochs, batch 80):
    python algos/asng.py --space enas && python train_eval.py --genotype runs/asng_enas_cifar10_s2 --params-limit 4.0
The paper's inpainting search (CAE space, CelebA at DATA_DIR/celebA/{train,test}, 64 px, 50k iterations, batch 16)
and its retraining with Adam 1e-3:
    python algos/asng.py --task inpainting --dataset celeba --data-dir ~/data --mask center
    python train_eval.py --genotype runs/asng_inpainting_center_celeba_s2 --dataset celeba --data-dir ~/data
Offline quick start on the CIFAR-10 subset:
    python algos/asng.py --space nb201 --dataset ../shared/data/images/cifar10_partial.npz --epochs 2 --C 8 --layers 1
"""
from __future__ import annotations

import argparse
import itertools
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

# EXTENSION: ASNG on 1Shot1, which no paper ran: its one-shot setting (optimizers/*/train_search.py: batch 96, cosine
# to 0.001, no cutout) and ASNG's 100 epochs. Inpainting: main_inpainting_int.py (batch 16, SGD 0.025, no decay).
DEFAULTS = {"paper": dict(batch_size=64, lr_min=0.0, cutout=16, wd=3e-4, dataset="cifar10"),
            "nb1shot1": dict(batch_size=96, lr_min=0.001, cutout=0, wd=3e-4, dataset="cifar10"),
            "inpainting": dict(batch_size=16, lr_min=0.0, cutout=0, wd=0.0, dataset="celeba")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ASNG-NAS search (defaults: the paper's CIFAR-10 / inpainting settings).")
    p.add_argument("--task", default="classification", choices=("classification", "inpainting"), help="the paper's two NAS tasks")
    p.add_argument("--space", default="darts", choices=spaces.SPACES, help="classification search space (enas: the paper's)")
    p.add_argument("--dataset", default=None, help="cifar10 | cifar100 | imagenet16-120 | synthetic | path/to/file.npz; inpainting also celeba | svhn (default)")
    p.add_argument("--data-dir", default="./data", help="where datasets are (or are downloaded to)")
    p.add_argument("--train-portion", type=data.unit_interval, default=0.5, help="bilevel: fraction of the training set for the weights")
    p.add_argument("--split-file", default=None, help="bilevel: NB201 split file instead of --train-portion")
    p.add_argument("--train-subset", type=data.nonneg_int, default=0, help="use only the first N training images (0 = all)")
    p.add_argument("--nb201-table", default=None, help="CSV with arch_str + accuracy columns: log the derived cell's benchmark accuracy")
    p.add_argument("--nb101-table", default=None, help="nb1shot1: nasbench_only108.tfrecord (or nasbench_full, or an NB101 CSV): log the derived cell's NB101 accuracy and test regret")
    p.add_argument("--single-level", action="store_true", help="theta steps on training batches instead of a held-out half")
    p.add_argument("--epochs", type=data.positive_int, default=100, help="search epochs (classification)")
    p.add_argument("--iters", type=data.positive_int, default=50000, help="inpainting: weight steps (rounded up to whole epochs)")
    p.add_argument("--batch-size", type=data.positive_int, default=None, help="batch size of both steps (64; nb1shot1: 96; inpainting: 16)")
    p.add_argument("--C", type=data.positive_int, default=16, help="initial channels of the supernet")
    p.add_argument("--layers", type=data.positive_int, default=None, help="cells: darts / enas total (8), nb201 per stage (5), nb1shot1 per stack (3)")
    p.add_argument("--mask", default="center", choices=data.INPAINT_MASKS, help="inpainting: the corruption")
    p.add_argument("--image-size", type=data.int_at_least(8), default=64, help="inpainting: images resized to this (px)")
    p.add_argument("--ch-range", type=data.positive_int, nargs=2, default=(64, 256), help="inpainting: channel range of a layer")
    p.add_argument("--lr", type=data.positive_float, default=0.025, help="SGD learning rate of the weights (cosine schedule)")
    p.add_argument("--lr-min", type=data.nonneg_float, default=None, help="final learning rate of the cosine schedule (0; nb1shot1: 0.001)")
    p.add_argument("--momentum", type=data.fraction, default=0.9, help="SGD momentum")
    p.add_argument("--wd", type=data.nonneg_float, default=None, help="weight decay of the weights (3e-4; inpainting: 0)")
    p.add_argument("--grad-clip", type=data.positive_float, default=5.0, help="gradient-norm clip of the weights")
    p.add_argument("--cutout", type=data.nonneg_int, default=None, help="cutout length on search batches, 0 = off (16; nb1shot1: 0)")
    p.add_argument("--lam", type=data.int_at_least(2), default=2, help="architectures sampled per weight step and per theta step (lambda)")
    p.add_argument("--alpha", type=data.positive_float, default=1.5, help="SNR threshold of the step-size adaptation")
    p.add_argument("--delta-init", type=data.positive_float, default=1.0, help="initial Fisher length delta of the theta step")
    p.add_argument("--seed", type=data.seed, default=2, help="random seed")
    p.add_argument("--device", type=data.device_name, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out-dir", type=data.out_dir, default="runs", help="results go to OUT_DIR/RUN_NAME/")
    p.add_argument("--run-name", type=data.run_name, default=None, help="default: asng_{space}_{dataset}_s{seed} (asng_inpainting_{mask}_...)")
    data.add_run_args(p)  # --resume, --tensorboard, --log-every, --deterministic
    args = p.parse_args(argv)
    kind = "inpainting" if args.task == "inpainting" else "nb1shot1" if args.space.startswith("nb1shot1") else "paper"
    for k, v in DEFAULTS[kind].items():
        setattr(args, k, v if getattr(args, k) is None else getattr(args, k))
    data.check_search_args(args, p)
    if args.task == "inpainting" and (args.single_level or args.split_file or args.ch_range[0] >= args.ch_range[1]):
        p.error("--task inpainting: the weights and theta use the two halves of the images; --ch-range needs min < max")
    return args


# ============================================================ the distribution and its ASNG update ====
def ranking_utility(losses, rho: float = 0.25) -> torch.Tensor:
    """Ranking-based utilities in the order of `losses` (minimised): the best ceil(lambda*rho) get +1/mu, the worst
    as many -1/mu, the rest 0; tied losses share the mean of their ranks' values. lambda = 2: (+1, -1), a tie (0, 0)."""
    f = torch.as_tensor(losses, dtype=torch.float64)
    lam, mu = len(f), math.ceil(len(f) * rho)
    order = torch.argsort(f, stable=True)
    by_rank = torch.zeros(lam, dtype=torch.float64)
    by_rank[:mu], by_rank[lam - mu:] = 1.0 / mu, -1.0 / mu
    fs, u_sorted, start = f[order], torch.empty(lam, dtype=torch.float64), 0
    for r in range(1, lam + 1):
        # DEVIATION: exact equality is always a tie — the official relative test misses ties of losses <= 0.
        if r == lam or fs[r] - fs[r - 1] > 1e-14 * fs[r - 1].abs():
            u_sorted[start:r] = by_rank[start:r].mean()
            start = r
    return u_sorted[torch.argsort(order)]  # back to the order of `losses`


def fisher_sqrt(G: torch.Tensor, theta: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """F^(1/2) G per variable in the (K_i - 1)-dim expectation parameters (the last category is dependent), closed
    form: s_i = G_i,<K/sqrt(theta_i,<K) + sqrt(theta_i,<K) * sum(G_i,<K) / (theta_iK + sqrt(theta_iK)).
    Returned zero-padded as (D, K_max); ||s||^2 equals sum_ik G_ik^2 / theta_ik (the Fisher norm)."""
    last = (K - 1)[:, None]
    lead = torch.arange(G.shape[1])[None] < last  # the K_i - 1 free entries of each row
    theta_K = theta.gather(1, last)
    root = theta.clamp_min(torch.finfo(theta.dtype).tiny).sqrt()
    return torch.where(lead, G / root + root * (G * lead).sum(1, keepdim=True) / (theta_K + theta_K.sqrt()), 0.0)


def gaussian_fisher_sqrt(G: torch.Tensor, theta_int: torch.Tensor) -> torch.Tensor:
    """F^(1/2) G (2, D_int) for Gaussians in expectation parameters: F = Cov[(z, z^2)]^-1, Cov = sigma^2 [[1, 2m], [2m,
    4m^2 + 2 sigma^2]], its symmetric root from the 2x2 eigen-decomposition (as asng_int.py); ||.||^2 = G^T F G."""
    m, var = theta_int[0], theta_int[1] - theta_int[0] ** 2
    cov = var[:, None, None] * torch.stack([torch.ones_like(m), 2 * m, 2 * m, 4 * m ** 2 + 2 * var], -1).view(-1, 2, 2)
    w, V = torch.linalg.eigh(cov)
    return (V @ torch.diag_embed(w.rsqrt()) @ V.transpose(-1, -2) @ G.T[..., None])[..., 0].T


def restrict_range(theta: torch.Tensor, K: torch.Tensor, theta_min: torch.Tensor) -> torch.Tensor:
    """Floor valid entries at theta_min_i, take the excess from the part above the floor in proportion, renormalise."""
    mask = torch.arange(theta.shape[1])[None] < K[:, None]
    lo = theta_min[:, None]
    th = torch.where(mask, torch.maximum(theta, lo), 0.0)
    total = th.sum(1, keepdim=True)
    room = (total - K[:, None] * lo).clamp_min(torch.finfo(theta.dtype).tiny)
    th = torch.where(mask, th - (total - 1.0) * (th - lo) / room, 0.0)
    return th / th.sum(1, keepdim=True)


class ASNG:
    """D categoricals (theta: a zero-padded (D, K_max) float64 matrix, init uniform) and D_int integers in [lo, hi],
    Gaussians held as theta_int = (E z, E z^2) (2, D_int), init m = (lo+hi)/2, sigma = (hi-lo)/2 (asng_int.py). State:
    Delta (delta = delta_init / Delta), the accumulated normalised natural gradient (s, s_int), its noise level gamma."""

    def __init__(self, categories, alpha: float = 1.5, delta_init: float = 1.0, integers=()):
        self.K = torch.tensor(list(categories), dtype=torch.long)
        ranges = torch.tensor([list(r) for r in integers], dtype=torch.float64).reshape(-1, 2)
        self.lo, self.hi = ranges[:, 0], ranges[:, 1]
        if len(self.K) == 0 or (self.K < 1).any() or (self.hi <= self.lo).any():
            raise ValueError(f"categories must be positive and integer ranges lo < hi, got {list(categories)}, {list(integers)}")
        self.mask = torch.arange(int(self.K.max()))[None] < self.K[:, None]
        self.theta = self.mask.double() / self.K[:, None]
        self.d_valid = int((self.K > 1).sum())
        # ALGO LOGIC: range restriction theta_min = 1 / (D_valid (K_i - 1)), the official code's margin
        self.theta_min = torch.where(self.K > 1, 1.0 / (max(self.d_valid, 1) * (self.K - 1).clamp_min(1).double()), 0.0)
        if (self.K * self.theta_min > 1.0 + 1e-12).any():
            raise ValueError(f"theta floor infeasible with D_valid = {self.d_valid}: needs D_valid >= K/(K-1)")
        self.std_min, self.std_max = 0.25, (self.hi - self.lo) / 2  # official clipping of sigma
        self.theta_int = torch.stack([(self.lo + self.hi) / 2, ((self.lo + self.hi) / 2) ** 2 + self.std_max ** 2])
        self.N = int((self.K - 1).sum()) + 2 * len(self.lo)  # dimension of the expectation parameters
        self.alpha, self.delta_init, self.Delta, self.gamma = alpha, delta_init, 1.0, 0.0
        self.s, self.s_int = torch.zeros_like(self.theta), torch.zeros_like(self.theta_int)

    @property
    def delta(self) -> float:
        return self.delta_init / self.Delta

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """One architecture's categoricals: a category index per variable (inverse CDF, one uniform per variable)."""
        u = torch.rand(len(self.K), generator=generator, dtype=torch.float64)
        return torch.minimum((self.theta.cumsum(1) <= u[:, None]).sum(1), self.K - 1)

    def sample_many(self, lam: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """lam architectures: (lam, D) categories and (lam, D_int) continuous integer samples, mirrored in pairs
        (m + sigma xi, m - sigma xi); round them (after clipping) to use them."""
        cat, d = torch.stack([self.sample(generator) for _ in range(lam)]), len(self.lo)
        if d == 0:
            return cat, torch.zeros(lam, 0, dtype=torch.float64)
        xi = torch.randn((lam + 1) // 2, d, generator=generator, dtype=torch.float64)
        sd = (self.theta_int[1] - self.theta_int[0] ** 2).clamp_min(0).sqrt()
        return cat, (self.theta_int[0] + sd * torch.stack([xi, -xi], 1).reshape(-1, d))[:lam]

    def mode(self) -> torch.Tensor:  # argmax per categorical (the integers' mode: theta_int[0], the means)
        return self.theta.argmax(1)

    def convergence(self) -> float:  # mean over categoricals of max_k theta_ik (1 = deterministic)
        return float(self.theta.max(1).values.mean())

    def update(self, samples: torch.Tensor, losses, z: torch.Tensor | None = None) -> bool:
        """samples (lambda, D) category indices, z (lambda, D_int) the continuous integer samples, losses (lambda,).
        Returns False when the update is skipped (a tie, or no direction)."""
        u = ranking_utility(losses)
        if (u == 0).all():  # ALGO LOGIC: a tie carries no ranking information: nothing changes (theta, s, gamma, Delta)
            return False
        # PAPER: stochastic natural gradient, G = 1/lambda sum_j u_j (T(x_j) - theta); T = one-hot, (z, z^2)
        T = F.one_hot(samples, self.theta.shape[1]).double()
        G = torch.where(self.mask, (u[:, None, None] * (T - self.theta)).mean(0), 0.0)
        z = torch.zeros(len(u), 0, dtype=torch.float64) if z is None else torch.as_tensor(z, dtype=torch.float64)
        G_int = (u[:, None, None] * (torch.stack([z, z ** 2], 1) - self.theta_int)).mean(0)
        if (G.abs() < 1e-18).all() and (G_int.abs() < 1e-18).all():  # identical samples (the official code skips too)
            return False
        s_new, s_new_int = fisher_sqrt(G, self.theta, self.K), gaussian_fisher_sqrt(G_int, self.theta_int)
        # DEVIATION: no +1e-9 in the norm of the step (asng_int.py adds it; a relative change below 1e-9)
        norm = math.sqrt(float(s_new.square().sum() + s_new_int.square().sum()))  # ||G||_F over both parts
        delta, beta = self.delta, self.delta / math.sqrt(self.N)
        # PAPER: theta <- theta + delta G / ||G||_F: a step of Fisher length delta (effective lr delta/||G||_F)
        self.theta = restrict_range(self.theta + delta * G / norm, self.K, self.theta_min)
        m, m2 = self.theta_int + delta * G_int / norm  # then the mean into [lo, hi], sigma into [1/4, (hi-lo)/2]
        m = torch.minimum(torch.maximum(m, self.lo), self.hi)
        self.theta_int = torch.stack([m, torch.minimum(torch.maximum(m2, m ** 2 + self.std_min ** 2), m ** 2 + self.std_max ** 2)])
        # PAPER: step-size adaptation, s <- (1-beta) s + sqrt(beta(2-beta)) F^(1/2)G/||G||_F,
        # gamma <- (1-beta)^2 gamma + beta(2-beta), Delta <- Delta exp(beta (gamma - ||s||^2 / alpha))
        self.s = (1 - beta) * self.s + math.sqrt(beta * (2 - beta)) * s_new / norm
        self.s_int = (1 - beta) * self.s_int + math.sqrt(beta * (2 - beta)) * s_new_int / norm
        self.gamma = (1 - beta) ** 2 * self.gamma + beta * (2 - beta)
        self.Delta *= math.exp(beta * (self.gamma - float(self.s.square().sum() + self.s_int.square().sum()) / self.alpha))
        return True


# ===================================================================== variables <-> architectures of a space ====
class ArchVariables:
    """The categorical variables of another paper's space and the decoding of one sample into supernet specs
    (`spaces.MixedEdge`: int = only that op; None = edge not computed; 1Shot1 inputs: 0/1 rows) and a genotype.
    DARTS (ALGO LOGIC): per cell type and node i, a variable over the C(2+i, 2) unordered input pairs (node 0 has
    one pair, so no variable) and op_a / op_b over the ops (no `none`) for the lower / higher input of the pair."""
    # EXTENSION: ASNG on DARTS, NB201, 1Shot1. A DARTS cell's two equal inputs would be one edge (14 edges, all nodes
    # concatenated): the pair keeps them distinct, as in every DARTS genotype; the paper's ENAS space lets them coincide.

    def __init__(self, space):
        self.space, self.names, self.categories, self.groups, self.sets, self.integers = space, [], [], [], {}, ()
        if isinstance(space, spaces.NB201Space):
            for e in range(space.n_edges):
                self._add("normal", f"edge{e}", len(space.ops["normal"]))
            return
        if isinstance(space, spaces.NB1Shot1Space):
            for b in range(1, space.n + 1):
                self._add("ops", f"node{b}/op", len(space.ops["ops"]))
            for g, k in space.parents().items():  # the k-subsets of the candidate inputs, k = the parents allowed
                self.sets[g] = list(itertools.combinations(range(space.arch_shapes()[g][1]), k))
                self._add(g, "inputs", len(self.sets[g]))
            return
        if not isinstance(space, spaces.DartsSpace):
            raise spaces.SpaceError(f"ASNG supports the enas, darts, nb201, nb1shot1 and cae spaces, not {space.name}")
        if any("none" in ops for ops in space.ops.values()):
            raise spaces.SpaceError("ASNG's DARTS variables choose inputs explicitly: build the space without `none`")
        self.pairs = [list(itertools.combinations(range(end - start), 2)) for start, end in space.node_slices]
        self.nodes = []  # (group, node, pair variable or None, op_a variable, op_b variable)
        for g, ops in space.ops.items():
            for i in range(len(space.node_slices)):
                v_pair = self._add(g, f"node{i}/pair", len(self.pairs[i])) if len(self.pairs[i]) > 1 else None
                self.nodes.append((g, i, v_pair, self._add(g, f"node{i}/op_a", len(ops)), self._add(g, f"node{i}/op_b", len(ops))))

    def _add(self, group: str, name: str, k: int) -> int:
        self.names.append(f"{group}/{name}")
        self.categories.append(k)
        self.groups.append(group)
        return len(self.categories) - 1

    def decode(self, idx, z=None):
        """A sample (one index per variable) -> the supernet's architecture argument; normal and reduce use their own
        variables."""
        idx = [int(k) for k in idx]
        if isinstance(self.space, spaces.NB201Space):
            return {"normal": idx}
        if isinstance(self.space, spaces.NB1Shot1Space):  # ops: indices; inputs: a 0/1 row marking the sampled set
            arch = {"ops": idx[:self.space.n]}
            for v, g in enumerate(self.groups[self.space.n:], start=self.space.n):
                arch[g] = torch.zeros(1, self.space.arch_shapes()[g][1]).index_fill_(1, torch.tensor(self.sets[g][idx[v]]), 1.0)
            return arch
        arch = {g: [None] * self.space.n_edges for g in self.space.ops}
        for g, i, v_pair, v_a, v_b in self.nodes:
            j_a, j_b = self.pairs[i][0 if v_pair is None else idx[v_pair]]
            start = self.space.node_slices[i][0]
            arch[g][start + j_a], arch[g][start + j_b] = idx[v_a], idx[v_b]
        return arch

    def genotype(self, idx, z=None):
        """The space's standard derivation on the sample as 0/1 weights: it keeps exactly the sampled choices."""
        weights = {}
        for g, spec in self.decode(idx).items():
            k_ops = len(self.space.ops.get(g, ()))
            weights[g] = spec if torch.is_tensor(spec) else torch.stack(
                [torch.zeros(k_ops) if k is None else F.one_hot(torch.tensor(k), k_ops).float() for k in spec])
        return self.space.derive(weights)


# ================================================================================================ the steps ====
def cross_entropy(out, y) -> tuple[torch.Tensor, float]:
    return F.cross_entropy(out, y), (out.argmax(1) == y).float().mean().item()


def weight_step(model, asng, variables, opt, x, y, grad_clip, lam, gen, loss_fn=cross_entropy) -> tuple[float, float]:
    """SGD on the mean loss of `lam` architectures sampled from theta, all on the same batch (Monte-Carlo gradient of
    E_theta[L(W, x)]); each forward computes only the sampled child."""
    opt.zero_grad(set_to_none=True)
    loss_sum, score_sum = 0.0, 0.0
    for idx, z in zip(*asng.sample_many(lam, gen)):
        loss, score = loss_fn(model(x, variables.decode(idx, z)), y)
        # DEVIATION: a backward of loss/lam per sample (official: of the mean, once): same gradient, one graph in memory
        (loss / lam).backward()
        loss_sum, score_sum = loss_sum + loss.item(), score_sum + score
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss_sum / lam, score_sum / lam


@torch.no_grad()
def theta_step(model, asng, variables, x, y, lam, gen, loss_fn=cross_entropy) -> tuple[float, float, bool]:
    """`lam` fresh samples on the validation batch (train mode: batch statistics), then the ASNG update of theta."""
    samples, z = asng.sample_many(lam, gen)
    losses, scores = zip(*[loss_fn(model(x, variables.decode(idx, zj)), y) for idx, zj in zip(samples, z)])
    losses = [loss.item() for loss in losses]
    return sum(losses) / lam, sum(scores) / lam, asng.update(samples, losses, z)


def derive_genotype(asng: ASNG, variables: ArchVariables):  # the mode of theta (Gaussian means rounded)
    return variables.genotype(asng.mode(), asng.theta_int[0])


def main(argv=None) -> dict:
    args = parse_args(argv)
    data.refuse_torchrun("asng.py has no multi-process search: run it as one process, not under torchrun")
    torch.manual_seed(args.seed)
    device = data.resolve_device(args.device)
    # everything that can fail on bad input happens before the run directory exists
    gen, inpaint = torch.Generator().manual_seed(args.seed), args.task == "inpainting"
    if inpaint:
        space = spaces.CAESpace(ch_range=tuple(args.ch_range))
        paired, test_loader, channels = data.inpainting_loaders(args.dataset, args.data_dir, args.batch_size,
                                                                args.seed, args.image_size, args.train_subset)
        # DEVIATION: the official loop counts iterations; ours rounds --iters up to whole (resumable) epochs
        args.epochs, steps, info = math.ceil(args.iters / len(paired)), len(paired), None
        # DEVIATION: one mask per batch for all lambda samples (official: a fresh random mask per forward)
        prep = lambda x, y, xv, yv: (*data.inpainting_batch(x, args.mask, gen, device), *data.inpainting_batch(xv, args.mask, gen, device))
        model = space.supernet(channels)
    else:
        # ALGO LOGIC: DARTS ops without `none` (inputs are chosen by the pair variables); NB201 keeps `none`
        space = spaces.get_space(args.space, ops=[o for o in spaces.DARTS_OPS if o != "none"] if args.space == "darts" else None)
        paired, test_loader, info = data.search_loaders(
            args.dataset, args.data_dir, args.batch_size, bilevel=not args.single_level, seed=args.seed,
            train_portion=args.train_portion, split_file=args.split_file, train_subset=args.train_subset)
        augment, steps = data.Augment(info, train=True, cutout=args.cutout, generator=gen), 1
        prep = lambda x, y, xv, yv: (augment(x.to(device)), y.to(device), augment(xv.to(device)), yv.to(device))
        model = space.supernet(args.C, args.layers, info.num_classes, in_channels=info.channels)
    variables = space if isinstance(space, (spaces.EnasSpace, spaces.CAESpace)) else ArchVariables(space)
    asng = ASNG(variables.categories, args.alpha, args.delta_init, variables.integers)
    opt = torch.optim.SGD(model.to(device).parameters(), args.lr, momentum=args.momentum, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs * steps, eta_min=args.lr_min)
    table, nb101 = (args.nb201_table and data.load_table(args.nb201_table)), (args.nb101_table and data.load_nb101(args.nb101_table))
    arch_gen = torch.Generator().manual_seed(args.seed + 1)
    reconstruction = lambda out, y: (F.mse_loss(out, y), data.psnr(out.detach(), y).mean().item())  # loss, PSNR (dB)
    loss_fn, score = (reconstruction, "psnr") if inpaint else (cross_entropy, "acc")
    run = data.Run(args, f"asng_{f'inpainting_{args.mask}' if inpaint else args.space}_{Path(args.dataset).stem}_s{args.seed}", argv)
    state = {"model": model, "asng": vars(asng), "opt": opt, "sched": sched,  # what the next epoch depends on
             "augment_gen": gen, "sample_gen": arch_gen, "data_order": paired}  # (checkpointed; data.py adds the RNGs)
    for epoch in range(run.restore(state), args.epochs + 1):
        t0, skipped, sums = time.time(), 0, {"train_loss": 0.0, f"train_{score}": 0.0, "valid_loss": 0.0, f"valid_{score}": 0.0}
        for (x, y), (xv, yv) in run.steps(paired, epoch, sums):
            x, y, xv, yv = prep(x, y, xv, yv)
            # ALGO LOGIC: W step on sampled architectures first, then the theta step on fresh samples
            train = weight_step(model, asng, variables, opt, x, y, args.grad_clip, args.lam, arch_gen, loss_fn)
            *valid, updated = theta_step(model, asng, variables, xv, yv, args.lam, arch_gen, loss_fn)
            skipped += not updated
            sums.update({k: sums[k] + v for k, v in zip(sums, (*train, *valid))})  # in place: run.steps reads it
            if inpaint:  # PAPER: cosine schedule per iteration (inpainting), per epoch (classification)
                sched.step()
        if not inpaint:
            sched.step()
        genotype = derive_genotype(asng, variables)
        metrics = {"epoch": epoch, **{k: v / len(paired) for k, v in sums.items()}, "lr": sched.get_last_lr()[0],
                   "theta_convergence": asng.convergence(), "delta": asng.delta, "theta_updates_skipped": skipped,
                   "epoch_time_s": time.time() - t0, "genotype": str(genotype)}
        rows = {g: asng.theta[[v for v, gv in enumerate(variables.groups) if gv == g]] for g in dict.fromkeys(variables.groups)}
        metrics.update({f"entropy_{g}": h for g, h in spaces.mean_entropy(rows).items()})  # zero padding adds 0
        metrics.update({**data.oracle_metrics(table, genotype, args.dataset), **data.nb101_metrics(nb101, genotype, args.space)})
        run.end_epoch(state, metrics, {"theta": asng.theta}, show=("train_loss", "theta_convergence", "delta", "oracle_test"))

    mode = (asng.mode(), asng.theta_int[0].clone())
    genotype = variables.genotype(*mode)
    result = {"algorithm": "asng", "task": args.task, "search_space": space.name, "genotype": genotype.to_json(),
              "genotype_str": str(genotype), "search_time_s": time.time() - run.start,
              "delta": asng.delta, "theta_convergence": asng.convergence(),
              "theta": {n: asng.theta[v, :k].tolist() for v, (n, k) in enumerate(zip(variables.names, variables.categories))}}
    if inpaint:  # the supernet with the mode architecture on the test images (the official evaluate())
        model.eval()
        result.update({f"supernet_{k}": v for k, v in data.evaluate_inpainting(
            lambda x: model(x, variables.decode(*mode)), test_loader, args.mask, device).items()})
        result.update(theta_int_mean=mode[1].tolist(), theta_int_std=(asng.theta_int[1] - mode[1] ** 2).sqrt().tolist(),
                      params=spaces.count_parameters(spaces.CAENetwork(genotype=genotype, in_channels=model.out.out_channels)))
    else:
        result.update(zip(("supernet_test_loss", "supernet_test_acc"), data.evaluate(model, test_loader, data.Augment(info, train=False), device, variables.decode(mode[0]))))
    return run.finish(result, genotype, spaces.genotype_to_dot(genotype))


if __name__ == "__main__":
    data.cli(main)
