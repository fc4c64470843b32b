"""The DARTS-space experiment end to end, GAEA's three stages (GAEA App. C.1) as one command:

  stage 1  search: the algos file (--algo, any that supports --space darts) with each of --search-seeds;
           flags this script does not know pass through to it (e.g. --arch-update softmax-adam, --unrolled)
  stage 2  select: train every searched cell from scratch (train_eval.py) on the training images minus a held-out
           validation part (--valid-size) and keep the cell with the best VALIDATION accuracy (never test)
  stage 3  train the winner with each of --train-seeds under the full protocol (train_eval.py darts-cifar: C=36,
           20 cells, 600 epochs, cutout 16, auxiliary 0.4, drop path 0.3), and every --references cell (published
           genotypes from spaces.PUBLISHED and `random:K`, K random valid DARTS cells drawn with --random-seed) by
           exactly the same protocol and seeds

Every step is a subprocess of the real CLI (`python algos/<algo>.py ...`, `python train_eval.py ...`) with its own
run directory OUT/{search,select,train}/<name>_<settings hash>_s<seed>. A re-run skips the steps that finished
(genotype.json / summary.json present), resumes the interrupted ones from their checkpoint.pt (`--resume`), and moves
a step killed before its first checkpoint aside (<dir>.interrupted<N>) before starting it again. The hash in each name
covers the step's settings, so runs with other settings never count as done, and two invocations that share an OUT
(e.g. GAEA PC-DARTS and PC-DARTS) share their reference trainings and land in one table.

Outputs (--report-dir, default OUT): raw.csv (one row per search / training: cell, stage, seed, params, valid / test
accuracy, supernet accuracy continuous / discrete, time), table.md (GAEA Table 1's form: best and mean ± std test
error, params, search cost, the papers' numbers beside; and the discretisation check, GAEA Sec. 4.1), cells/*.dot (and
.png when Graphviz `dot` is installed).

The papers' setting (GPU; 5 searches, 5 x 600-epoch selections, 10 x 600-epoch final trainings per cell):
    python benchmarks/darts_space.py --references DARTS_V2 PC_DARTS random:3
    python benchmarks/darts_space.py --arch-update softmax-adam --references DARTS_V2 PC_DARTS random:3
CPU budget on the CIFAR-10 subset (see MINI below; measured on the 2-core machine: two pipelines side by side, one
thread each, 17 min wall, reusing 10 reference trainings that take about 23 min of one core on their own):
    python benchmarks/darts_space.py --mini --threads 1 --references DARTS_V2 PC_DARTS random:3
Pipeline check (tiny synthetic data, < 3 min):  python benchmarks/darts_space.py --quick
Commands only (for a cluster scheduler):         python benchmarks/darts_space.py --print-commands ...
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import data  # noqa: E402
import spaces  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
# the budgets of --mini and --quick; flags given on the command line win. `warmup` is used where the algos file has
# --warmup-epochs. MINI (CIFAR-10 subset, 2 CPU cores): the search sees 2,000 images (1,000 weights / 1,000 arch) for
# 6 epochs (2 warm-up: 64 architecture steps) at C=8, 5 cells; selection trains on 800 and validates on 400 held-out training
# images for 2 epochs; final trainings use 1,500 images, 3 epochs, C=8, 5 cells, batch 64, and the protocol's
# regularisers unchanged (cutout 16, auxiliary 0.4, drop path 0.3); 2 searches, 2 final seeds.
PRESETS = {
    "mini": dict(dataset=str(SHARED / "images" / "cifar10_partial.npz"), search_seeds=[0, 1], train_seeds=[0, 1],
                 search_flags=["--train-subset", "2000", "--C", "8", "--layers", "5", "--batch-size", "64",
                               "--epochs", "6"], warmup=2, select_images=1200, valid_size=400, select_epochs=2,
                 train_flags=["--C", "8", "--layers", "5", "--batch-size", "64"], train_subset=1500, epochs=3),
    "quick": dict(dataset="tiny-synthetic", search_seeds=[0, 1], train_seeds=[0, 1],
                  search_flags=["--train-subset", "48", "--C", "8", "--layers", "3", "--batch-size", "16",
                                "--epochs", "2"], warmup=1, select_images=64, valid_size=32, select_epochs=1,
                  train_flags=["--C", "4", "--layers", "3", "--batch-size", "16", "--auxiliary-weight", "0",
                               "--cutout", "0"], train_subset=64, epochs=1),
}
# GAEA Table 1 (CIFAR-10, DARTS space): test error best / mean ± std (%), params (M), search cost (GPU-days).
# Sources: DARTS paper Table 1 (DARTS, random), PC-DARTS README table (PC-DARTS, DARTS costs), GAEA Table 1.
PAPER = {
    "DARTS_V1": ("-", "3.00 ± 0.14", "3.3", "0.4"), "DARTS_V2": ("-", "2.76 ± 0.09", "3.3", "1.0"),
    "PC_DARTS": ("-", "2.57 ± 0.07", "3.6", "0.1"), "random": ("-", "3.29 ± 0.15", "3.2", "4 (DARTS)"),
    "gaea_pcdarts": ("2.39", "2.50 ± 0.06", "3.7", "0.1"), "pcdarts": ("-", "2.57 ± 0.07", "3.6", "0.1"),
    "darts": ("-", "3.00 ± 0.14", "3.3", "0.4"),
}
PAPER_GAP = {"pcdarts": ("72.17", "15.27"), "gaea_pcdarts": ("75.07", "33.23")}  # GAEA Sec. 4.1, supernet acc. %


class PipelineError(RuntimeError):
    """A step failed or the pipeline's input is unusable."""


