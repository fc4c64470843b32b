"""ASNG-NAS: Adaptive Stochastic Natural Gradient Method for One-Shot Neural Architecture Search
(Akimoto, Shirakawa, Yoshinari, Uchida, Saito & Nishida, ICML 2019).

Paper: https://arxiv.org/abs/1905.08537 -- official code: https://github.com/shirakawas/ASNG-NAS (classification/)

What this file implements: the architecture is a vector of independent categorical variables with probabilities
theta (stochastic relaxation). Each step (1) trains the supernet weights by SGD on the mean loss of lambda=2
architectures sampled from theta -- only the sampled op of each sampled edge is computed, so a weight step costs
what the child networks cost; (2) samples lambda=2 fresh architectures, evaluates them on a validation batch
without gradient, ranks them (+1 / -1; a tie skips the update) and moves theta along the natural gradient by a
fixed Fisher length delta, floors theta at theta_min, and adapts delta from the accumulated normalised natural
gradients (SNR threshold alpha = 1.5). The final architecture is the mode of theta.

Variables (ALGO LOGIC, see ArchVariables): NB201: one categorical per edge over its 5 ops (`none` included).
DARTS space: per cell type and node i (2+i possible inputs) one categorical over the C(2+i, 2) unordered input
pairs and two op categoricals over the 7 DARTS ops without `none` (op_a on the lower input of the pair, op_b on
the higher one; node 0 has a single pair): 2 x (3 + 8) = 22 variables, and every node gets exactly two distinct
inputs, like a DARTS genotype. NAS-Bench-1Shot1: one categorical per choice node over its 3 ops, and one over each
allowed input set: C(b, k_b) sets for choice node b with k_b parents (nodes with fixed parents have none), C(n+1,
k_out) for the output (space 1: 4 + 3 = 7 variables). A sample is thus always a valid 1Shot1 cell.

Reproduce the paper's search setting on the DARTS cell space (CIFAR-10, 100 epochs, batch 64, cutout 16):
    python algos/asng.py
NAS-Bench-201, with the benchmark's accuracy of the mode architecture each epoch (direct search on CIFAR-100:
add --dataset cifar100 --split-file ../shared/data/nb201/splits/cifar100-test-split.txt.gz):
    python algos/asng.py --space nb201 --nb201-table ../shared/data/nb201/nb201_oracle.csv.gz
NAS-Bench-1Shot1 search space 2 (returns an NB101 spec for train_eval.py --genotype):
    python algos/asng.py --space nb1shot1-2 --nb101-table nasbench_only108.tfrecord
Offline quick start on the real CIFAR-10 subset:
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

# DEVIATION: 1Shot1 has no ASNG run; there we take its common one-shot training setting (1Shot1's
# optimizers/*/train_search.py: batch 96, cosine to 0.001, no cutout) and keep ASNG's own 100 epochs.
DEFAULTS = {"paper": {"batch_size": 64, "lr_min": 0.0, "cutout": 16}, "nb1shot1": {"batch_size": 96, "lr_min": 0.001, "cutout": 0}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ASNG-NAS search (defaults: the paper's CIFAR-10 search setting).")
    p.add_argument("--space", default="darts", choices=spaces.SPACES, help="search space")
    data.add_common_args(p)
    p.add_argument("--nb101-table", default=None, help="nb1shot1: nasbench_only108.tfrecord (or nasbench_full, or an NB101 CSV): log the derived cell's NB101 accuracy and test regret")
    p.add_argument("--single-level", action="store_true", help="theta steps on training batches instead of a held-out half")
    p.add_argument("--epochs", type=data.positive_int, default=100, help="search epochs")
    p.add_argument("--batch-size", type=data.positive_int, default=None, help="batch size of both steps (64; nb1shot1: 96)")
    p.add_argument("--C", type=data.positive_int, default=16, help="initial channels of the supernet")
    p.add_argument("--layers", type=data.positive_int, default=None, help="cells: darts total (8), nb201 per stage (5), nb1shot1 per stack (3)")
    p.add_argument("--lr", type=data.positive_float, default=0.025, help="SGD learning rate of the weights (cosine schedule)")
    p.add_argument("--lr-min", type=data.nonneg_float, default=None, help="final learning rate of the cosine schedule (0; nb1shot1: 0.001)")
    p.add_argument("--momentum", type=data.fraction, default=0.9, help="SGD momentum")
    p.add_argument("--wd", type=data.nonneg_float, default=3e-4, help="weight decay of the weights")
    p.add_argument("--grad-clip", type=data.positive_float, default=5.0, help="gradient-norm clip of the weights")
    p.add_argument("--cutout", type=data.nonneg_int, default=None, help="cutout length on search batches, 0 = off (16; nb1shot1: 0)")
    p.add_argument("--lam", type=data.int_at_least(2), default=2, help="architectures sampled per weight step and per theta step (lambda)")
    p.add_argument("--alpha", type=data.positive_float, default=1.5, help="SNR threshold of the step-size adaptation")
    p.add_argument("--delta-init", type=data.positive_float, default=1.0, help="initial Fisher length delta of the theta step")
    p.add_argument("--run-name", type=data.run_name, default=None, help="default: asng_{space}_{dataset}_s{seed}")
    data.add_run_args(p)  # --resume, --tensorboard, --log-every, --deterministic
    args = p.parse_args(argv)
    for k, v in DEFAULTS["nb1shot1" if args.space.startswith("nb1shot1") else "paper"].items():
        setattr(args, k, v if getattr(args, k) is None else getattr(args, k))
    data.check_search_args(args, p)
    if args.lam < 2:
        p.error(f"--lam must be >= 2 (ranking needs two samples), got {args.lam}")
    if args.alpha <= 0 or args.delta_init <= 0:
        p.error("--alpha and --delta-init must be positive")
    return args


# ============================================================ the categorical distribution and its ASNG update ====
def ranking_utility(losses, rho: float = 0.25) -> torch.Tensor:
    """Ranking-based utilities in the order of `losses` (minimised): the best ceil(lambda*rho) get +1/mu, the worst
    as many -1/mu, the rest 0; tied losses (difference <= 1e-14 relative) share the mean of their ranks' values.
    lambda = 2: (+1, -1), a tie (0, 0)."""
    f = torch.as_tensor(losses, dtype=torch.float64)
    lam = len(f)
    mu = math.ceil(lam * rho)
    order = torch.argsort(f, stable=True)
    by_rank = torch.zeros(lam, dtype=torch.float64)
    by_rank[:mu], by_rank[lam - mu:] = 1.0 / mu, -1.0 / mu
    fs, u_sorted, start = f[order], torch.empty(lam, dtype=torch.float64), 0
    for r in range(1, lam + 1):
        # DEVIATION: exact equality is always a tie (the official relative test misses ties of losses <= 0).
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


def restrict_range(theta: torch.Tensor, K: torch.Tensor, theta_min: torch.Tensor) -> torch.Tensor:
    """Floor every valid entry at theta_min_i, take the excess mass from the part above the floor in proportion,
    renormalise each row to sum 1 (padding stays 0)."""
    mask = torch.arange(theta.shape[1])[None] < K[:, None]
    lo = theta_min[:, None]
    th = torch.where(mask, torch.maximum(theta, lo), 0.0)
    total = th.sum(1, keepdim=True)
    room = (total - K[:, None] * lo).clamp_min(torch.finfo(theta.dtype).tiny)
    th = torch.where(mask, th - (total - 1.0) * (th - lo) / room, 0.0)
    return th / th.sum(1, keepdim=True)


class CategoricalASNG:
    """D independent categoricals (K_i categories) with theta as a zero-padded (D, K_max) float64 matrix, init
    uniform, and the adaptive stochastic natural gradient update. State: Delta (delta = delta_init / Delta),
    the accumulated normalised natural gradient s and its expected squared norm under noise gamma."""

    def __init__(self, categories, alpha: float = 1.5, delta_init: float = 1.0):
        self.K = torch.tensor(list(categories), dtype=torch.long)
        if len(self.K) == 0 or (self.K < 1).any():
            raise ValueError(f"categories must be positive, got {list(categories)}")
        self.mask = torch.arange(int(self.K.max()))[None] < self.K[:, None]
        self.theta = self.mask.double() / self.K[:, None]
        self.N = int((self.K - 1).sum())  # dimension of the expectation parameters
        self.d_valid = int((self.K > 1).sum())
        # PAPER: range restriction theta_min = 1 / (D_valid (K_i - 1)) (official code's margin)
        self.theta_min = torch.where(self.K > 1, 1.0 / (max(self.d_valid, 1) * (self.K - 1).clamp_min(1).double()), 0.0)
        if (self.K * self.theta_min > 1.0 + 1e-12).any():
            raise ValueError(f"theta floor infeasible with D_valid = {self.d_valid}: needs D_valid >= K/(K-1)")
        self.alpha, self.delta_init = alpha, delta_init
        self.Delta, self.gamma = 1.0, 0.0
        self.s = torch.zeros_like(self.theta)

    @property
    def delta(self) -> float:
        return self.delta_init / self.Delta

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """One architecture: a category index per variable (inverse CDF, one uniform per variable)."""
        u = torch.rand(len(self.K), generator=generator, dtype=torch.float64)
        return torch.minimum((self.theta.cumsum(1) <= u[:, None]).sum(1), self.K - 1)

    def mode(self) -> torch.Tensor:
        return self.theta.argmax(1)

    def convergence(self) -> float:
        """Mean over variables of max_k theta_ik (1 = deterministic)."""
        return float(self.theta.max(1).values.mean())

    def update(self, samples: torch.Tensor, losses) -> bool:
        """samples (lambda, D) category indices, losses (lambda,). Returns False when the update is skipped (tie)."""
        u = ranking_utility(losses)
        if (u == 0).all():  # ALGO LOGIC: a tie carries no ranking information: nothing changes (theta, s, gamma, Delta)
            return False
        # PAPER: stochastic natural gradient, G = 1/lambda sum_j u_j (T(x_j) - theta), T = one-hot
        T = F.one_hot(samples, self.theta.shape[1]).double()
        G = torch.where(self.mask, (u[:, None, None] * (T - self.theta)).mean(0), 0.0)
        if (G.abs() < 1e-18).all():  # identical samples: no direction (the official code skips too)
            return False
        s_new = fisher_sqrt(G, self.theta, self.K)
        norm = float(s_new.norm())  # ||G||_F, the Fisher norm
        delta, beta = self.delta, self.delta / math.sqrt(self.N)
        # PAPER: theta <- theta + delta G / ||G||_F: a step of Fisher length delta (effective lr delta/||G||_F)
        self.theta = restrict_range(self.theta + delta * G / norm, self.K, self.theta_min)
        # PAPER: step-size adaptation, s <- (1-beta) s + sqrt(beta(2-beta)) F^(1/2)G/||G||_F,
        # gamma <- (1-beta)^2 gamma + beta(2-beta), Delta <- Delta exp(beta (gamma - ||s||^2 / alpha))
        self.s = (1 - beta) * self.s + math.sqrt(beta * (2 - beta)) * s_new / norm
        self.gamma = (1 - beta) ** 2 * self.gamma + beta * (2 - beta)
        self.Delta *= math.exp(beta * (self.gamma - float(self.s.square().sum()) / self.alpha))
        return True


# ===================================================================== variables <-> architectures of a space ====
class ArchVariables:
    """The categorical variables of a space, their names, and the decoding of one sample into supernet specs
    (`spaces.MixedEdge`: int = only that op; None = edge not computed; 1Shot1 inputs: 0/1 rows) and a genotype.
    NB201: per edge one variable over its ops (`none` included; its op is the zero op, costing nothing).
    DARTS (ALGO LOGIC): per cell type and node i, a variable over the C(2+i, 2) unordered input pairs (node 0 has
    one pair, so no variable) and op_a / op_b over the ops (no `none`) for the lower / higher input of the pair.
    1Shot1 (ALGO LOGIC): an op variable per choice node, an input-set variable per `in{b}` group and for `out`.
    # DEVIATION: the paper searches the ENAS micro cell (5 nodes, input-1/input-2 each over 2+i inputs that may
    coincide, op-1/op-2 over 5 ops, loose ends concatenated + 1x1 conv). Our DARTS cell has 14 edges with their
    own weights (per input and op, as in ENAS) and concatenates all 4 nodes, so two equal inputs would be one
    edge: the unordered pair keeps exactly two distinct inputs per node, as every DARTS genotype has."""

    def __init__(self, space):
        self.space, self.names, self.categories, self.groups, self.sets = space, [], [], [], {}
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
            raise spaces.SpaceError(f"ASNG supports the darts, nb201 and nb1shot1 spaces, not {space.name}")
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

    def decode(self, idx) -> dict:
        """A sample (one index per variable) -> {group: specs}; normal and reduce use their own variables."""
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

    def genotype(self, idx):
        """The space's standard derivation on the sample as 0/1 weights: it keeps exactly the sampled choices."""
        weights = {}
        for g, spec in self.decode(idx).items():
            k_ops = len(self.space.ops.get(g, ()))
            weights[g] = spec if torch.is_tensor(spec) else torch.stack(
                [torch.zeros(k_ops) if k is None else F.one_hot(torch.tensor(k), k_ops).float() for k in spec])
        return self.space.derive(weights)


