"""Speed benchmarks of nasref's algorithms, each measured side by side with its baseline in one run.

Every benchmark is a function in `BENCHMARKS` (name -> function(BenchConfig) -> list of result rows). A benchmark
builds one callable per contender, times them with `interleaved_times` (warm-up, then repeated rounds in rotating
order, so load from other processes hits every contender alike) and reports medians and their ratios.
Add a benchmark by writing `bench_<name>(cfg)` and adding it to the table.

Benchmarks:
  nasp  NASP's weight step (forward + backward + clip + SGD through the discrete child A_bar) against DARTS'
        (the same through the softmax mixture of every op on every edge), same supernet size and batch, at 7 ops
        (DARTS' ops without `none`) and at 12 ops (NASP's larger space; DARTS is run on it with softmax weights).
        The paper's claim as set for this repository: >= 5x at 7 ops, >= 10x at 12 ops. NASP's cost depends on
        its child: the target is checked on random children (A ~ U[0, 1], 3 seeds, median of their medians); the
        "largest child" rows (the op with the most parameters on every kept edge) are shown for information.
  nasp-table5  NASP's Table 5, side by side in one run, per op set (7 and 12): DARTS vs NASP per search step --
        A-update first order (darts.arch_step vs nasp.arch_step + prox_C2 with NaspEdge), A-update second order
        (darts.unrolled_arch_step, DARTS only), w-update forward and backward (+ clip + SGD) timed separately, and
        the total search step (DARTS 1st, DARTS 2nd, NASP) as the sum of its parts' medians. NASP runs one random
        child (A ~ U[0, 1], --seed). Printed beside the paper's ratios and per-epoch seconds (where known);
        targets set for this repository's CPU run (1 thread).
  xautodl  Our NB201 supernet weight step against the established implementation (xautodl's TinyNetworkDarts and
        TinyNetworkGDAS, an optional dependency: skipped with a message when absent) at NB201's search size
        (--nb201-C 16, --nb201-N 5, same batch). Targets: ours <= 0.8x their time (DARTS), <= 0.9x (GDAS).
  single_path  Single-path weight steps (gaea_gdas and asng on NB201, nasp on the DARTS space) against the same
        child trained as a plain discrete network. Target: <= 1.2x the child's time.
  memory  Peak memory of a DARTS search step vs a PC-DARTS (partial channels) one (benchmarks/memory.py, each in a
        fresh process). Target: PC-DARTS <= 0.45x.
  rnn  One search step on the recurrent cell space (--space rnn) as darts.py / nasp.py take it: DARTS first order,
        second order and NASP (architecture step + weight step, hidden states carried on, DARTS' search dropouts,
        random tokens), and the weight steps alone (DARTS' mixture vs NASP's single path). Set beside NASP's Table 3
        (search GPU-days: DARTS 0.5 / 1, NASP 0.1, i.e. 5x / 10x) as targets. Default size: DARTS' search cell
        (nhid 300, bptt 35, PTB's 10,000 words) at batch 64 (--rnn-batch 256 for DARTS' own).
Ratios are always "baseline / candidate" so that bigger is better: a time target of <= 0.8x reads >= 1.25x.

Usage:
    python benchmarks/speed.py                    # all benchmarks: batch 64, C=16, 8 cells, 32 px, CPU, 7 rounds
    python benchmarks/speed.py --quick            # 3 rounds
    python benchmarks/speed.py --only nasp --threads 2 --json speed.json
    python benchmarks/speed.py --only nasp-table5 --threads 1 --repeats 2 --warmup 0
    python benchmarks/speed.py --only rnn --threads 1 --rnn-batch 32
Prints the machine and library versions first. Exit status 1 with --strict when a target is missed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

_root = Path(__file__).resolve().parents[1]
for _p in (_root, _root / "algos", _root / "benchmarks"):  # benchmarks may import the algos files
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
import asng  # noqa: E402
import darts  # noqa: E402
import gaea_gdas  # noqa: E402
import memory  # noqa: E402  (benchmarks/memory.py)
import nasp  # noqa: E402
import spaces  # noqa: E402


@dataclass
class BenchConfig:
    batch_size: int = 64
    C: int = 16
    layers: int = 8
    image_size: int = 32
    num_classes: int = 10
    repeats: int = 7
    warmup: int = 1
    device: str = "cpu"
    seed: int = 0
    nb201_C: int = 16
    nb201_N: int = 5
    rnn_nhid: int = 300  # DARTS' rnn search: emsize = nhid = 300, batch 256, bptt 35, PTB vocabulary 10,000
    rnn_batch: int = 64
    rnn_bptt: int = 35
    rnn_vocab: int = 10_000


@dataclass
class Row:
    benchmark: str
    case: str
    baseline: str
    candidate: str
    baseline_ms: float
    candidate_ms: float
    ratio: float  # baseline median / candidate median: the candidate's speed-up
    target: float | None  # minimum ratio claimed; None = for information
    detail: dict = field(default_factory=dict)  # median ms of every contender timed with this row
    paper: float | None = None  # the paper's ratio for this row, where it has one
    note: str = ""  # printed after the row (e.g. the paper's per-epoch seconds)

    @property
    def ok(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target


# ---------------------------------------------------------------------------------------------- machinery
def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                      device: str = "cpu", order_log: list | None = None) -> dict[str, list[float]]:
    """Seconds per call of every callable: `warmup` untimed calls each, then `repeats` rounds, each round calling
    every callable once, the order rotated by one per round. `order_log` (if given) receives the call order.
    A (setup, fn) pair instead of a callable: setup() runs untimed right before each timed fn()."""
    names = list(fns)
    pairs = {name: fn if isinstance(fn, tuple) else (None, fn) for name, fn in fns.items()}
    for _ in range(warmup):
        for name in names:
            setup, fn = pairs[name]
            if setup is not None:
                setup()
            fn()
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            setup, fn = pairs[name]
            if setup is not None:
                setup()
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
            if order_log is not None:
                order_log.append(name)
    return times


def median_ms(samples: list[float]) -> float:
    return 1000.0 * statistics.median(samples)


def _batch(cfg: BenchConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=gen)
    y = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=gen)
    return x.to(cfg.device), y.to(cfg.device)


def _sgd(model) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)


# ---------------------------------------------------------------------------------------------- nasp
def darts_weight_step_fn(space, cfg: BenchConfig) -> Callable[[], tuple]:
    """One call = darts.weight_step: forward/backward through softmax(alpha) * every op on every edge, clip, SGD."""
    torch.manual_seed(cfg.seed)
    model = space.supernet(cfg.C, cfg.layers, cfg.num_classes).to(cfg.device)
    alphas = darts.init_alphas(space, cfg.device)
    opt, (x, y) = _sgd(model), _batch(cfg, torch.Generator().manual_seed(cfg.seed))
    return lambda: darts.weight_step(model, alphas, opt, x, y, 5.0)


def random_arch(space, seed: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A uniform in [0, 1]: its A_bar is a random DARTS cell (random kept edges, random ops)."""
    gen = torch.Generator().manual_seed(seed)
    return {g: torch.rand(*shape, generator=gen).to(device) for g, shape in space.arch_shapes().items()}