@dataclass
class Step:
    stage: str  # search | select | train
    cell: str  # the searched cell's label, a published name or random_<i>
    seed: int
    run_dir: Path
    cmd: list  # fresh start
    done: str  # file whose presence marks the step finished
    resume: list = field(default_factory=list)  # flags continuing it from run_dir/checkpoint.pt
    meta: dict = field(default_factory=dict)

    def status(self) -> str:
        if (self.run_dir / self.done).is_file():
            return "done"
        if (self.run_dir / "checkpoint.pt").is_file():
            return "resume"
        return "stale" if self.run_dir.exists() else "new"

    def command(self) -> list:
        return self.cmd + self.resume if self.status() == "resume" else self.cmd


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="GAEA's search -> select -> retrain pipeline on the DARTS space "
                                            "(defaults: the papers'). Unknown flags pass through to the algos file.")
    p.add_argument("--algo", default="gaea_pcdarts", help="algos/<ALGO>.py, any that supports --space darts")
    p.add_argument("--label", default=None, help="name of the searched cell in the outputs (default: algorithm name "
                   "from the search result, e.g. gaea_pcdarts / pcdarts)")
    p.add_argument("--dataset", default=None, help="cifar10 (default) | path/to/file.npz | synthetic")
    p.add_argument("--data-dir", default="./data", help="where datasets are (or are downloaded to)")
    p.add_argument("--search-seeds", type=int, nargs="+", default=None, help="stage 1 seeds (default GAEA's 5: 0-4)")
    p.add_argument("--valid-size", type=int, default=None, help="stage 2: held-out training images to select on "
                   "(default 5000)")
    p.add_argument("--select-images", type=int, default=None, help="stage 2: use the first N training images, the "
                   "last --valid-size of them for validation (default all)")
    p.add_argument("--select-epochs", type=int, default=None, help="stage 2 epochs (default GAEA's 600; DARTS 100)")
    p.add_argument("--select-seed", type=int, default=0, help="stage 2 training seed")
    p.add_argument("--train-seeds", type=int, nargs="+", default=None, help="stage 3 seeds (default 10: 0-9)")
    p.add_argument("--epochs", type=int, default=None, help="stage 3 epochs (default: train_eval's 600)")
    p.add_argument("--train-subset", type=int, default=None, help="stage 2/3: first N training images (0 = all)")
    p.add_argument("--train-flags", default="", help="more train_eval.py flags for stages 2 and 3, one string, e.g. "
                   "\"--C 36 --layers 20 --cutout 16 --auxiliary-weight 0.4 --drop-path 0.3 --amp\"")
    p.add_argument("--references", nargs="*", default=[], help="published genotypes (" + ", ".join(spaces.PUBLISHED)
                   + ") and random:K, trained by the stage-3 protocol")
    p.add_argument("--random-seed", type=int, default=0, help="seed of the random:K reference cells")
    p.add_argument("--mini", action="store_true", help="the one-core CPU budget on the CIFAR-10 subset (file header)")
    p.add_argument("--quick", action="store_true", help="pipeline check on tiny synthetic data (< 3 min)")
    p.add_argument("--jobs", type=int, default=1, help="steps run at once (each its own process)")
    p.add_argument("--threads", type=int, default=None, help="OMP/torch threads per step (default: inherited)")
    p.add_argument("--device", default="auto", help="--device of every step: auto | cpu | cuda | cuda:N")
    p.add_argument("--out-dir", default=None, help="run directories (default runs/darts_space[_mini|_quick])")
    p.add_argument("--report-dir", default=None, help="raw.csv, table.md, cells/ (default OUT_DIR)")
    p.add_argument("--print-commands", action="store_true", help="print the steps' commands, run nothing")
    args, passthrough = p.parse_known_args(argv)
    if args.mini and args.quick:
        p.error("--mini and --quick are two budgets: choose one")
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        p.error("--jobs and --threads must be >= 1")
    preset = PRESETS["mini" if args.mini else "quick" if args.quick else ""] if (args.mini or args.quick) else {}
    algo_file = ROOT / "algos" / f"{args.algo}.py"
    if not algo_file.is_file():
        p.error(f"--algo {args.algo}: no algos/{args.algo}.py")
    if "--space" in passthrough:
        p.error("--space: this pipeline is the DARTS space's")
    args.passthrough, args.algo_file = passthrough, algo_file
    args.dataset = args.dataset or preset.get("dataset", "cifar10")
    args.search_seeds = args.search_seeds if args.search_seeds is not None else preset.get("search_seeds", list(range(5)))
    args.train_seeds = args.train_seeds if args.train_seeds is not None else preset.get("train_seeds", list(range(10)))
    args.valid_size = args.valid_size if args.valid_size is not None else preset.get("valid_size", 5000)
    args.select_images = args.select_images if args.select_images is not None else preset.get("select_images", 0)
    args.select_epochs = args.select_epochs if args.select_epochs is not None else preset.get("select_epochs", 600)
    args.epochs = args.epochs if args.epochs is not None else preset.get("epochs")
    args.train_subset = args.train_subset if args.train_subset is not None else preset.get("train_subset", 0)
    search = list(preset.get("search_flags", []))
    if "warmup" in preset and '"--warmup-epochs"' in algo_file.read_text() and "--warmup-epochs" not in passthrough:
        search += ["--warmup-epochs", str(preset["warmup"])]
    given = {a for a in passthrough if a.startswith("--")}
    args.search_flags = [f for f in _drop_given(search, given)] + passthrough
    train_flags = shlex.split(args.train_flags)
    args.train_common = _drop_given(preset.get("train_flags", []), {a for a in train_flags if a.startswith("--")}) + train_flags
    args.out_dir = Path(args.out_dir or f"runs/darts_space{'_mini' if args.mini else '_quick' if args.quick else ''}")
    args.report_dir = Path(args.report_dir) if args.report_dir else args.out_dir
    try:
        args.reference_cells = reference_cells(args.references, args.random_seed)
    except (spaces.GenotypeError, ValueError) as err:
        p.error(f"--references: {err}")
    if args.valid_size < 1:
        p.error("--valid-size must be >= 1")
    return args