def mean_entropy(asng: CategoricalASNG, variables: ArchVariables) -> dict[str, float]:  # zero padding adds 0
    return spaces.mean_entropy({g: asng.theta[[v for v, gv in enumerate(variables.groups) if gv == g]]
                                for g in dict.fromkeys(variables.groups)})


# ================================================================================================ the steps ====
def weight_step(model, asng, variables, opt, x, y, grad_clip, lam, gen) -> tuple[float, float]:
    """SGD on the mean loss of `lam` architectures sampled from theta, all on the same batch (Monte-Carlo gradient of
    E_theta[L(W, x)]); each forward computes only the sampled ops."""
    opt.zero_grad(set_to_none=True)
    loss_sum, acc_sum = 0.0, 0.0
    for _ in range(lam):
        logits = model(x, variables.decode(asng.sample(gen)))
        loss = F.cross_entropy(logits, y)
        # DEVIATION: a backward of loss/lam per sample (official: of the mean, once): same gradient, one graph in memory
        (loss / lam).backward()
        loss_sum, acc_sum = loss_sum + loss.item(), acc_sum + (logits.argmax(1) == y).float().mean().item()
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss_sum / lam, acc_sum / lam


@torch.no_grad()
def theta_step(model, asng, variables, x, y, lam, gen) -> tuple[float, float, bool]:
    """`lam` fresh architectures evaluated on the validation batch (model stays in train mode: batch statistics),
    then the ASNG update of theta. Returns (mean loss, mean accuracy, updated)."""
    samples = torch.stack([asng.sample(gen) for _ in range(lam)])
    losses, accs = [], []
    for idx in samples:
        logits = model(x, variables.decode(idx))
        losses.append(F.cross_entropy(logits, y).item())
        accs.append((logits.argmax(1) == y).float().mean().item())
    updated = asng.update(samples, losses)
    return sum(losses) / lam, sum(accs) / lam, updated


