"""The seed papers' central claims, measured on this machine, each with a verdict computed from the data.

Panels (each claim, its paper's number or figure and the verdict rule are written into table.md before our numbers):
  entropy  GAEA Figure 1: mean entropy of the op weights vs architecture steps, GAEA vs its base method, on the DARTS
           space (GAEA PC-DARTS vs PC-DARTS), NAS-Bench-1Shot1 space 1 (the same pair, GAEA App. C.2), NB201 (GAEA
           DARTS vs DARTS, both ERM), and GAEA GDAS vs GDAS (entropy of the sampling distribution)
  gap      GAEA Sec. 4.1: supernet accuracy with the continuous weights vs the derived discrete cell (same weights) on
           held-out training images (never the test set), from the DARTS-space runs of `entropy`; with the BN
           statistics of the search (the paper's protocol as we read it) and re-estimated for the discrete cell
  nb201    GAEA Table 2 ordering: NB201 oracle accuracy of GAEA DARTS (ERM, bilevel) vs DARTS (ERM, bilevel) and
           GAEA GDAS vs GDAS, and the fraction of DARTS runs that end in a parameter-free cell
  nasp     NASP Figure 3 (supernet validation accuracy vs search wall time, NASP vs DARTS 1st / 2nd order, NB201,
           same epochs) and Figure 2 (parameters and accuracy of the found cell vs the model-size penalty eta)
  asng     ASNG's robustness: oracle accuracy of the final cell over delta_init and lambda, against DARTS over the
           same number of architecture learning rates

Every search is a subprocess of the algos command line (`python algos/<algo>.py ...`), one process and --threads CPU
threads each, --jobs at a time; curves come from each run's metrics.jsonl, the gap from its checkpoint.pt. A re-run
reuses finished runs (genotype.json present) and resumes interrupted ones. Outputs in --out: table.md, raw.csv,
one PNG per panel (matplotlib optional: pip install matplotlib).

CPU (2 cores, about 55 min wall on an idle machine, see table.md for the measured time):
    python benchmarks/claims.py --jobs 2
Commands only (e.g. for a cluster scheduler):  python benchmarks/claims.py --paper-scale --print-commands
Pipeline check, every panel end to end on tiny sizes (< 1 min):
    python benchmarks/claims.py --quick --jobs 2 --out /tmp/claims_quick
The papers' sizes (GPU; full CIFAR-10 in --data-dir, each algos file's own search defaults, 3 seeds):
    python benchmarks/claims.py --paper-scale --device cuda --data-dir ./data --jobs 4 --out benchmarks/results/claims_gpu
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import data  # noqa: E402
import spaces  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
PANELS = ("entropy", "gap", "nb201", "nasp", "asng")

# Sizes per scale and space (flags of every algos file). cpu: the real CIFAR-10 subset averaged down to 16 px,
# single-cell-per-stage supernets, small batches, so that a 2-core machine makes thousands of architecture steps.
# paper: nothing (each algos file's defaults are its paper's search setting) except that the DARTS-space searches
# see 45,000 of the 50,000 training images, so that the gap can be measured on 5,000 held-out ones.
SIZES = {
    "cpu": {"nb201": ["--C", "8", "--layers", "1", "--batch-size", "32", "--train-subset", "2048"],
            "darts": ["--C", "8", "--layers", "3", "--batch-size", "16", "--train-subset", "1024"],
            "nb1shot1-1": ["--C", "8", "--layers", "1", "--batch-size", "32", "--train-subset", "1024"]},
    "quick": {"nb201": ["--C", "4", "--layers", "1", "--batch-size", "32", "--train-subset", "128"],
              "darts": ["--C", "8", "--layers", "3", "--batch-size", "16", "--train-subset", "64"],
              "nb1shot1-1": ["--C", "4", "--layers", "1", "--batch-size", "32", "--train-subset", "64"]},
    "paper": {"nb201": [], "darts": ["--train-subset", "45000"], "nb1shot1-1": []},
}
# epochs per group of runs (None: the algos file's default). cpu: steps per epoch are nb201 64 (ERM) / 32 (bilevel),
# darts 32, nb1shot1 16: the NB201 ERM pair makes 2,048 architecture steps, GDAS 3,072, 1Shot1 1,024, the
# DARTS space 384 (its 3-cell supernet costs ~0.5 s a step on one core).
EPOCHS = {
    "cpu": {"nb201_erm": 32, "nb201": 32, "gdas": 96, "darts": 12, "nb1shot1-1": 64},
    "quick": {"nb201_erm": 2, "nb201": 2, "gdas": 2, "darts": 1, "nb1shot1-1": 2},
    "paper": {"nb201_erm": None, "nb201": None, "gdas": None, "darts": None, "nb1shot1-1": None},
}
VALID_IMAGES = {"cpu": 1000, "quick": 64, "paper": 5000}  # held-out training images of the gap (after the subset)
# the sweeps of panel asng: (delta_init, lambda) for ASNG, Adam learning rates for DARTS (default 3e-4 in the middle)
ASNG_SETTINGS = [(0.25, 2), (1.0, 2), (4.0, 2), (1.0, 4), (1.0, 8)]
DARTS_ARCH_LRS = [3e-5, 1e-4, 3e-4, 1e-3, 3e-3]
NASP_REGS = [0.0, 0.01, 0.1, 1.0]
QUICK_SWEEP = {"asng": ASNG_SETTINGS[1:4:2], "darts_lr": DARTS_ARCH_LRS[2:4], "nasp_reg": NASP_REGS[::3]}
PARAM_FREE = {"none", "skip_connect", "avg_pool_3x3", "max_pool_3x3"}

# The papers' numbers (GAEA Sec. 4.1 and Table 2; NB201 paper via ../shared/reference, Sec. 7.1-7.2)
PAPER_GAP = {"PC-DARTS": (72.17, 15.27), "GAEA PC-DARTS": (75.07, 33.23)}
PAPER_NB201 = {"DARTS (bilevel)": 54.30, "DARTS (ERM)": None, "GAEA DARTS (ERM)": 94.10,
               "GAEA DARTS (bilevel)": 91.87, "GDAS": 93.61, "GAEA GDAS": None}


@dataclass
class Job:
    label: str  # method label in the report
    algo: str
    space: str
    flags: list
    seed: int
    group: str  # which EPOCHS entry
    tags: dict = field(default_factory=dict)  # panel-specific settings (pair, sweep value)
    erm: bool = False

    def argv(self, args) -> list:
        out = ["--space", self.space, *SIZES[args.scale][self.space], "--dataset", args.dataset_path,
               "--data-dir", args.data_dir, "--device", args.device, "--seed", str(self.seed), *self.flags]
        epochs = EPOCHS[args.scale][self.group]
        if epochs is not None:
            out += ["--epochs", str(max(1, round(epochs * args.epoch_scale)))]
        if self.space == "nb201":
            out += ["--nb201-table", args.table]
            if args.scale == "paper" and not self.erm:  # NB201's own 25k / 25k split of the CIFAR-10 training set
                out += ["--split-file", str(SHARED / "nb201" / "splits" / "cifar-split.txt.gz")]
        return out

    def name(self, args) -> str:
        digest = hashlib.sha1(" ".join(self.argv(args)).encode()).hexdigest()[:8]
        slug = "".join(c if c.isalnum() else "_" for c in self.label.lower()).strip("_")
        return f"{slug}_{self.space}_s{self.seed}_{digest}"


def plan(args) -> list[Job]:
    """Every search the selected panels need, each once (panels share runs: nb201 reuses entropy's NB201 pairs,
    nasp and asng reuse nb201's bilevel DARTS runs)."""
    seeds, quick = range(args.seeds), args.scale == "quick"
    w0 = [] if args.scale == "paper" else ["--warmup-epochs", "0"]  # both methods of a pair: see table.md
    cut = [] if args.scale == "paper" else ["--cutout", "8"]  # ASNG's cutout 16 scaled to the 16 px images
    jobs = []
    want = set(args.panels)
    for s in seeds:
        if want & {"entropy", "gap"}:
            for space in ("darts",) + (("nb1shot1-1",) if "entropy" in want else ()):
                jobs += [Job("GAEA PC-DARTS", "gaea_pcdarts", space, w0, s, space, {"pair": space}),
                         Job("PC-DARTS", "gaea_pcdarts", space, ["--arch-update", "softmax-adam", *w0], s, space,
                             {"pair": space})]
        if want & {"entropy", "nb201"}:
            jobs += [Job("GAEA DARTS (ERM)", "gaea_darts_erm", "nb201", [], s, "nb201_erm", {"pair": "nb201"}, True),
                     Job("DARTS (ERM)", "darts", "nb201", ["--single-level"], s, "nb201_erm", {"pair": "nb201"}, True),
                     Job("GAEA GDAS", "gaea_gdas", "nb201", w0, s, "gdas", {"pair": "gdas"}),
                     Job("GDAS", "gaea_gdas", "nb201", ["--arch-update", "softmax-adam", *w0], s, "gdas",
                         {"pair": "gdas"})]
        if want & {"nb201", "nasp", "asng"}:
            jobs.append(Job("DARTS (bilevel)", "darts", "nb201", [], s, "nb201", {"arch_lr": 3e-4}))
        if "nb201" in want:
            jobs.append(Job("GAEA DARTS (bilevel)", "gaea_darts_erm", "nb201", ["--bilevel"], s, "nb201"))
        if "nasp" in want:
            jobs.append(Job("DARTS 2nd order", "darts", "nb201", ["--unrolled"], s, "nb201"))
            for reg in (QUICK_SWEEP["nasp_reg"] if quick else NASP_REGS):
                jobs.append(Job("NASP", "nasp", "nb201", ["--reg", str(reg)] if reg else [], s, "nb201", {"reg": reg}))
        if "asng" in want and s < args.sweep_seeds:
            for delta, lam in (QUICK_SWEEP["asng"] if quick else ASNG_SETTINGS):
                jobs.append(Job("ASNG", "asng", "nb201", ["--delta-init", str(delta), "--lam", str(lam), *cut], s,
                                "nb201", {"setting": f"delta {delta}, lambda {lam}"}))
            for lr in (QUICK_SWEEP["darts_lr"] if quick else DARTS_ARCH_LRS):
                if lr != 3e-4:
                    jobs.append(Job("DARTS (bilevel)", "darts", "nb201", ["--arch-lr", str(lr)], s, "nb201",
                                    {"arch_lr": lr}))
    seen, out = set(), []
    for j in jobs:
        if j.name(args) not in seen:
            seen.add(j.name(args))
            out.append(j)
    return out


# ------------------------------------------------------------------------------------------------ running
def make_dataset(args) -> str:
    """cpu / quick: the real CIFAR-10 subset, each 2x2 pixel block averaged (32 -> 16 px), written once under the
    runs folder (never into the repository). paper: the dataset name as the algos files take it."""
    if args.scale == "paper":
        return args.dataset
    path = Path(args.runs) / "cifar10_16px.npz"
    if not path.is_file():
        with np.load(args.source) as d:
            down = {k: d[k].reshape(len(d[k]), 16, 2, 16, 2, 3).mean((2, 4)).round().astype(np.uint8)
                    for k in ("x_train", "x_test")}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(".tmp_" + path.name)
            np.savez(tmp, **down, y_train=d["y_train"], y_test=d["y_test"])
            os.replace(tmp, path)
    return str(path)


def run_job(job: Job, args) -> dict:
    """Run (or reuse, or resume) one search; returns its result, metrics and run directory."""
    run_dir = Path(args.runs) / job.name(args)
    if not (run_dir / "genotype.json").is_file():
        argv = job.argv(args) + ["--out-dir", str(args.runs), "--run-name", run_dir.name]
        if (run_dir / "checkpoint.pt").is_file():
            argv.append("--resume")
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        proc = subprocess.run([sys.executable, str(ROOT / "algos" / f"{job.algo}.py"), *argv], capture_output=True,
                              text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{job.label} ({job.space}, seed {job.seed}) failed: "
                               f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    result = json.loads((run_dir / "genotype.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    settings = json.loads((run_dir / "args.json").read_text())
    return {"job": job, "dir": run_dir, "result": result, "metrics": metrics, "args": settings}


def steps_per_epoch(settings: dict, n_train: int) -> int:
    """Weight (= architecture) steps per epoch: the weight split's batches (bilevel: half the images)."""
    n = settings.get("train_subset") or n_train
    bilevel = not settings.get("single_level", False) if "single_level" in settings else settings.get("bilevel", True)
    if settings.get("split_file"):
        n = len(data.read_split_file(settings["split_file"])["train"])
    elif bilevel:
        n = int(math.floor(settings.get("train_portion", 0.5) * n))
    return math.ceil(n / settings["batch_size"])


def entropy_curve(run: dict, n_train: int) -> tuple[list, list]:
    """(architecture steps, mean op-weight entropy / its maximum ln K) after every epoch, starting at (0, 1)."""
    settings, space = run["args"], spaces.get_space(run["args"]["space"])
    per_epoch = steps_per_epoch(settings, n_train)
    no_none = run["job"].algo in ("gaea_darts_erm", "nasp") and settings["space"] == "nb201"  # these drop `none`
    xs, ys, steps = [0], [1.0], 0
    for m in run["metrics"]:
        searched = m.get("arch_steps", per_epoch) > 0 and m.get("arch_updated", True)
        steps += per_epoch if searched else 0
        norm = [v / math.log(len(space.ops[g[8:]]) - no_none) for g, v in m.items()
                if g.startswith("entropy_") and g[8:] in space.ops]
        xs.append(steps)
        ys.append(statistics.fmean(norm) if norm else float("nan"))
    return xs, ys


# ------------------------------------------------------------------------- panel gap: supernet accuracy
def _load_algo(name: str):
    spec = importlib.util.spec_from_file_location(f"claims_{name}", ROOT / "algos" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reestimate_bn(model, loader, augment, device, arch) -> None:
    """Reset every BatchNorm's running statistics and recompute them as plain averages over `loader` (train mode,
    no gradient, no weight change) with the architecture `arch`."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for x, _ in loader:
            model(augment(x.to(device)), *arch)


def discretisation_gap(run: dict, args) -> dict:
    """Supernet accuracy (%) on VALID_IMAGES held-out training images (after the search subset) of the final
    checkpoint: continuous weights; derived discrete cell with the search's BN statistics; and with BN statistics
    re-estimated on the search's weight-side training images for the discrete cell."""
    pc = _load_algo("gaea_pcdarts")
    s, device = run["args"], torch.device("cpu" if args.device == "cpu" else args.device)
    arrays, info = data.load_arrays(args.dataset_path, args.data_dir)
    n_sub = s["train_subset"] or len(arrays["y_train"])
    valid = slice(n_sub, n_sub + VALID_IMAGES[args.scale])
    if valid.stop > len(arrays["y_train"]):
        raise RuntimeError(f"the gap needs {VALID_IMAGES[args.scale]} training images after the first {n_sub}")
    space = spaces.get_space(s["space"])
    model = space.supernet(s["C"], s["layers"], info.num_classes, in_channels=info.channels,
                           edge=lambda *a, **k: pc.PartialChannelEdge(*a, **k, k=s["partial_k"])).to(device)
    state = data.load_checkpoint(run["dir"] / "checkpoint.pt")["state"]
    model.load_state_dict(state["model"])
    layout = pc.edge_layout(space)
    alphas, edges = pc.init_arch(space, s["arch_update"], device)
    data.restore({"alphas": alphas, "edges": edges}, {"alphas": state["alphas"], "edges": state["edges"]})
    op_w, edge_w = pc.fixed_weights(alphas, edges, layout, s["arch_update"])
    genotype = pc.derive_genotype(space, alphas, edges, layout, s["arch_update"])
    one_hot = {g: w.to(device) for g, w in spaces.one_hot_weights(space, genotype).items()}
    discrete = (one_hot, {g: w.sum(-1) for g, w in one_hot.items()})
    bs = s["batch_size"]
    valid_loader = data.make_loader(data.ArrayDataset(arrays["x_train"][valid], arrays["y_train"][valid]), bs, False, 0)
    n_w = int(math.floor(s["train_portion"] * n_sub))  # the weight half the search trained on
    train_loader = data.make_loader(data.ArrayDataset(arrays["x_train"][:n_w], arrays["y_train"][:n_w]), bs, False, 0)
    plain = data.Augment(info, False)
    out = {"acc_continuous": 100 * data.evaluate(model, valid_loader, plain, device, op_w, edge_w)[1],
           "acc_discrete_search_bn": 100 * data.evaluate(model, valid_loader, plain, device, *discrete)[1]}
    _reestimate_bn(model, train_loader, plain, device, discrete)
    out["acc_discrete_reestimated_bn"] = 100 * data.evaluate(model, valid_loader, plain, device, *discrete)[1]
    return out


# --------------------------------------------------------------------------------------------- verdicts
def spread(*groups) -> float:
    """The largest max - min over seeds among the groups (0 for single seeds)."""
    return max((max(g) - min(g)) if len(g) > 1 else 0.0 for g in groups)


def compare(better: list, worse: list, higher_is_better: bool = True) -> tuple[str, float, float]:
    """'reproduced' if `better` beats `worse` for every seed pair by rank (sorted, matched) and the difference of
    the means exceeds the seed spread; 'not reproduced' if the reverse holds the same way; else 'inconclusive'
    (always with fewer than 2 seeds a side)."""
    sign = 1 if higher_is_better else -1
    b, w = [sign * v for v in better], [sign * v for v in worse]
    diff, sp = statistics.fmean(b) - statistics.fmean(w), spread(b, w)
    if min(len(b), len(w)) < 2:
        return "inconclusive (one seed)", sign * diff, sp
    if min(b) > max(w) and diff > sp:
        return "reproduced", sign * diff, sp
    if min(w) > max(b) and -diff > sp:
        return "not reproduced", sign * diff, sp
    return "inconclusive", sign * diff, sp


def fmt(values: list, digits: int = 2) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


# Written before the numbers: what could keep a true claim from showing at the cpu scale, and the run that decides it.
DECIDE = {
    "entropy": "At the cpu scale the supernets are 1-3 cells on 16 px images and the DARTS space gets 384 "
               "architecture steps (GAEA's search: 50 epochs x 98 steps = 4,900 at batch 256 on 25k images); EG moves "
               "a weight by the exponent of lr x its gradient, so small gradients of a small supernet move it little. "
               "Deciding run: `python benchmarks/claims.py --paper-scale --device cuda --panels entropy gap`.",
    "gap": "A supernet whose weights are still near uniform loses most of its accuracy when discretised, whatever the "
           "method; the gap only tells the methods apart once panel 1's entropies have separated. Deciding run: as "
           "for panel 1 (the gap is read from the same checkpoints).",
    "nb201": "Small supernets (C=8, one cell per stage) and ~1,000-2,000 architecture steps: DARTS' collapse to "
             "skip connections needs long searches (NB201: 50 epochs on 25k images). Deciding run: "
             "`python benchmarks/claims.py --paper-scale --device cuda --panels nb201`.",
    "nasp": "Wall times are measured on a shared machine (searches run two at a time beside other work); the ratio "
            "of the methods' times is the stable part. NB201 has 6 edges and 4-5 ops, so NASP's saving (one op per "
            "edge in the weight step) is smaller than on the DARTS space's 14 edges x 8 ops. Deciding run: "
            "`--paper-scale --device cuda --panels nasp` (NB201 at C=16, N=5, 50 epochs).",
    "asng": "Two seeds per setting at ~1,000 steps: seed noise may exceed setting effects. Deciding run: "
            "`--paper-scale --device cuda --panels asng --sweep-seeds 3`.",
}

RULES = {
    "entropy": "Per pair, the final normalised entropy H/ln K of each seed. **Reproduced** if every GAEA seed ends "
               "below every base-method seed and the gap of the means exceeds the seed spread (largest max - min over "
               "seeds of either method); **not reproduced** if the base method ends lower the same way; "
               "**inconclusive** otherwise, and always when both methods end within 0.01 of the maximum (neither "
               "moved enough to tell).",
    "gap": "Per method and seed, the drop = continuous - discrete supernet accuracy on the held-out images. The claim "
           "holds if GAEA's discrete accuracy is higher than PC-DARTS' (the paper: 33.23% vs 15.27%). **Reproduced** if "
           "every GAEA seed's discrete accuracy (search BN, the paper's protocol) exceeds every PC-DARTS seed's and the "
           "mean difference exceeds the seed spread; **not reproduced** if the reverse holds the same way; "
           "**inconclusive** otherwise, and always when both discrete accuracies are within 2 points of chance (10%). "
           "The re-estimated-BN numbers are reported beside it, with the same rule, as a second reading.",
    "nb201": "Per pair (GAEA vs base, same data regime), the NB201 oracle CIFAR-10 test accuracy of each seed's final "
             "cell, compared by the rule of `entropy` with higher = better. DARTS collapse: the fraction of DARTS "
             "runs (ERM and bilevel) whose cell has only parameter-free ops (none, skip, pooling).",
    "nasp_fig3": "NASP Fig. 3 claims NASP reaches the supernet validation accuracy of DARTS in a fraction of the "
                 "search time. **Reproduced** if NASP's total search time is below both DARTS orders' for every seed "
                 "AND NASP's final validation accuracy is not below theirs by more than the seed spread; **not "
                 "reproduced** if NASP is slower for every seed or lower by more than the spread; else inconclusive. "
                 "Validation accuracy = the epoch's mean accuracy on the architecture (held-out) batches: the discrete "
                 "child for NASP, the mixture supernet for DARTS, as each paper's curve.",
    "nasp_fig2": "NASP Fig. 2 claims the model-size penalty finds smaller cells at a small cost in accuracy. "
                 "**Reproduced** if the mean parameters of the found cell (NB201 table, CIFAR-10 network) at the "
                 "largest eta are below those at eta = 0 by more than the seed spread and the means do not increase "
                 "with eta; **not reproduced** if the largest eta's cells are not smaller; else inconclusive.",
    "asng": "ASNG claims robustness to its hyperparameters. Sensitivity = max - min over the settings of the mean "
            "oracle accuracy (over seeds). **Reproduced** if ASNG's sensitivity is below DARTS' by more than the mean "
            "within-setting seed spread (of both); **not reproduced** if above by that much; else inconclusive.",
}


# ------------------------------------------------------------------------------------------------ report
def plot_panels(out: Path, curves: dict, rows: list, gaps: list, nasp_curves: dict) -> list[str]:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed: no figures (pip install matplotlib)")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append(name)

    titles = {"darts": "DARTS space", "nb1shot1-1": "NAS-Bench-1Shot1 space 1", "nb201": "NAS-Bench-201 (ERM)",
              "gdas": "NAS-Bench-201, GDAS (sampling distribution)"}
    for pair, methods in curves.items():
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        for i, (label, seed_curves) in enumerate(sorted(methods.items())):
            colour = f"C{i}"
            for xs, ys in seed_curves:
                ax.plot(xs, ys, color=colour, alpha=0.35, lw=0.8)
            n = min(len(c[0]) for c in seed_curves)
            xs = seed_curves[0][0][:n]
            ys = np.array([c[1][:n] for c in seed_curves])
            ax.plot(xs, ys.mean(0), color=colour, lw=2, label=f"{label} ({len(seed_curves)} seeds)")
            ax.fill_between(xs, ys.min(0), ys.max(0), color=colour, alpha=0.15)
        ax.axhline(1.0, color="grey", ls=":", lw=1, label="uniform (ln K)")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set(xlabel="architecture steps", ylabel="mean op-weight entropy / ln K",
               title=f"GAEA Fig. 1: {titles.get(pair, pair)}")
        ax.legend(fontsize=7)
        save(fig, f"entropy_{pair.replace('-', '')}.png")
    if gaps:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        labels = ["PC-DARTS", "GAEA PC-DARTS"]
        keys = [("acc_continuous", "continuous"), ("acc_discrete_search_bn", "discrete, search BN"),
                ("acc_discrete_reestimated_bn", "discrete, BN re-estimated")]
        for k, (key, name) in enumerate(keys):
            for i, label in enumerate(labels):
                vals = [g[key] for g in gaps if g["algorithm"] == label]
                x = i * 4 + k
                ax.bar(x, statistics.fmean(vals), color=f"C{k}", alpha=0.6, label=name if i == 0 else None)
                ax.scatter([x] * len(vals), vals, color="k", s=10, zorder=3)
        for i, label in enumerate(labels):
            for k, v in ((0, PAPER_GAP[label][0]), (1, PAPER_GAP[label][1])):
                ax.scatter(i * 4 + k, v, marker="*", s=120, color="red", zorder=4,
                           label="paper (GAEA Sec. 4.1)" if (i, k) == (0, 0) else None)
        ax.axhline(10, color="grey", ls=":", lw=1)
        ax.set_xticks([1, 5], labels)
        ax.set(ylabel="supernet accuracy on held-out images (%)", title="GAEA Sec. 4.1: discretisation gap (dots: seeds)")
        ax.legend(fontsize=7)
        save(fig, "gap.png")
    nb = [r for r in rows if r.get("panel_nb201")]
    if nb:
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        labels = [lab for lab in PAPER_NB201 if any(r["label"] == lab for r in nb)]
        for i, lab in enumerate(labels):
            vals = [r["oracle_c10_test"] for r in nb if r["label"] == lab]
            ax.scatter([i] * len(vals), vals, color="k", s=14, label="our seeds" if i == 0 else None)
            ax.scatter(i, statistics.fmean(vals), color="C0", marker="_", s=400, label="our mean" if i == 0 else None)
            if PAPER_NB201[lab] is not None:
                ax.scatter(i, PAPER_NB201[lab], marker="*", s=120, color="red", zorder=4,
                           label="paper" if lab == "DARTS (bilevel)" else None)
        ax.set_xticks(range(len(labels)), labels, rotation=25, ha="right", fontsize=7)
        ax.set(ylabel="NB201 oracle CIFAR-10 test acc. (%)", title="GAEA Table 2 ordering (final cells)")
        ax.legend(fontsize=7)
        save(fig, "nb201_table2.png")
    if nasp_curves:
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        for i, (label, seed_curves) in enumerate(sorted(nasp_curves.items())):
            for j, (ts, accs) in enumerate(seed_curves):
                ax.plot(ts, accs, color=f"C{i}", alpha=0.8, lw=1, label=f"{label} ({len(seed_curves)} seeds)" if j == 0 else None)
        ax.set(xlabel="search wall time (s, cumulative epoch time)", ylabel="supernet validation accuracy (%)",
               title="NASP Fig. 3 (NB201, same epochs)")
        ax.legend(fontsize=7)
        save(fig, "nasp_fig3.png")
    reg = [r for r in rows if r["label"] == "NASP" and r.get("reg") != ""]
    if reg:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
        etas = sorted({r["reg"] for r in reg})
        pos = {e: i for i, e in enumerate(etas)}
        for ax, key, name in ((axes[0], "params_M", "found cell's parameters (M, NB201 C10 net)"),
                              (axes[1], "oracle_c10_test", "found cell's oracle C10 test acc. (%)")):
            for e in etas:
                vals = [r[key] for r in reg if r["reg"] == e]
                ax.scatter([pos[e]] * len(vals), vals, color="k", s=12)
                ax.bar(pos[e], statistics.fmean(vals), color="C2", alpha=0.5)
            ax.set_xticks(range(len(etas)), [str(e) for e in etas])
            ax.set(xlabel="model-size penalty eta", ylabel=name)
        fig.suptitle("NASP Fig. 2: effect of the model-size penalty (dots: seeds)", fontsize=9)
        save(fig, "nasp_fig2.png")
    sw = [r for r in rows if r.get("setting")]
    if sw:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        ticks, names = [], []
        for i, lab in enumerate(("ASNG", "DARTS (bilevel)")):
            settings = list(dict.fromkeys(r["setting"] for r in sw if r["label"] == lab))
            for k, st in enumerate(settings):
                vals = [r["oracle_c10_test"] for r in sw if r["label"] == lab and r["setting"] == st]
                x = i * (len(settings) + 1) + k
                ax.scatter([x] * len(vals), vals, color=f"C{i}", s=16, label=lab if k == 0 else None)
                ax.scatter(x, statistics.fmean(vals), color=f"C{i}", marker="_", s=400)
                ticks.append(x)
                names.append(st.replace("arch lr ", "lr ").replace("delta ", "δ=").replace(", lambda ", ", λ="))
        ax.set_xticks(ticks, names, rotation=30, ha="right", fontsize=7)
        ax.set(ylabel="NB201 oracle C10 test acc. (%)",
               title="ASNG over (δ_init, λ) vs DARTS over its arch lr (dots: seeds, bar: mean)")
        ax.legend(fontsize=7)
        save(fig, "asng_robustness.png")
    return made


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="The seed papers' central claims, measured, with verdicts.")
    p.add_argument("--panels", nargs="+", default=list(PANELS), choices=PANELS, help="which claims to measure")
    p.add_argument("--seeds", type=data.positive_int, default=3, help="seeds per method (the sweeps: --sweep-seeds)")
    p.add_argument("--sweep-seeds", type=data.positive_int, default=2, help="seeds per setting of the asng sweeps")
    p.add_argument("--epoch-scale", type=data.positive_float, default=1.0, help="multiply every run's epochs (a "
                   "reduced run; table.md says so)")
    p.add_argument("--jobs", type=data.positive_int, default=1, help="searches at the same time (processes)")
    p.add_argument("--threads", type=data.positive_int, default=1, help="CPU threads per search")
    p.add_argument("--device", default="cpu", help="--device of every search: cpu | cuda | cuda:N")
    p.add_argument("--quick", action="store_true", help="every panel end to end at tiny sizes, 1 seed")
    p.add_argument("--paper-scale", action="store_true", help="the papers' sizes: each algos file's defaults (GPU)")
    p.add_argument("--dataset", default="cifar10", help="--paper-scale: dataset of the searches")
    p.add_argument("--data-dir", default="./data", help="--paper-scale: where the dataset is")
    p.add_argument("--source", default=str(SHARED / "images" / "cifar10_partial.npz"), help="cpu/quick: CIFAR-10 "
                   "subset that is averaged down to 16 px")
    p.add_argument("--table", default=str(SHARED / "nb201" / "nb201_oracle.csv.gz"), help="NB201 oracle CSV")
    p.add_argument("--runs", default=None, help="run directories (default runs/claims[_quick|_paper])")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "claims_cpu"), help="report folder")
    p.add_argument("--print-commands", action="store_true", help="print every search's command line, run nothing")
    args = p.parse_args(argv)
    if args.quick and args.paper_scale:
        p.error("--quick and --paper-scale are two scales: choose one")
    args.scale = "quick" if args.quick else "paper" if args.paper_scale else "cpu"
    if args.quick:
        args.seeds, args.sweep_seeds = 1, 1
    args.runs = args.runs or str(ROOT / "runs" / ("claims" + {"cpu": "", "quick": "_quick", "paper": "_paper"}[args.scale]))
    for path, what in ((args.table, "--table"),) + (((args.source, "--source"),) if args.scale != "paper" else ()):
        if not Path(path).is_file():
            p.error(f"{what}: {path} not found")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.time()
    if args.print_commands:  # e.g. for a cluster scheduler; cpu/quick read the 16 px file made on a real run
        args.dataset_path = args.dataset if args.scale == "paper" else str(Path(args.runs) / "cifar10_16px.npz")
        for job in plan(args):
            print(" ".join(["python", f"algos/{job.algo}.py", *job.argv(args), "--out-dir", args.runs,
                            "--run-name", job.name(args)]))
        return {}
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    args.dataset_path = make_dataset(args)
    jobs = plan(args)
    print(f"{len(jobs)} searches, {args.jobs} at a time", flush=True)
    runs = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for run in pool.map(lambda j: run_job(j, args), jobs):
            r = run["result"]
            print(f"{run['job'].label} {run['job'].space} seed {run['job'].seed} {run['job'].tags}: "
                  f"{r['genotype_str'][:70]} ({r['search_time_s']:.0f} s)", flush=True)
            runs.append(run)
    torch.set_num_threads(args.threads)
    n_train = len(data.load_arrays(args.dataset_path, args.data_dir)[0]["y_train"])
    table = data.load_table(args.table)
    return report(args, runs, table, n_train, time.time() - t_start)


def report(args, runs: list, table: dict, n_train: int, wall: float) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, curves, nasp_curves, gaps, verdicts = [], {}, {}, [], {}
    for run in runs:
        job, r, m = run["job"], run["result"], run["metrics"]
        xs, ys = entropy_curve(run, n_train)
        row = {"label": job.label, "algo": job.algo, "space": job.space, "seed": job.seed, "run": run["dir"].name,
               "pair": job.tags.get("pair", ""), "reg": job.tags.get("reg", ""),
               "setting": job.tags.get("setting", f"arch lr {job.tags['arch_lr']:g}" if "arch_lr" in job.tags else ""),
               "epochs": len(m), "arch_steps": xs[-1], "entropy_final_norm": round(ys[-1], 5),
               "genotype": r["genotype_str"], "search_s": round(r["search_time_s"], 1),
               "final_valid_acc": round(100 * (m[-1].get("arch_acc") or m[-1].get("valid_acc") or float("nan")), 2)}
        if job.space == "nb201":
            o = table[r["genotype_str"]]
            ops = {tok.split("~")[0] for tok in r["genotype_str"].split("|") if "~" in tok}
            row.update(oracle_c10_test=o["c10_test_200"], params_M=o["c10_params_M"], param_free=ops <= PARAM_FREE,
                       panel_nb201=job.label in PAPER_NB201 and ("arch_lr" not in job.tags or job.tags["arch_lr"] == 3e-4))
        if job.tags.get("pair"):
            curves.setdefault(job.tags["pair"], {}).setdefault(job.label, []).append((xs, ys))
        if job.label in ("NASP", "DARTS (bilevel)", "DARTS 2nd order") and job.tags.get("reg", 0) == 0 \
                and job.tags.get("arch_lr", 3e-4) == 3e-4 and "nasp" in args.panels:
            ts = list(np.cumsum([e["epoch_time_s"] for e in m]))
            accs = [100 * (e.get("arch_acc") or e.get("valid_acc") or 0.0) for e in m]
            label = {"DARTS (bilevel)": "DARTS 1st order"}.get(job.label, job.label)
            nasp_curves.setdefault(label, []).append((ts, accs))
            row["panel_nasp_fig3"] = label
        if job.space == "darts" and "gap" in args.panels:
            g = discretisation_gap(run, args)
            row.update({k: round(v, 2) for k, v in g.items()})
            gaps.append({"algorithm": job.label, **g})
        rows.append(row)
    lines = [f"# The seed papers' claims on this machine ({args.scale} scale)", "",
             f"Command: `python benchmarks/claims.py {' '.join(sys.argv[1:]) if sys.argv[0].endswith('claims.py') else ''}`".rstrip(),
             "", setting_text(args, wall, sum(r["search_s"] for r in rows)), ""]
    lines += entropy_section(args, rows, curves, verdicts) + gap_section(args, rows, gaps, verdicts)
    lines += nb201_section(args, rows, verdicts) + nasp_section(args, rows, nasp_curves, verdicts)
    lines += asng_section(args, rows, verdicts)
    figures = plot_panels(out, curves, rows, gaps, nasp_curves)
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    lines += ["## Verdicts", "", "| claim | verdict |", "|---|---|"] + [f"| {k} | {v} |" for k, v in verdicts.items()]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    write_csv(out / "raw.csv", rows)
    print("\n".join(f"{k}: {v}" for k, v in verdicts.items()) + f"\nreport in {out}")
    return verdicts


def setting_text(args, wall: float, search_s: float) -> str:
    sizes = "; ".join(f"{sp}: {' '.join(f)}" for sp, f in SIZES[args.scale].items())
    epochs = ", ".join(f"{g} {e if e is None else max(1, round(e * args.epoch_scale))}" for g, e in EPOCHS[args.scale].items())
    data_text = (f"{args.dataset} (the algos files' own defaults)" if args.scale == "paper" else
                 "the real CIFAR-10 subset (../shared/data/images/cifar10_partial.npz), every 2x2 pixel block averaged "
                 "to 16 x 16 px")
    return (f"**Protocol.** Data: {data_text}. Supernet sizes ({args.scale}): {sizes}. Epochs per group: {epochs}"
            f"{' (epoch scale ' + str(args.epoch_scale) + ': a REDUCED run)' if args.epoch_scale != 1 else ''}. "
            f"Seeds: {args.seeds} per method, {args.sweep_seeds} per sweep setting. Device {args.device}, {args.jobs} "
            f"searches at a time, {args.threads} thread(s) each; the {len(plan(args))} searches took "
            f"{search_s / 60:.1f} min of process time in all (sum of their own wall times), this invocation "
            f"{wall / 60:.1f} min wall (runs reused from an earlier invocation count as zero). Changes for the small scale, the same for "
            "both methods of every pair: warm-up 0 epochs (GAEA PC-DARTS' release has none; PC-DARTS waits 15 of 50, "
            "GAEA GDAS 50 of its epochs; the curves are drawn against architecture steps, so the warm-up only "
            "changes how trained the weights are when the architecture starts to move); 16 px images; one cell per "
            "stage (NB201, 1Shot1) or 3 cells (DARTS space); batch 16-32. ASNG's cutout 16 becomes 8 (16 px images). "
            "Every other setting is each algos file's default (its paper's).")


def _by(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def entropy_section(args, rows, curves, verdicts) -> list:
    if "entropy" not in args.panels:
        return []
    out = ["## 1. GAEA Figure 1: sparsity of the architecture weights", "",
           "**Claim** (GAEA Sec. 4.1, Fig. 1): GAEA's op-weight entropy falls far below its base method's during the "
           "search, on the DARTS space, NAS-Bench-1Shot1 and NB201 (the paper shows curves, no table of numbers). "
           "Also GAEA GDAS vs GDAS (entropy of the sampling distribution).", "", f"**Rule.** {RULES['entropy']}", "",
           f"**What could hide a true claim here.** {DECIDE['entropy']}", "",
           "| pair | method | seeds | arch steps | final H / ln K (mean ± std) | verdict |", "|---|---|---|---|---|---|"]
    for pair, (gaea, base) in (("darts", ("GAEA PC-DARTS", "PC-DARTS")), ("nb1shot1-1", ("GAEA PC-DARTS", "PC-DARTS")),
                               ("nb201", ("GAEA DARTS (ERM)", "DARTS (ERM)")), ("gdas", ("GAEA GDAS", "GDAS"))):
        g = [r["entropy_final_norm"] for r in _by(rows, pair=pair, label=gaea)]
        b = [r["entropy_final_norm"] for r in _by(rows, pair=pair, label=base)]
        if not g or not b:
            continue
        verdict, diff, sp = compare(g, b, higher_is_better=False)
        if min(g) > 0.99 and min(b) > 0.99:
            verdict = "inconclusive"
        verdict += f" (gap {-diff:+.4f}, spread {sp:.4f})"
        verdicts[f"GAEA Fig. 1, {pair}"] = verdict
        steps = _by(rows, pair=pair, label=gaea)[0]["arch_steps"]
        out += [f"| {pair} | {gaea} | {len(g)} | {steps} | {fmt(g, 4)} | {verdict} |",
                f"| {pair} | {base} | {len(b)} | {_by(rows, pair=pair, label=base)[0]['arch_steps']} | {fmt(b, 4)} | |"]
    return out + [""]


def gap_section(args, rows, gaps, verdicts) -> list:
    if "gap" not in args.panels or not gaps:
        return []
    out = ["## 2. GAEA Sec. 4.1: the discretisation gap", "",
           "**Claim** (GAEA Sec. 4.1): supernet accuracy before -> after discretisation, same weights: PC-DARTS "
           "72.17% -> 15.27%, GAEA PC-DARTS 75.07% -> 33.23%: GAEA's sparser weights lose less.", "",
           f"**Rule.** {RULES['gap']}", "",
           f"**What could hide a true claim here.** {DECIDE['gap']}", "",
           f"Measured on {VALID_IMAGES[args.scale]} held-out training images (after the search subset, never the test "
           "set) from the final checkpoint of each DARTS-space run of panel 1. *Search BN* = the running statistics "
           "collected during the search under the mixture (the paper's protocol as we read it: discretise and "
           "evaluate, no re-estimation is described); *re-estimated BN* = statistics reset and recomputed over the "
           "search's weight-side training images with the discrete cell.", "",
           "| method | seeds | continuous | discrete, search BN (paper's protocol) | discrete, re-estimated BN | paper |",
           "|---|---|---|---|---|---|"]
    for label in ("PC-DARTS", "GAEA PC-DARTS"):
        gs = [g for g in gaps if g["algorithm"] == label]
        out.append(f"| {label} | {len(gs)} | {fmt([g['acc_continuous'] for g in gs])} | "
                   f"{fmt([g['acc_discrete_search_bn'] for g in gs])} | {fmt([g['acc_discrete_reestimated_bn'] for g in gs])} "
                   f"| {PAPER_GAP[label][0]} -> {PAPER_GAP[label][1]} |")
    for key, name in (("acc_discrete_search_bn", "search BN"), ("acc_discrete_reestimated_bn", "re-estimated BN")):
        g = [x[key] for x in gaps if x["algorithm"] == "GAEA PC-DARTS"]
        b = [x[key] for x in gaps if x["algorithm"] == "PC-DARTS"]
        verdict, diff, sp = compare(g, b)
        if max(g + b) < 12:
            verdict = "inconclusive (both at chance)"
        verdicts[f"GAEA Sec. 4.1 gap ({name})"] = f"{verdict} (GAEA - PC-DARTS {diff:+.2f} points, spread {sp:.2f})"
    return out + [""]


def nb201_section(args, rows, verdicts) -> list:
    if "nb201" not in args.panels:
        return []
    nb = [r for r in rows if r.get("panel_nb201")]
    out = ["## 3. GAEA Table 2 ordering on NB201", "",
           "**Claim** (GAEA Table 2; NB201 paper): GAEA DARTS beats DARTS in both regimes (ERM 94.10, bilevel 91.87 "
           "[unverified] vs DARTS 54.30, which collapses to the all-skip cell in every NB201 run); GAEA GDAS vs GDAS "
           "(93.61) is the issue's ordering (GAEA GDAS's own number is not in our reference notes).", "",
           f"**Rule.** {RULES['nb201']}", "",
           f"**What could hide a true claim here.** {DECIDE['nb201']}", "",
           "| method | seeds | oracle C10 test (mean ± std) | parameter-free cells | paper |", "|---|---|---|---|---|"]
    for label, paper in PAPER_NB201.items():
        rs = [r for r in nb if r["label"] == label]
        if rs:
            out.append(f"| {label} | {len(rs)} | {fmt([r['oracle_c10_test'] for r in rs])} | "
                       f"{sum(r['param_free'] for r in rs)}/{len(rs)} | {paper if paper is not None else '-'} |")
    for gaea, base in (("GAEA DARTS (ERM)", "DARTS (ERM)"), ("GAEA DARTS (bilevel)", "DARTS (bilevel)"), ("GAEA GDAS", "GDAS")):
        g = [r["oracle_c10_test"] for r in nb if r["label"] == gaea]
        b = [r["oracle_c10_test"] for r in nb if r["label"] == base]
        if g and b:
            verdict, diff, sp = compare(g, b)
            verdicts[f"GAEA Table 2, {gaea} > {base}"] = f"{verdict} ({diff:+.2f} points, spread {sp:.2f})"
    darts = [r for r in nb if r["label"].startswith("DARTS")]
    if darts:
        k = sum(r["param_free"] for r in darts)
        verdicts["DARTS collapse to parameter-free cells (NB201 paper: 3/3)"] = f"{k}/{len(darts)} runs"
    return out + [""]


def nasp_section(args, rows, nasp_curves, verdicts) -> list:
    if "nasp" not in args.panels:
        return []
    out = ["## 4. NASP Figures 3 and 2", "", "**Claim** (NASP Fig. 3): NASP's supernet reaches DARTS' validation accuracy "
           "in much less search time than DARTS (1st and 2nd order), same space and budget (the paper shows curves).",
           "", f"**Rule.** {RULES['nasp_fig3']}", "",
           f"**What could hide a true claim here.** {DECIDE['nasp']}", "",
           "| method | seeds | search time s (mean ± std) | final validation acc. % | epochs |", "|---|---|---|---|---|"]
    groups = {}
    for r in rows:
        if r.get("panel_nasp_fig3"):
            groups.setdefault(r["panel_nasp_fig3"], []).append(r)
    for label, rs in groups.items():
        out.append(f"| {label} | {len(rs)} | {fmt([r['search_s'] for r in rs], 1)} | "
                   f"{fmt([r['final_valid_acc'] for r in rs])} | {rs[0]['epochs']} |")
    if "NASP" in groups:
        nt, na = [r["search_s"] for r in groups["NASP"]], [r["final_valid_acc"] for r in groups["NASP"]]
        others = [groups[k] for k in ("DARTS 1st order", "DARTS 2nd order") if k in groups]
        faster = all(max(nt) < min(r["search_s"] for r in o) for o in others)
        slower = all(min(nt) > max(r["search_s"] for r in o) for o in others)
        acc_ok = all(statistics.fmean(na) >= statistics.fmean([r["final_valid_acc"] for r in o])
                     - spread(na, [r["final_valid_acc"] for r in o]) for o in others)
        verdict = "reproduced" if faster and acc_ok else "not reproduced" if slower or not acc_ok else "inconclusive"
        verdict = verdict if len(nt) > 1 else "inconclusive (one seed)"
        ratio = ", ".join(f"{k} / NASP time {statistics.fmean([r['search_s'] for r in groups[k]]) / statistics.fmean(nt):.2f}x"
                          for k in ("DARTS 1st order", "DARTS 2nd order") if k in groups)
        verdicts["NASP Fig. 3 (faster at no lower accuracy)"] = f"{verdict} ({ratio})"
    out += ["", "**Claim** (NASP Fig. 2): with the model-size penalty eta * sum_k (p_k / p) ||a_k||^2 the search finds "
            "smaller cells at a small cost in accuracy (the paper shows curves).", "", f"**Rule.** {RULES['nasp_fig2']}",
            "", "| eta | seeds | params M (NB201 C10 net) | oracle C10 test % |", "|---|---|---|---|"]
    reg = [r for r in rows if r["label"] == "NASP" and r["reg"] != ""]
    etas = sorted({r["reg"] for r in reg})
    for e in etas:
        rs = [r for r in reg if r["reg"] == e]
        out.append(f"| {e:g} | {len(rs)} | {fmt([r['params_M'] for r in rs], 3)} | {fmt([r['oracle_c10_test'] for r in rs])} |")
    if len(etas) > 1:
        p0 = [r["params_M"] for r in reg if r["reg"] == etas[0]]
        pk = [r["params_M"] for r in reg if r["reg"] == etas[-1]]
        means = [statistics.fmean([r["params_M"] for r in reg if r["reg"] == e]) for e in etas]
        mono = all(b <= a + 1e-9 for a, b in zip(means, means[1:]))
        d = statistics.fmean(p0) - statistics.fmean(pk)
        verdict = ("reproduced" if d > spread(p0, pk) and mono else "not reproduced" if d <= 0 else "inconclusive")
        verdict = verdict if len(p0) > 1 else "inconclusive (one seed)"
        verdicts["NASP Fig. 2 (penalty -> smaller cells)"] = f"{verdict} (params {means[0]:.3f} -> {means[-1]:.3f} M)"
    return out + [""]


def asng_section(args, rows, verdicts) -> list:
    if "asng" not in args.panels:
        return []
    out = ["## 5. ASNG's robustness to its hyperparameters", "",
           "**Claim** (ASNG-NAS, Sec. 1 and experiments): the adaptive step size makes the search robust to its "
           "hyperparameters (delta_init, lambda), unlike gradient-based NAS' sensitivity to its learning rates.", "",
           f"**Rule.** {RULES['asng']}", "",
           f"**What could hide a true claim here.** {DECIDE['asng']}", "",
           "| method | setting | seeds | oracle C10 test % |", "|---|---|---|---|"]
    sens, within = {}, []
    for lab in ("ASNG", "DARTS (bilevel)"):
        sw = [r for r in rows if r["label"] == lab and r["setting"]]
        means = []
        for st in dict.fromkeys(r["setting"] for r in sw):
            vals = [r["oracle_c10_test"] for r in sw if r["setting"] == st][:args.sweep_seeds]
            out.append(f"| {lab} | {st} | {len(vals)} | {fmt(vals)} |")
            means.append(statistics.fmean(vals))
            within.append(spread(vals))
        if means:
            sens[lab] = max(means) - min(means)
    if len(sens) == 2:
        margin = statistics.fmean(within)
        d = sens["DARTS (bilevel)"] - sens["ASNG"]
        verdict = "reproduced" if d > margin else "not reproduced" if -d > margin else "inconclusive"
        verdict = verdict if args.sweep_seeds > 1 else "inconclusive (one seed)"
        verdicts["ASNG robustness (smaller sensitivity than DARTS)"] = (
            f"{verdict} (sensitivity ASNG {sens['ASNG']:.2f} vs DARTS {sens['DARTS (bilevel)']:.2f} points, "
            f"seed spread {margin:.2f})")
    return out + [""]


if __name__ == "__main__":
    main()