def _drop_given(flags: list, given: set) -> list:
    """Preset flags ("--name value" pairs) minus those the user gave."""
    out = []
    for i in range(0, len(flags), 2):
        if flags[i] not in given:
            out += flags[i:i + 2]
    return out


# --------------------------------------------------------------------------------------- reference cells
def random_darts_cell(rng: random.Random) -> spaces.DartsGenotype:
    """A uniformly random valid DARTS cell pair: every node picks 2 distinct inputs among its predecessors and for
    each an op other than `none` (the random-search baseline of the DARTS paper samples this way)."""
    ops = [o for o in spaces.DARTS_OPS if o != "none"]
    cells = []
    for _ in ("normal", "reduce"):
        pairs = []
        for node in range(4):
            pairs += [(rng.choice(ops), j) for j in sorted(rng.sample(range(node + 2), 2))]
        cells.append(tuple(pairs))
    return spaces.DartsGenotype(cells[0], (2, 3, 4, 5), cells[1], (2, 3, 4, 5))


def reference_cells(names: list, seed: int) -> list[tuple[str, str, dict]]:
    """(label, kind, genotype JSON) for each --references entry; random:K gives random_0 .. random_{K-1} (fixed seed)."""
    out, rng = [], random.Random(seed)
    for name in names:
        if name.startswith("random:"):
            k = int(name.split(":", 1)[1])
            if k < 1:
                raise ValueError(f"{name}: K must be >= 1")
            out += [(f"random_{i}", "random", random_darts_cell(rng).to_json()) for i in range(k)]
        elif name in spaces.PUBLISHED:
            g = spaces.PUBLISHED[name]
            if any(op not in spaces.DARTS_OPS for op, _ in g.normal + g.reduce):
                raise ValueError(f"{name} is not a cell of the 8-op DARTS space")
            out.append((name, name, g.to_json()))
        else:
            raise ValueError(f"unknown reference {name!r}; published: {', '.join(spaces.PUBLISHED)}, or random:K")
    return out