def largest_arch(space, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A whose A_bar puts, per cell type, the op with the most parameters (ties: the later op) on every kept edge."""
    A = {}
    for g, (n_edges, n_ops) in space.arch_shapes().items():
        counts = nasp.op_param_counts(space.ops[g])
        k = max(range(n_ops), key=lambda i: (counts[i], i))
        A[g] = torch.zeros(n_edges, n_ops, device=device)
        A[g][:, k] = 1.0
    return A


def nasp_weight_step_fn(space, cfg: BenchConfig, A: dict[str, torch.Tensor]) -> Callable[[], tuple]:
    """One call = A_bar = prox_C1(A), then nasp.weight_step: forward/backward through the child only, clip, SGD."""
    torch.manual_seed(cfg.seed)
    model = space.supernet(cfg.C, cfg.layers, cfg.num_classes).to(cfg.device)
    opt, (x, y) = _sgd(model), _batch(cfg, torch.Generator().manual_seed(cfg.seed))
    return lambda: nasp.weight_step(model, nasp.discretize(A, space.node_slices), opt, x, y, 5.0)


NASP_TARGETS = {7: 5.0, 12: 10.0}


def bench_nasp(cfg: BenchConfig, op_sets=(7, 12), children: int = 3) -> list[Row]:
    """Per op set: DARTS' weight step, NASP's on `children` random children (A ~ U[0,1], seeds seed..seed+children-1)
    and on the largest child, all interleaved. The random-child row uses the median of the children's medians."""
    rows = []
    for n_ops in op_sets:
        space = nasp.nasp_space(n_ops)
        fns = {"darts": darts_weight_step_fn(space, cfg)}
        for i in range(children):
            fns[f"nasp_random{i}"] = nasp_weight_step_fn(space, cfg, random_arch(space, cfg.seed + i, cfg.device))
        fns["nasp_largest"] = nasp_weight_step_fn(space, cfg, largest_arch(space, cfg.device))
        times = interleaved_times(fns, cfg.repeats, cfg.warmup, cfg.device)
        base = median_ms(times["darts"])
        medians = {name: median_ms(t) for name, t in times.items()}
        random_ms = statistics.median(medians[f"nasp_random{i}"] for i in range(children))
        for case, cand, target in ((f"random child (x{children})", random_ms, NASP_TARGETS[n_ops]),
                                   ("largest child", medians["nasp_largest"], None)):
            rows.append(Row("nasp", f"{n_ops} ops, {case}", "darts weight step", "nasp weight step",
                            base, cand, base / cand, target, medians))
    return rows


# ---------------------------------------------------------------------------------------------- nasp-table5
# NASP Table 5 (DARTS-space search, CIFAR-10, GPU): ratios DARTS / NASP as quoted when the targets were set (not
# checked against the paper text here); per-epoch seconds only where quoted. Targets: set for this benchmark on CPU
# with 1 thread.
TABLE5 = {  # column: (paper 7 ops, paper 12 ops, target 7 ops, target 12 ops)
    "A-update 1st order": (1.53, 1.61, 2.0, 2.0),
    "A-update 2nd order": (None, None, None, None),  # DARTS 2nd-order A-update / NASP's (no paper ratio)
    "w-update forward": (4.1, 5.8, 4.1, 5.8),
    "w-update backward": (5.2, 19.5, 5.2, 10.0),
    "total vs DARTS 1st": (2.3, 2.8, 2.5, 3.0),
    "total vs DARTS 2nd": (4.9, 6.3, 6.0, 8.0),
}
TABLE5_SECONDS = {("A-update 1st order", 7): (270, 176), ("A-update 1st order", 12): (489, 303)}  # DARTS, NASP
STEPS_PER_EPOCH = 391  # 25k training images (the bilevel half of CIFAR-10) / batch 64


def table5_fns(space, cfg: BenchConfig, A: dict[str, torch.Tensor]) -> dict[str, object]:
    """The contenders of one op set: each a callable or a (setup, timed) pair (interleaved_times). DARTS on the
    softmax supernet, NASP on a NaspEdge supernet of the same size, each through its algos file's functions; the
    w-update forward is the weight step's forward + loss (graph kept, as the step builds it), its backward the rest
    of the weight step (backward, clip 5, SGD) after an untimed forward."""
    dev = cfg.device
    torch.manual_seed(cfg.seed)
    d_model = space.supernet(cfg.C, cfg.layers, cfg.num_classes).to(dev)
    alphas = darts.init_alphas(space, dev)
    d_arch_opt = torch.optim.Adam(alphas.values(), 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    d_opt = _sgd(d_model)
    torch.manual_seed(cfg.seed)
    n_model = space.supernet(cfg.C, cfg.layers, cfg.num_classes, edge=nasp.NaspEdge).to(dev)
    A = {g: torch.nn.Parameter(a.detach().clone()) for g, a in A.items()}
    n_arch_opt = torch.optim.Adam(A.values(), 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    n_opt, keep, rel_size = _sgd(n_model), nasp.edges_kept(space), nasp.size_weights(space, dev)
    abar = nasp.discretize(A, space.node_slices, keep)  # the child of the w-update rows (fixed)
    (x, y), (xa, ya) = _batch(cfg, torch.Generator().manual_seed(cfg.seed)), _batch(cfg, torch.Generator().manual_seed(cfg.seed + 1))
    graph = {}

    def d_forward():
        with torch.no_grad():
            weights = darts.mixture_weights(alphas)
        return F.cross_entropy(d_model(x, weights), y)

    def n_forward():
        return F.cross_entropy(n_model(x, nasp.child_specs(abar)), y)

    def setup(model, opt, forward):
        def run():
            opt.zero_grad(set_to_none=True)
            graph["loss"] = forward()
        return run

    def backward(model, opt):
        def run():
            graph.pop("loss").backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
        return run

    def nasp_a_update():
        nasp.arch_step(n_model, A, n_arch_opt, xa, ya, space.node_slices, rel_size, 0.0, keep)
        nasp.prox_c2_(A)
        return nasp.discretize(A, space.node_slices, keep)  # A_bar for the next weight step (part of the step)

    return {
        "darts_A1": lambda: darts.arch_step(d_model, alphas, d_arch_opt, xa, ya),
        "darts_A2": lambda: darts.unrolled_arch_step(d_model, alphas, d_arch_opt, d_opt, x, y, xa, ya,
                                                     d_opt.param_groups[0]["lr"]),
        "nasp_A": nasp_a_update,
        "darts_wf": d_forward,
        "darts_wb": (setup(d_model, d_opt, d_forward), backward(d_model, d_opt)),
        "nasp_wf": n_forward,
        "nasp_wb": (setup(n_model, n_opt, n_forward), backward(n_model, n_opt)),
    }


def table5_rows(n_ops: int, med: dict[str, float]) -> list[Row]:
    """Rows of one op set from the contenders' median ms; totals = A-update + w-forward + w-backward."""
    med = {**med, "darts_T1": med["darts_A1"] + med["darts_wf"] + med["darts_wb"],
           "darts_T2": med["darts_A2"] + med["darts_wf"] + med["darts_wb"],
           "nasp_T": med["nasp_A"] + med["nasp_wf"] + med["nasp_wb"]}
    pairs = {"A-update 1st order": ("darts_A1", "nasp_A"), "A-update 2nd order": ("darts_A2", "nasp_A"),
             "w-update forward": ("darts_wf", "nasp_wf"), "w-update backward": ("darts_wb", "nasp_wb"),
             "total vs DARTS 1st": ("darts_T1", "nasp_T"), "total vs DARTS 2nd": ("darts_T2", "nasp_T")}
    rows = []
    for column, (base, cand) in pairs.items():
        paper7, paper12, target7, target12 = TABLE5[column]
        ours_s = f"ours {med[base] * STEPS_PER_EPOCH / 1000:.0f} / {med[cand] * STEPS_PER_EPOCH / 1000:.0f} s per epoch"
        paper_s = TABLE5_SECONDS.get((column, n_ops))
        note = ours_s + (f"; paper {paper_s[0]} / {paper_s[1]} s" if paper_s else "")
        rows.append(Row("table5", f"{n_ops} ops {column}", base, cand, med[base], med[cand], med[base] / med[cand],
                        target7 if n_ops == 7 else target12, med, paper7 if n_ops == 7 else paper12, note))
    return rows


def bench_nasp_table5(cfg: BenchConfig, op_sets=(7, 12)) -> list[Row]:
    """NASP Table 5 per op set: all seven contenders of table5_fns interleaved; see the module docstring."""
    rows = []
    for n_ops in op_sets:
        space = nasp.nasp_space(n_ops)
        fns = table5_fns(space, cfg, random_arch(space, cfg.seed, cfg.device))
        med = {k: median_ms(v) for k, v in interleaved_times(fns, cfg.repeats, cfg.warmup, cfg.device).items()}
        rows += table5_rows(n_ops, med)
    return rows


# ---------------------------------------------------------------------------------------------- rnn
RNN_PAPER = {"darts_1st": 0.5 / 0.1, "darts_2nd": 1.0 / 0.1}  # NASP Table 3, GPU-days: DARTS 0.5 / 1, NASP 0.1


def rnn_step_fns(cfg: BenchConfig) -> dict[str, Callable[[], object]]:
    """One search step on the recurrent cell space as the algos files take it (architecture step, then weight step,
    hidden states carried on), random tokens, every dropout at DARTS' search setting: DARTS first order, second
    order, NASP; and the weight steps alone (DARTS' mixture vs NASP's single path of a random A_bar)."""
    dev, bptt, B = cfg.device, cfg.rnn_bptt, cfg.rnn_batch
    gen = torch.Generator().manual_seed(cfg.seed)
    batch, arch_batch = [tuple(torch.randint(0, cfg.rnn_vocab, (bptt, B), generator=gen).to(dev) for _ in range(2))
                         for _ in range(2)]
    lm_args = dict(dropout=0.75, dropouth=0.25, dropoutx=0.75, dropouti=0.2, dropoute=0.0)
    fns = {}
    for name in ("darts_1st", "darts_2nd", "nasp", "darts_w", "nasp_w"):
        torch.manual_seed(cfg.seed)
        space = nasp.nasp_space(None, "rnn") if name.startswith("nasp") else spaces.get_space("rnn")
        model = space.supernet(cfg.rnn_vocab, cfg.rnn_nhid, cfg.rnn_nhid, **lm_args).to(dev)
        opt = torch.optim.SGD(model.parameters(), 20.0, weight_decay=5e-7)
        arch = (nasp.init_arch if name.startswith("nasp") else darts.init_alphas)(space, dev)
        if name.startswith("nasp"):  # a random A in [0, 1] (a random single path)
            with torch.no_grad():
                arch["recurrent"].copy_(torch.rand(arch["recurrent"].shape, generator=torch.Generator().manual_seed(cfg.seed)))
        arch_opt = torch.optim.Adam(arch.values(), 3e-3, weight_decay=1e-3)
        fns[name] = _rnn_step(name, space, model, opt, arch, arch_opt, batch, arch_batch, B)
    return fns


def _rnn_step(name, space, model, opt, arch, arch_opt, batch, arch_batch, B) -> Callable[[], None]:
    state = {"h": model.init_hidden(B), "ha": model.init_hidden(B)}

    def step():
        if name == "darts_1st":
            _, state["ha"] = darts.lm_arch_step(model, arch, arch_opt, arch_batch, state["ha"])
        elif name == "darts_2nd":
            grads, _, state["ha"] = darts.lm_unrolled_arch_grads(model, arch, batch, state["h"], arch_batch, state["ha"],
                                                                 20.0, 5e-7, 0.25)
            arch_opt.zero_grad(set_to_none=True)
            for a, g in zip(arch.values(), grads):
                a.grad = g
            arch_opt.step()
        elif name == "nasp":
            _, state["ha"] = nasp.lm_arch_step(model, arch, arch_opt, arch_batch, state["ha"], space.node_slices)
            nasp.prox_c2_(arch)
        if name.startswith("nasp"):
            w = nasp.derive_genotype(space, arch).recurrent  # A_bar's single path
        else:
            with torch.no_grad():
                w = darts.mixture_weights(arch)
        _, state["h"] = spaces.lm_weight_step(model, opt, batch, state["h"], w, 0.25, 0.0, 1e-3)
    return step


def bench_rnn(cfg: BenchConfig) -> list[Row]:
    """NASP vs DARTS first / second order per search step on the recurrent cell space (interleaved rounds)."""
    med = {k: median_ms(v) for k, v in interleaved_times(rnn_step_fns(cfg), cfg.repeats, cfg.warmup, cfg.device).items()}
    size = f"nhid {cfg.rnn_nhid} batch {cfg.rnn_batch} bptt {cfg.rnn_bptt}"
    rows = [Row("rnn", f"search step vs {base.replace('_', ' ')} ({size})", base, "nasp", med[base], med["nasp"],
                med[base] / med["nasp"], RNN_PAPER[base], med, RNN_PAPER[base], "paper: GPU-days of the search")
            for base in ("darts_1st", "darts_2nd")]
    return rows + [Row("rnn", f"weight step ({size})", "darts_w", "nasp_w", med["darts_w"], med["nasp_w"],
                       med["darts_w"] / med["nasp_w"], None, med)]


# ---------------------------------------------------------------------------------------------- xautodl
def _xautodl():
    """TinyNetworkDarts / TinyNetworkGDAS from the xautodl package (AutoDL-Projects), or None when absent."""
    try:
        from xautodl.models.cell_searchs.search_model_darts import TinyNetworkDarts
        from xautodl.models.cell_searchs.search_model_gdas import TinyNetworkGDAS
    except ImportError:
        return None
    return TinyNetworkDarts, TinyNetworkGDAS


def xautodl_step_fn(net_cls, cfg: BenchConfig, C: int, N: int, tau: float | None = None) -> Callable[[], None]:
    """One call = xautodl's NB201 search weight step as its DARTS-V1 / GDAS scripts take it: forward (GDAS: one
    Gumbel sample, only the sampled op per edge), cross entropy, backward, clip 5, SGD on the weights."""
    torch.manual_seed(cfg.seed)
    net = net_cls(C, N, 4, cfg.num_classes, spaces.NB201_OPS, False, True).to(cfg.device)
    if tau is not None:
        net.set_tau(tau)
    opt = torch.optim.SGD(net.get_weights(), 0.025, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x, y = _batch(cfg, torch.Generator().manual_seed(cfg.seed))

    def step():
        opt.zero_grad(set_to_none=True)
        _, logits = net(x)
        F.cross_entropy(logits, y).backward()
        torch.nn.utils.clip_grad_norm_(net.get_weights(), 5.0)
        opt.step()
    return step


def gdas_step_fn(cfg: BenchConfig, C: int, N: int) -> Callable[[], object]:
    """One call = gaea_gdas' weight step: a fresh Gumbel-max child, only its ops run, clip, SGD."""
    torch.manual_seed(cfg.seed)
    space = spaces.get_space("nb201")
    model = space.supernet(C, N, cfg.num_classes, edge=gaea_gdas.GDASEdge).to(cfg.device)
    arch = gaea_gdas.init_arch(space, "softmax-adam", cfg.device)
    opt, gen = _sgd(model), torch.Generator().manual_seed(cfg.seed)
    x, y = _batch(cfg, torch.Generator().manual_seed(cfg.seed))
    return lambda: gaea_gdas.weight_step(model, gaea_gdas.sample_child(arch, "softmax-adam", gen), opt, x, y, 5.0)


XAUTODL_TARGETS = {"darts": 1 / 0.8, "gdas": 1 / 0.9}  # ours <= 0.8x / 0.9x their time


def bench_xautodl(cfg: BenchConfig) -> list[Row]:
    """NB201 supernet weight step, ours vs xautodl's TinyNetworkDarts / TinyNetworkGDAS at --nb201-C / --nb201-N
    (NB201's search size 16 / 5 by default). Ratio = their time / ours."""
    C, N = cfg.nb201_C, cfg.nb201_N
    classes = _xautodl()
    if classes is None:
        print("xautodl is not installed: skipping (optional benchmark dependency: pip install --no-deps xautodl)")
        return []
    nb201 = spaces.get_space("nb201")
    cfg_nb = BenchConfig(**{**asdict(cfg), "C": C, "layers": N})
    fns = {"xautodl_darts": xautodl_step_fn(classes[0], cfg_nb, C, N), "ours_darts": darts_weight_step_fn(nb201, cfg_nb),
           "xautodl_gdas": xautodl_step_fn(classes[1], cfg_nb, C, N, tau=10.0), "ours_gdas": gdas_step_fn(cfg_nb, C, N)}
    med = {k: median_ms(v) for k, v in interleaved_times(fns, cfg.repeats, cfg.warmup, cfg.device).items()}
    return [Row("xautodl", f"nb201 {kind} step C={C} N={N}", f"xautodl {kind}", f"ours {kind}",
                med[f"xautodl_{kind}"], med[f"ours_{kind}"], med[f"xautodl_{kind}"] / med[f"ours_{kind}"],
                XAUTODL_TARGETS[kind], med) for kind in ("darts", "gdas")]


# ------------------------------------------------------------------------------------------- single path
def child_step_fn(net, cfg: BenchConfig) -> Callable[[], None]:
    """One call = a plain discrete network's training step (forward, cross entropy, backward, clip 5, SGD)."""
    net = net.to(cfg.device)
    opt, (x, y) = _sgd(net), _batch(cfg, torch.Generator().manual_seed(cfg.seed))

    def step():
        opt.zero_grad(set_to_none=True)
        out = net(x)
        F.cross_entropy(out[0] if isinstance(out, tuple) else out, y).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
    return step


SINGLE_PATH_TARGET = 1 / 1.2  # single-path step <= 1.2x the child's step


def bench_single_path(cfg: BenchConfig) -> list[Row]:
    """Single-path weight steps vs the same child as a plain discrete network. gaea_gdas and asng on NB201 (C=16,
    N=5) with the distribution fixed at one random child; nasp on the DARTS space (--C, --layers, 7 ops) with
    A_bar = that child, against DartsEvalNetwork of its genotype (no auxiliary head, drop path 0).
    ASNG's step trains lambda=2 children on the batch: its row compares it with lambda child steps."""
    torch.manual_seed(cfg.seed)
    nb201, nb201_C, nb201_N = spaces.get_space("nb201"), cfg.nb201_C, cfg.nb201_N
    cfg_nb = BenchConfig(**{**asdict(cfg), "C": nb201_C, "layers": nb201_N})
    gen = torch.Generator().manual_seed(cfg.seed)
    index = torch.randint(0, len(spaces.NB201_OPS), (6,), generator=gen).tolist()
    child = {"normal": index}
    genotype = nb201.derive({"normal": F.one_hot(torch.tensor(index), len(spaces.NB201_OPS)).float()})
    gdas_net = nb201.supernet(nb201_C, nb201_N, cfg.num_classes, edge=gaea_gdas.GDASEdge).to(cfg.device)
    opt_g, (x, y) = _sgd(gdas_net), _batch(cfg_nb, torch.Generator().manual_seed(cfg.seed))
    asng_net = nb201.supernet(nb201_C, nb201_N, cfg.num_classes).to(cfg.device)
    opt_a, lam = _sgd(asng_net), 2
    variables = asng.ArchVariables(nb201)
    dist = asng.ASNG(variables.categories)
    dist.theta = F.one_hot(torch.tensor(index), dist.theta.shape[1]).double()  # every sample is the child
    darts_space = nasp.nasp_space(7)
    A = random_arch(darts_space, cfg.seed, cfg.device)
    A_bar = nasp.discretize(A, darts_space.node_slices)
    darts_genotype = darts_space.derive(A_bar)
    nasp_fn = nasp_weight_step_fn(darts_space, cfg, A)
    fns = {
        "gaea_gdas": lambda: gaea_gdas.weight_step(gdas_net, child, opt_g, x, y, 5.0),
        "nb201_child": child_step_fn(spaces.NB201Network(genotype, nb201_C, nb201_N, cfg.num_classes), cfg_nb),
        "asng": lambda: asng.weight_step(asng_net, dist, variables, opt_a, x, y, 5.0, lam, gen),
        "nasp": nasp_fn,
        "darts_child": child_step_fn(spaces.DartsEvalNetwork(darts_genotype, cfg.C, cfg.layers, cfg.num_classes,
                                                             auxiliary=False), cfg),
    }
    med = {k: median_ms(v) for k, v in interleaved_times(fns, cfg.repeats, cfg.warmup, cfg.device).items()}
    return [
        Row("single", f"gaea_gdas nb201 {genotype}"[:26], "child network", "gaea_gdas step", med["nb201_child"],
            med["gaea_gdas"], med["nb201_child"] / med["gaea_gdas"], SINGLE_PATH_TARGET, med),
        Row("single", f"asng nb201 (lambda={lam})", f"{lam} x child network", "asng step", lam * med["nb201_child"],
            med["asng"], lam * med["nb201_child"] / med["asng"], SINGLE_PATH_TARGET, med),
        Row("single", "nasp darts 7 ops", "child network", "nasp weight step", med["darts_child"], med["nasp"],
            med["darts_child"] / med["nasp"], SINGLE_PATH_TARGET, med),
    ]

# ---------------------------------------------------------------------------------------------- memory
def bench_memory(cfg: BenchConfig) -> list[Row]:
    """Peak memory of one search step (architecture step + weight step) of darts.py's supernet vs gaea_pcdarts'
    partial-channel supernet, same batch and size, each in a fresh process (benchmarks/memory.py). The ratio
    column here is darts / pc-darts memory (target >= 1/0.45); the 'ms' columns hold MiB."""
    darts_mib = statistics.median(memory.measure("darts", cfg.batch_size, cfg.C, cfg.layers, cfg.device) for _ in range(2)) / 2**20
    pc_mib = statistics.median(memory.measure("gaea_pcdarts", cfg.batch_size, cfg.C, cfg.layers, cfg.device) for _ in range(2)) / 2**20
    return [Row("memory", f"darts space b{cfg.batch_size} (MiB)", "darts peak", "gaea_pcdarts peak", darts_mib, pc_mib,
                darts_mib / pc_mib, 1 / 0.45, {"darts_MiB": darts_mib, "gaea_pcdarts_MiB": pc_mib})]


BENCHMARKS: dict[str, Callable[[BenchConfig], list[Row]]] = {
    "nasp": bench_nasp,
    "nasp-table5": bench_nasp_table5,
    "xautodl": bench_xautodl,
    "single_path": bench_single_path,
    "memory": bench_memory,
    "rnn": bench_rnn,
}


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Speed benchmarks, each measured side by side with its baseline.")
    p.add_argument("--only", nargs="+", default=None, choices=sorted(BENCHMARKS), help="benchmarks to run (default: all)")
    p.add_argument("--quick", action="store_true", help="3 timed rounds instead of --repeats")
    p.add_argument("--repeats", type=int, default=BenchConfig.repeats, help="timed rounds (median over them)")
    p.add_argument("--warmup", type=int, default=BenchConfig.warmup, help="untimed rounds first")
    p.add_argument("--batch-size", type=int, default=BenchConfig.batch_size, help="batch size")
    p.add_argument("--C", type=int, default=BenchConfig.C, help="initial channels of the supernets")
    p.add_argument("--layers", type=int, default=BenchConfig.layers, help="cells of the supernets")
    p.add_argument("--image-size", type=int, default=BenchConfig.image_size, help="input resolution (random images)")
    p.add_argument("--nb201-C", type=int, default=BenchConfig.nb201_C, help="NB201 supernet channels (xautodl, single_path)")
    p.add_argument("--nb201-N", type=int, default=BenchConfig.nb201_N, help="NB201 cells per stage (xautodl, single_path)")
    p.add_argument("--rnn-nhid", type=int, default=BenchConfig.rnn_nhid, help="rnn: emsize = nhid")
    p.add_argument("--rnn-batch", type=int, default=BenchConfig.rnn_batch, help="rnn: batch size (DARTS' search: 256)")
    p.add_argument("--rnn-bptt", type=int, default=BenchConfig.rnn_bptt, help="rnn: BPTT window")
    p.add_argument("--rnn-vocab", type=int, default=BenchConfig.rnn_vocab, help="rnn: vocabulary size (random tokens)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the models, batches and random architectures")
    p.add_argument("--json", default=None, help="also write machine info, config and rows to this JSON file")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    if min(args.repeats, args.batch_size, args.C, args.layers, args.image_size) < 1 or args.warmup < 0:
        p.error("--repeats, --batch-size, --C, --layers, --image-size must be >= 1 and --warmup >= 0")
    return args


def format_rows(rows: list[Row]) -> str:
    width = max([26] + [len(r.case) for r in rows])
    head = f"{'benchmark':<10} {'case':<{width}} {'baseline ms':>12} {'candidate ms':>13} {'ratio':>7} {'target':>7}  ok"
    papers = any(r.paper is not None or r.note for r in rows)
    head += "   paper  note" if papers else ""
    lines = [head, "-" * len(head)]
    for r in rows:
        target = "-" if r.target is None else f">={r.target:.2f}x"
        ok = "-" if r.ok is None else ("yes" if r.ok else "NO")
        line = (f"{r.benchmark:<10} {r.case:<{width}} {r.baseline_ms:>12.1f} {r.candidate_ms:>13.1f} "
                f"{r.ratio:>6.1f}x {target:>7}  {ok:<3}")
        if papers:
            line += f" {'-' if r.paper is None else f'{r.paper:.2f}x':>6}  {r.note}"
        lines.append(line.rstrip())
    details = []
    for r in rows:
        if r.detail and r.detail not in details:
            details.append(r.detail)
    lines += ["median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in d.items()) for d in details]
    return "\n".join(lines)


def main(argv=None) -> list[Row]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = BenchConfig(args.batch_size, args.C, args.layers, args.image_size, repeats=3 if args.quick else args.repeats,
                      warmup=args.warmup, device=args.device, seed=args.seed, nb201_C=args.nb201_C, nb201_N=args.nb201_N,
                      rnn_nhid=args.rnn_nhid, rnn_batch=args.rnn_batch, rnn_bptt=args.rnn_bptt, rnn_vocab=args.rnn_vocab)
    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print("config:  " + ", ".join(f"{k}={v}" for k, v in asdict(cfg).items()), flush=True)
    rows = []
    for name in args.only or list(BENCHMARKS):
        t = time.time()
        new = BENCHMARKS[name](cfg)
        rows += new
        print(f"\n[{name}] {time.time() - t:.0f}s, medians over {cfg.repeats} interleaved rounds\n{format_rows(new)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "config": asdict(cfg),
                                               "rows": [{**asdict(r), "ok": r.ok} for r in rows]}, indent=2) + "\n")
    if args.strict and any(r.ok is False for r in rows):
        sys.exit(1)
    return rows


if __name__ == "__main__":
    main()
