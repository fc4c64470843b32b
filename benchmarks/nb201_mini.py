"""A small reproduction of the GAEA paper's NAS-Bench-201 table (Table 2) and Figure 1.

Runs every NB201-capable algorithm on the real CIFAR-10 subset (../shared/data/images/cifar10_partial.npz, or
full CIFAR-10 with --dataset cifar10) at a reduced supernet size that fits a CPU budget, over several seeds,
looks each derived cell up in the NB201 oracle table, and writes:
  raw.csv       one row per (algorithm, seed): derived cell, oracle test accuracies, search time
  table.md      mean ± std over seeds of the oracle CIFAR-10 / CIFAR-100 / ImageNet16-120 test accuracy + search time
  curves.csv    per epoch: oracle CIFAR-10 test accuracy of the derived cell and mean op-weight entropy
  curves.png    the same as plots (only when matplotlib is installed: an optional benchmark dependency)

CPU (default, reduced): python benchmarks/nb201_mini.py
Quick check:            python benchmarks/nb201_mini.py --quick
Several searches at once: python benchmarks/nb201_mini.py --jobs 2  (one process and --threads CPU threads each)
GPU, the papers' size:  python benchmarks/nb201_mini.py --full --dataset cifar10 --device cuda
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# (label, algos file, extra flags): each NB201-capable algorithm and its baseline variants
RUNS = [
    ("DARTS (bilevel)", "darts", []),
    ("DARTS (ERM)", "darts", ["--single-level"]),
    ("GAEA DARTS (ERM)", "gaea_darts_erm", []),
    ("GAEA DARTS (bilevel)", "gaea_darts_erm", ["--bilevel"]),
    ("GDAS", "gaea_gdas", ["--arch-update", "softmax-adam"]),
    ("GAEA GDAS", "gaea_gdas", []),
    ("GAEA PC-DARTS", "gaea_pcdarts", []),
    ("XNAS", "xnas", []),
    ("NASP", "nasp", []),
    ("ASNG", "asng", []),
]
ORACLE_COLUMNS = {"c10_test_200": "CIFAR-10", "c100_test_200": "CIFAR-100", "in16_test_200": "ImageNet16-120"}


def size_flags(args) -> list[str]:
    flags = ["--space", "nb201", "--dataset", args.dataset, "--epochs", str(args.epochs), "--C", str(args.C),
             "--layers", str(args.layers), "--batch-size", str(args.batch_size), "--device", args.device]
    if args.train_subset:
        flags += ["--train-subset", str(args.train_subset)]
    return flags


def run_one(label, algo, extra, seed, args, table: dict, out_dir) -> tuple[dict, list[dict]]:
    """One search as its own process (`python algos/<algo>.py ...`, as a user runs it); returns (raw row,
    per-epoch curve rows) read back from the run's genotype.json and metrics.jsonl."""
    if algo == "gaea_pcdarts":  # GAEA PC-DARTS warms up 10 of 50 epochs: keep that fifth at reduced length
        extra = extra + ["--warmup-epochs", str(args.epochs // 5)]
    if algo == "gaea_gdas" and not extra:  # GAEA GDAS warms up 50 of 150 epochs (the release): keep that third
        extra = ["--warmup-epochs", str(args.epochs // 3)]
    run_name = f"{algo}{'_'.join([''] + [e.strip('-') for e in extra if not e[0].isdigit()])}_s{seed}"
    argv = size_flags(args) + extra + ["--seed", str(seed), "--out-dir", str(out_dir / "runs"),
                                       "--run-name", run_name, "--nb201-table", str(args.table)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "algos" / f"{algo}.py"), *argv], capture_output=True,
                          text=True, env=env)
    seconds = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{label} seed {seed} failed: {proc.stderr.strip().splitlines()[-1:]}")
    run_dir = Path(proc.stdout.strip().splitlines()[-1].removeprefix("results in ").strip())
    result = json.loads((run_dir / "genotype.json").read_text())
    arch = result["genotype_str"]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    row = {"algorithm": label, "seed": seed, "arch_str": arch, "search_s": round(seconds, 1)}
    oracle = table[arch]
    row.update({col: oracle[col] for col in ORACLE_COLUMNS})
    curves = [{"algorithm": label, "seed": seed, "epoch": m["epoch"],
               "oracle_c10_test_200": m.get("oracle_c10_test_200", float("nan")),
               "entropy": statistics.fmean(v for k, v in m.items() if k.startswith("entropy_"))} for m in metrics]
    return row, curves


def summarize(rows: list[dict]) -> str:
    """Markdown table: mean ± std over seeds per algorithm, in RUNS order."""
    lines = ["| method | seeds | " + " | ".join(f"{v} test" for v in ORACLE_COLUMNS.values()) + " | search s |",
             "|---" * (3 + len(ORACLE_COLUMNS)) + "|"]
    for label, _, _ in RUNS:
        group = [r for r in rows if r["algorithm"] == label]
        if not group:
            continue
        cells = []
        for col in list(ORACLE_COLUMNS) + ["search_s"]:
            vals = [float(r[col]) for r in group]
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.fmean(vals):.2f} ± {std:.2f}")
        lines.append(f"| {label} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(curves: list[dict], path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed: skipping curves.png (pip install matplotlib)")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, _, _ in RUNS:
        group = [c for c in curves if c["algorithm"] == label]
        if not group:
            continue
        epochs = sorted({c["epoch"] for c in group})
        for ax, key in zip(axes, ("oracle_c10_test_200", "entropy")):
            means = [statistics.fmean(c[key] for c in group if c["epoch"] == e) for e in epochs]
            ax.plot(epochs, means, marker="o", markersize=3, label=label)
    axes[0].set(xlabel="epoch", ylabel="oracle CIFAR-10 test accuracy (%)", title="derived cell in NB201")
    axes[1].set(xlabel="epoch", ylabel="mean entropy of op weights (nats)", title="architecture entropy")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=str(SHARED / "images" / "cifar10_partial.npz"), help="dataset for the search")
    p.add_argument("--table", default=str(SHARED / "nb201" / "nb201_oracle.csv.gz"), help="NB201 oracle CSV")
    p.add_argument("--seeds", type=int, default=3, help="seeds per algorithm")
    p.add_argument("--epochs", type=int, default=10, help="search epochs (reduced; the papers use 25-250)")
    p.add_argument("--C", type=int, default=8, help="supernet channels (the papers: 16)")
    p.add_argument("--layers", type=int, default=1, help="cells per stage (the papers: 5)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size")
    p.add_argument("--train-subset", type=int, default=2048, help="training images used (0 = all)")
    p.add_argument("--only", nargs="*", default=None, help="run only these algorithm labels or algos file names")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--jobs", type=int, default=1, help="searches run at the same time (separate processes)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per search process")
    p.add_argument("--quick", action="store_true", help="tiny size, 1 seed, 2 epochs: checks the pipeline")
    p.add_argument("--full", action="store_true", help="the papers' supernet (C=16, N=5), all data, 50 epochs (GPU)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nb201_mini"), help="output folder")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.C, args.layers, args.train_subset = 1, 2, 4, 1, 256
    if args.full:
        args.C, args.layers, args.train_subset, args.epochs = 16, 5, 0, 50
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import data  # noqa: E402 (the repository root is on the path only when this script runs)

    table = data.load_table(args.table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    selected = [r for r in RUNS if args.only is None or r[0] in args.only or r[1] in args.only]
    jobs = [(label, algo, extra, seed) for label, algo, extra in selected for seed in range(args.seeds)]
    rows, curves = [], []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each search is its own process
        futures = [pool.submit(run_one, *job, args, table, out) for job in jobs]
        for future in futures:
            row, curve = future.result()
            rows.append(row)
            curves += curve
            print(f"{row['algorithm']} seed {row['seed']}: {row['arch_str']} -> C10 {row['c10_test_200']:.2f} "
                  f"({row['search_s']} s)", flush=True)
    write_csv(out / "raw.csv", rows)
    write_csv(out / "curves.csv", curves)
    setting = (f"dataset {Path(args.dataset).name}, train images {args.train_subset or 'all'}, C={args.C}, "
               f"N={args.layers}, batch {args.batch_size}, {args.epochs} epochs, {args.seeds} seeds, device {args.device}, "
               f"{args.jobs} searches at a time (search_s is wall time under that sharing)")
    (out / "table.md").write_text(f"Setting: {setting}\n\n" + summarize(rows))
    plot(curves, out / "curves.png")
    print(f"\n{setting}\n" + summarize(rows) + f"\nresults in {out}")
    return rows


if __name__ == "__main__":
    main()