# ------------------------------------------------------------------------------------------------- steps
def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def dataset_for_steps(args) -> tuple[str, str]:
    """(dataset flag of every step, dataset of stage 2's split). --quick writes a tiny 16 px npz into OUT."""
    if args.dataset != "tiny-synthetic":
        return args.dataset, args.dataset
    path = args.out_dir / "data" / "tiny_synthetic.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_npz(path, data.make_synthetic(96, 32, image_size=16))
    return str(path), str(path)


def _save_npz(path: Path, arrays: dict) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def make_select_split(dataset: str, data_dir: str, n_images: int, valid_size: int, out_dir: Path) -> Path:
    """Stage 2's data: the first n_images training images (all if 0), the last valid_size of them as the `test`
    arrays of a new npz. train_eval.py then reports validation accuracy; the real test set is never looked at."""
    arrays, _ = data.load_arrays(dataset, data_dir)
    x, y = arrays["x_train"], arrays["y_train"]
    if n_images:
        x, y = x[:n_images], y[:n_images]
    if not 0 < valid_size < len(x):
        raise PipelineError(f"--valid-size {valid_size} must be between 0 and the {len(x)} training images")
    stem = Path(dataset).stem if dataset.endswith(".npz") else dataset  # keeps 'cifar10' in the name: its statistics
    path = out_dir / "data" / f"{stem}_select_{len(x)}_v{valid_size}.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_npz(path, {"x_train": x[:-valid_size], "y_train": y[:-valid_size],
                         "x_test": x[-valid_size:], "y_test": y[-valid_size:]})
    return path


def search_steps(args, dataset: str) -> list[Step]:
    py = [sys.executable, str(args.algo_file)]
    steps = []
    for seed in args.search_seeds:
        flags = ["--space", "darts", "--dataset", dataset, "--data-dir", args.data_dir, *args.search_flags]
        name = f"{args.algo}_{digest([args.algo, flags])}_s{seed}"
        flags += ["--seed", str(seed)]
        run = args.out_dir / "search" / name
        steps.append(Step("search", args.label or args.algo, seed, run, py + flags + [
            "--device", args.device, "--out-dir", str(run.parent), "--run-name", name], "genotype.json", ["--resume"]))
    return steps


def train_eval_step(stage: str, cell: str, genotype: str, seed: int, flags: list, out: Path, args, key) -> Step:
    name = f"{cell}_{digest([key, flags])}_s{seed}"
    run = out / stage / name
    cmd = [sys.executable, str(ROOT / "train_eval.py"), "--genotype", genotype, *flags, "--seed", str(seed),
           "--device", args.device, "--out-dir", str(run.parent), "--run-name", name]
    return Step(stage, cell, seed, run, cmd, "summary.json", ["--resume", str(run)], {"genotype": genotype})


def stage3_flags(args, dataset: str) -> list:
    flags = ["--dataset", dataset, "--data-dir", args.data_dir, *args.train_common]
    if args.epochs:
        flags += ["--epochs", str(args.epochs)]
    if args.train_subset:
        flags += ["--train-subset", str(args.train_subset)]
    return flags


def select_steps(args, searches: list[Step], split: str) -> list[Step]:
    flags = ["--dataset", split, *args.train_common, "--epochs", str(args.select_epochs)]
    out = []
    for s in searches:
        step = train_eval_step("select", f"{s.cell}-search{s.seed}", str(s.run_dir / "genotype.json"),
                               args.select_seed, flags, args.out_dir, args, s.run_dir.name)
        step.cell, step.meta["search_seed"], step.meta["search_run"] = s.cell, s.seed, str(s.run_dir)
        out.append(step)
    return out