def derive_genotype(asng: CategoricalASNG, variables: ArchVariables):
    """Final architecture: the mode of theta (argmax per variable)."""
    return variables.genotype(asng.mode())


def main(argv=None) -> dict:
    args = parse_args(argv)
    data.refuse_torchrun("asng.py samples one architecture per step and has no multi-process search: run it as one "
                         "process, not under torchrun")
    torch.manual_seed(args.seed)
    device = data.resolve_device(args.device)
    # everything that can fail on bad input happens before the run directory exists
    # ALGO LOGIC: DARTS ops without `none` (inputs are chosen by the pair variables); NB201 keeps `none`
    space = spaces.get_space(args.space, ops=[o for o in spaces.DARTS_OPS if o != "none"] if args.space == "darts" else None)
    variables = ArchVariables(space)
    paired, test_loader, info = data.search_loaders(
        args.dataset, args.data_dir, args.batch_size, bilevel=not args.single_level, seed=args.seed,
        train_portion=args.train_portion, split_file=args.split_file, train_subset=args.train_subset)
    table = data.load_table(args.nb201_table) if args.nb201_table else None
    nb101 = data.load_nb101(args.nb101_table) if args.nb101_table else None
    model = space.supernet(args.C, args.layers, info.num_classes, in_channels=info.channels).to(device)
    asng = CategoricalASNG(variables.categories, args.alpha, args.delta_init)
    opt = torch.optim.SGD(model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs, eta_min=args.lr_min)
    gen, arch_gen = torch.Generator().manual_seed(args.seed), torch.Generator().manual_seed(args.seed + 1)
    augment, test_augment = data.Augment(info, train=True, cutout=args.cutout, generator=gen), data.Augment(info, train=False)

    run = data.SearchRun(args, f"asng_{args.space}_{Path(args.dataset).stem}_s{args.seed}", argv)
    # everything the next epoch depends on (checkpointed each epoch; data.py adds the torch/numpy/python RNGs)
    state = {"model": model, "asng": vars(asng), "opt": opt, "sched": sched, "augment_gen": gen,
             "sample_gen": arch_gen, "data_order": paired}
    for epoch in range(run.restore(state), args.epochs + 1):
        t0, skipped = time.time(), 0
        sums = {"train_loss": 0.0, "train_acc": 0.0, "valid_loss": 0.0, "valid_acc": 0.0}
        for (x, y), (xv, yv) in run.steps(paired, epoch, sums):
            x, y = augment(x.to(device)), y.to(device)
            xv, yv = augment(xv.to(device)), yv.to(device)
            # ALGO LOGIC: W step on sampled architectures first, then the theta step on fresh samples
            train_loss, train_acc = weight_step(model, asng, variables, opt, x, y, args.grad_clip, args.lam, arch_gen)
            valid_loss, valid_acc, updated = theta_step(model, asng, variables, xv, yv, args.lam, arch_gen)
            skipped += not updated
            for k, v in zip(sums, (train_loss, train_acc, valid_loss, valid_acc)):
                sums[k] += v
        sched.step()
        genotype = derive_genotype(asng, variables)
        metrics = {"epoch": epoch, **{k: v / len(paired) for k, v in sums.items()}, "lr": sched.get_last_lr()[0],
                   "theta_convergence": asng.convergence(), "delta": asng.delta, "theta_updates_skipped": skipped,
                   "epoch_time_s": time.time() - t0, "genotype": str(genotype)}
        metrics.update({f"entropy_{g}": h for g, h in mean_entropy(asng, variables).items()})
        metrics.update(data.oracle_metrics(table, genotype, args.dataset))
        metrics.update(data.nb101_metrics(nb101, genotype, args.space))
        run.end_epoch(state, metrics, {"theta": asng.theta})

    mode = asng.mode()
    test_loss, test_acc = data.evaluate(model, test_loader, test_augment, device, variables.decode(mode))
    genotype = variables.genotype(mode)
    result = {"algorithm": "asng", "search_space": args.space, "genotype": genotype.to_json(),
              "genotype_str": str(genotype), "supernet_test_acc": test_acc, "supernet_test_loss": test_loss,
              "search_time_s": time.time() - run.start, "delta": asng.delta, "theta_convergence": asng.convergence(),
              "theta": {n: asng.theta[v, :k].tolist() for v, (n, k) in enumerate(zip(variables.names, variables.categories))}}
    return run.finish(result, genotype, spaces.genotype_to_dot(genotype))


if __name__ == "__main__":
    data.cli(main)