def pick_winner(selects: list[Step]) -> Step:
    """The selection run with the best validation accuracy (train_eval's `test_acc` on the held-out split);
    ties go to the lower search seed. Test accuracy is never read here."""
    scored = [(json.loads((s.run_dir / "summary.json").read_text())["test_acc"], -s.meta["search_seed"], i)
              for i, s in enumerate(selects)]
    return selects[max(scored)[2]]


def train_steps(args, dataset: str, cells: list[tuple[str, str, str]]) -> list[Step]:
    """Stage 3 for (label, kind, genotype argument) cells, every --train-seeds seed, one protocol."""
    flags = stage3_flags(args, dataset)
    steps = []
    for label, kind, genotype in cells:
        key = genotype
        if genotype.endswith(".json"):  # the cell itself, not its path, decides whether a finished run matches
            d = json.loads(Path(genotype).read_text())
            key = d.get("genotype", d)
        for seed in args.train_seeds:
            step = train_eval_step("train", label, genotype, seed, flags, args.out_dir, args, key)
            step.meta["kind"] = kind
            steps.append(step)
    return steps


# --------------------------------------------------------------------------------------------- execution
def run_step(step: Step, args) -> None:
    status = step.status()
    if status == "done":
        print(f"[skip]   {step.stage} {step.run_dir.name} (finished)", flush=True)
        return
    if status == "stale":  # killed before its first checkpoint: keep it for inspection, start afresh
        n = 1
        while step.run_dir.with_name(f"{step.run_dir.name}.interrupted{n}").exists():
            n += 1
        step.run_dir.rename(step.run_dir.with_name(f"{step.run_dir.name}.interrupted{n}"))
    cmd = step.command()
    log_path = args.out_dir / "logs" / f"{step.stage}_{step.run_dir.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print(f"[{'resume' if status == 'resume' else 'run'}]    {step.stage} {step.run_dir.name}", flush=True)
    t0 = time.time()
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if rc != 0 or not (step.run_dir / step.done).is_file():
        tail = log_path.read_text().strip().splitlines()[-1:] or [""]
        raise PipelineError(f"{step.stage} step {step.run_dir.name} failed (exit {rc}): {tail[0]} (log: {log_path})")
    print(f"[done]   {step.stage} {step.run_dir.name} in {time.time() - t0:.0f}s", flush=True)


def run_all(steps: list[Step], args) -> None:
    if args.jobs == 1:
        for s in steps:
            run_step(s, args)
        return
    with ThreadPoolExecutor(args.jobs) as pool:
        for f in [pool.submit(run_step, s, args) for s in steps]:
            f.result()


def print_commands(title: str, steps: list[Step]) -> None:
    print(f"# {title}")
    for s in steps:
        prefix = "# done: " if s.status() == "done" else ""
        print(prefix + shlex.join(s.command()))


# ----------------------------------------------------------------------------------------------- report
def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _rel(path: Path) -> str:
    return os.path.relpath(path, ROOT)


def raw_rows(plans: list[dict]) -> list[dict]:
    rows = []
    for plan in plans:
        for st in plan["steps"]:
            run = Path(st["run_dir"])
            if st["stage"] == "search":
                g = read_json(run / "genotype.json")
                if g:
                    rows.append(dict(cell=st["cell"], stage="1-search", seed=st["seed"], params="", valid_acc="",
                                     test_acc="", supernet_acc=g.get("supernet_test_acc", ""),
                                     supernet_acc_discrete=g.get("supernet_test_acc_discrete", ""),
                                     time_s=round(g.get("search_time_s", 0.0), 1), run_dir=_rel(run)))
                continue
            s = read_json(run / "summary.json")
            if not s:
                continue
            select = st["stage"] == "select"
            rows.append(dict(cell=st["cell"], stage="2-select" if select else "3-train",
                             seed=st["meta"].get("search_seed", st["seed"]) if select else st["seed"],
                             params=s["params"], valid_acc=s["test_acc"] if select else "",
                             test_acc="" if select else s["test_acc"], supernet_acc="", supernet_acc_discrete="",
                             time_s=round(s.get("train_time_s", 0.0), 1), run_dir=_rel(run)))
    unique = {(r["stage"], r["run_dir"]): r for r in rows}  # shared references appear in several plans
    return sorted(unique.values(), key=lambda r: (r["stage"], r["cell"], int(r["seed"])))


def _mean_std(values: list) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def table_rows(rows: list[dict]) -> list[dict]:
    """One row per cell group (searched cell / published cell / all random cells): best and mean ± std test error
    over its stage-3 trainings, mean params, mean cost of one search (searched cells)."""
    groups: dict[str, list] = {}
    for r in rows:
        if r["stage"] == "3-train":
            groups.setdefault("random" if r["cell"].startswith("random_") else r["cell"], []).append(r)
    out = []
    for name, rs in groups.items():
        errors = [100 * (1 - float(r["test_acc"])) for r in rs]
        searches = [float(r["time_s"]) for r in rows if r["stage"] == "1-search" and r["cell"] == name]
        out.append(dict(cell=name, n=len(rs), cells=len({r["cell"] for r in rs}), best=min(errors),
                        mean_std=_mean_std(errors), params=statistics.mean(float(r["params"]) for r in rs) / 1e6,
                        search_h=statistics.mean(searches) / 3600 if searches else None))
    return sorted(out, key=lambda t: (t["search_h"] is not None, t["cell"]))


def gap_rows(rows: list[dict]) -> list[dict]:
    out = {}
    for r in rows:
        if r["stage"] == "1-search" and r["supernet_acc_discrete"] != "":
            out.setdefault(r["cell"], []).append((100 * float(r["supernet_acc"]), 100 * float(r["supernet_acc_discrete"])))
    return [dict(cell=c, n=len(v), cont=_mean_std([a for a, _ in v]), disc=_mean_std([b for _, b in v]))
            for c, v in sorted(out.items())]


def render_table(rows: list[dict], protocol: str) -> str:
    lines = ["Test error on the dataset's test set after stage 3; every cell is trained by the same protocol: "
             "train_eval.py with", f"`{protocol}`", "and the darts-cifar defaults for every flag not shown (cutout 16, "
             "auxiliary weight 0.4, drop path 0.3, SGD lr 0.025 cosine to 0, momentum 0.9, wd 3e-4, grad clip 5).", "",
             "| Architecture | Test error best (%) | Test error mean ± std (%) | trainings | Params (M) | "
             "Search cost (CPU/GPU-h, one search) | paper: best | paper: mean ± std | paper: params (M) | "
             "paper: search cost (GPU-days) |", "|" + "---|" * 10]
    for t in table_rows(rows):
        paper = PAPER.get(t["cell"], ("-",) * 4)
        name = f"random ({t['cells']} cells)" if t["cell"] == "random" else t["cell"]
        cost = f"{t['search_h']:.3f}" if t["search_h"] is not None else "-"
        lines.append(f"| {name} | {t['best']:.2f} | {t['mean_std']} | {t['n']} | {t['params']:.3f} | {cost} | "
                     + " | ".join(paper) + " |")
    selects = [r for r in rows if r["stage"] == "2-select"]
    if selects:
        lines += ["", "Stage 2 (selection): each searched cell trained from scratch on the training images minus a "
                  "held-out part, accuracy on that held-out VALIDATION part (the test set is not used); the best one "
                  "goes to stage 3.", "", "| Search | search seed | validation accuracy (%) | selected |", "|---|---|---|---|"]
        best = {}
        for r in selects:
            key = (float(r["valid_acc"]), -int(r["seed"]))
            best[r["cell"]] = max(best.get(r["cell"], key), key)
        for r in selects:
            chosen = (float(r["valid_acc"]), -int(r["seed"])) == best[r["cell"]]
            lines.append(f"| {r['cell']} | {r['seed']} | {100 * float(r['valid_acc']):.2f} | {'yes' if chosen else ''} |")
    gaps = gap_rows(rows)
    if gaps:
        lines += ["", "Discretisation check (GAEA Sec. 4.1): supernet accuracy (%) at the end of each search on the "
                  "algos file's evaluation set (the dataset's test set; GAEA reports its validation split), with its continuous architecture weights and with the derived discrete cell (same "
                  "shared weights, no retraining).", "",
                  "| Search | searches | continuous | discrete | paper: continuous | paper: discrete |", "|" + "---|" * 6]
        for g in gaps:
            pc, pd = PAPER_GAP.get(g["cell"], ("-", "-"))
            lines.append(f"| {g['cell']} | {g['n']} | {g['cont']} | {g['disc']} | {pc} | {pd} |")
    return "\n".join(lines) + "\n"


def write_report(args, plan_key: str) -> list[dict]:
    plans = [json.loads(p.read_text()) for p in sorted((args.out_dir / "plans").glob(f"*_{plan_key}.json"))]
    rows = raw_rows(plans)
    rep = args.report_dir
    (rep / "cells").mkdir(parents=True, exist_ok=True)
    fields = ["cell", "stage", "seed", "params", "valid_acc", "test_acc", "supernet_acc", "supernet_acc_discrete",
              "time_s", "run_dir"]
    with open(rep / "raw.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)
    (rep / "table.md").write_text(render_table(rows, plans[0]["protocol"] if plans else ""))
    for plan in plans:
        for label, genotype in plan["cells"].items():
            dot = rep / "cells" / f"{label}.dot"
            dot.write_text(spaces.genotype_to_dot(spaces.genotype_from_json(genotype)))
            if shutil.which("dot"):
                subprocess.run(["dot", "-Tpng", str(dot), "-o", str(dot.with_suffix(".png"))], check=False)
    return rows


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    dataset, split_source = dataset_for_steps(args)
    searches = search_steps(args, dataset)
    split = make_select_split(split_source, args.data_dir, args.select_images, args.valid_size, args.out_dir)
    refs_dir = args.out_dir / "cells"
    ref_cells = []
    for label, kind, genotype in args.reference_cells:
        path = refs_dir / f"{label}_{digest(genotype)}.json"
        refs_dir.mkdir(parents=True, exist_ok=True)  # inputs of the reference commands (also when only printed)
        path.write_text(json.dumps(genotype, indent=1) + "\n")
        ref_cells.append((label, kind, str(path) if kind == "random" else kind))
    references = train_steps(args, dataset, ref_cells)
    selects = select_steps(args, searches, str(split))
    protocol = shlex.join(stage3_flags(args, dataset))
    plan_key = digest(stage3_flags(args, dataset) + [args.train_seeds])
    if args.print_commands:
        print_commands("stage 1: search", searches)
        print_commands(f"stage 2: select (train on the split {split}, pick the best validation accuracy)", selects)
        label = args.label or read_json(searches[0].run_dir / "genotype.json").get("algorithm", args.algo)
        if all(s.status() == "done" for s in selects):
            finals = train_steps(args, dataset, [(label, "searched", pick_winner(selects).meta["genotype"])])
            print_commands("stage 3: final training of the winner (best validation accuracy in stage 2)", finals)
        else:
            print_commands("stage 3: final training of the winner (WINNER_GENOTYPE_JSON: the genotype.json of the "
                           "search whose stage-2 run has the best validation accuracy; rerun --print-commands once "
                           "stage 2 has finished to get these lines filled in)", [train_eval_step(
                               "train", label, "WINNER_GENOTYPE_JSON", seed, stage3_flags(args, dataset), args.out_dir,
                               args, "WINNER") for seed in args.train_seeds])
        print_commands("stage 3: references", references)
        return []
    t0 = time.time()
    run_all(searches + references, args)  # independent of each other
    run_all(selects, args)
    label = args.label or read_json(searches[0].run_dir / "genotype.json").get("algorithm", args.algo)
    for s in searches + selects:
        s.cell = label
    winner = pick_winner(selects)
    winner_cell = (label, "searched", winner.meta["genotype"])
    finals = train_steps(args, dataset, [winner_cell])
    run_all(finals, args)
    cells = {label: read_json(Path(winner.meta["genotype"]))["genotype"]}
    cells.update({lab: g for lab, _, g in args.reference_cells})
    plan = {"label": label, "protocol": protocol, "winner": winner.meta["search_run"], "cells": cells,
            "steps": [dict(stage=s.stage, cell=s.cell, seed=s.seed, run_dir=str(s.run_dir), meta=s.meta)
                      for s in searches + selects + finals + references]}
    (args.out_dir / "plans").mkdir(parents=True, exist_ok=True)
    (args.out_dir / "plans" / f"{label}_{plan_key}.json").write_text(json.dumps(plan, indent=1) + "\n")
    rows = write_report(args, plan_key)
    print(f"winner ({label}, best validation accuracy): {winner.meta['search_run']}\n"
          f"{(args.report_dir / 'table.md').read_text()}report in {args.report_dir} | {time.time() - t0:.0f}s")
    return rows


if __name__ == "__main__":
    try:
        main()
    except (PipelineError, data.DataError, spaces.SpaceError, spaces.GenotypeError) as err:
        sys.exit(f"error: {err}")
