"""GAEA Figure 2 in form: NAS-Bench-1Shot1 test regret vs search epoch, GAEA variants against their base methods.

Pairs (GAEA Sec. 5.2, Fig. 2): GAEA PC-DARTS vs PC-DARTS (`gaea_pcdarts.py --arch-update eg | softmax-adam`) and
GAEA DARTS vs DARTS (`gaea_darts_erm.py` vs `darts.py`), on 1Shot1 search spaces 1, 2 and 3, several seeds. Every
search logs the derived cell's NB101 test regret per epoch (`--nb101-table`, data.nb101_metrics: mean NB101 test
error of the cell over its 3 repeats minus the space's best single-run error, in percent points; null for a cell
the table lacks). Writes OUT/curves.csv (method, space, seed, epoch, regret), OUT/table.md (final regret, mean and
std over seeds) and OUT/regret.png (mean +- std band per method, one panel per space; needs matplotlib).

    python benchmarks/nb1shot1_regret.py --nb101-table nasbench_only108.tfrecord [--seeds 4 --epochs 50]
    python benchmarks/nb1shot1_regret.py --nb101-table FILE --quick   # 1 seed, 1 epoch, tiny supernets: a check

Without an NB101 file it prints one line naming what it needs. The default data is the real CIFAR-10 subset in
../shared/data (the papers: full CIFAR-10, 50 (DARTS) / 100 (PC-DARTS) epochs; add --dataset cifar10 on a GPU).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = [("GAEA PC-DARTS", "gaea_pcdarts", ["--arch-update", "eg"]),
           ("PC-DARTS", "gaea_pcdarts", ["--arch-update", "softmax-adam"]),
           ("GAEA DARTS (ERM)", "gaea_darts_erm", []),
           ("DARTS (1st order)", "darts", [])]


def search(method, space, seed, args, out: Path) -> list[dict]:
    label, algo, extra = method
    name = f"{algo}_{'_'.join(extra).replace('-', '')}_{space}_s{seed}"
    cmd = [sys.executable, str(ROOT / "algos" / f"{algo}.py"), *extra, "--space", space, "--seed", str(seed),
           "--nb101-table", args.nb101_table, "--dataset", args.dataset, "--epochs", str(args.epochs),
           "--C", str(args.C), "--batch-size", str(args.batch_size), "--device", args.device,
           "--out-dir", str(out / "runs"), "--run-name", name]
    if args.train_subset:
        cmd += ["--train-subset", str(args.train_subset)]
    if algo == "gaea_pcdarts":
        cmd += ["--warmup-epochs", str(args.epochs // 5)]  # PC-DARTS warms up a fifth of its epochs
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if proc.returncode != 0:
        raise SystemExit(f"error: {label} on {space} seed {seed} failed: {proc.stderr.strip().splitlines()[-1:]}")
    lines = (out / "runs" / name / "metrics.jsonl").read_text().splitlines()
    return [{"method": label, "space": space, "seed": seed, "epoch": m["epoch"], "regret": m.get("nb101_test_regret")}
            for m in map(json.loads, lines)]


def summarise(rows: list[dict], out: Path) -> str:
    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "space", "seed", "epoch", "regret"])
        w.writeheader()
        w.writerows(rows)
    last = max(r["epoch"] for r in rows)
    lines = ["| method | space | seeds with a score | final test regret (%, mean ± std) |", "|---|---|---|---|"]
    for space in dict.fromkeys(r["space"] for r in rows):
        for label, *_ in METHODS:
            vals = [r["regret"] for r in rows if r["space"] == space and r["method"] == label and r["epoch"] == last
                    and r["regret"] is not None]
            n = len({r["seed"] for r in rows if r["space"] == space and r["method"] == label})
            cell = (f"{statistics.mean(vals):.2f} ± {statistics.pstdev(vals):.2f}" if vals else "- (no NB101 test accuracy for the cells)")
            lines.append(f"| {label} | {space} | {len(vals)}/{n} | {cell} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("regret.png skipped: pip install matplotlib")
        return
    spaces_ = list(dict.fromkeys(r["space"] for r in rows))
    fig, axes = plt.subplots(1, len(spaces_), figsize=(5 * len(spaces_), 4), squeeze=False)
    for ax, space in zip(axes[0], spaces_):
        for label, *_ in METHODS:
            sel = [r for r in rows if r["space"] == space and r["method"] == label and r["regret"] is not None]
            epochs = sorted({r["epoch"] for r in sel})
            if not epochs:
                continue
            per = [[r["regret"] for r in sel if r["epoch"] == e] for e in epochs]
            mean = [statistics.mean(v) for v in per]
            std = [statistics.pstdev(v) for v in per]
            ax.plot(epochs, mean, label=f"{label} ({len({r['seed'] for r in sel})} seeds)")
            ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        ax.set(title=space, xlabel="search epoch", ylabel="NB101 test regret (%)", yscale="log")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "regret.png", dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nb101-table", default=None, help="nasbench_only108.tfrecord / nasbench_full.tfrecord or an NB101 CSV")
    p.add_argument("--spaces", nargs="+", default=["nb1shot1-1", "nb1shot1-2", "nb1shot1-3"], help="1Shot1 spaces")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method and space")
    p.add_argument("--epochs", type=int, default=10, help="search epochs (the papers: 50 / 100)")
    p.add_argument("--dataset", default=str(ROOT.parent / "shared/data/images/cifar10_partial.npz"), help="search data")
    p.add_argument("--train-subset", type=int, default=2000, help="training images (0 = all)")
    p.add_argument("--C", type=int, default=8, help="supernet channels (1Shot1: 16)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--jobs", type=int, default=2, help="searches at once")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per search")
    p.add_argument("--quick", action="store_true", help="1 seed, 1 epoch, 64 images, C=4, space 1: an end-to-end check")
    p.add_argument("--out", default="benchmarks/results/nb1shot1_regret", help="report directory")
    args = p.parse_args(argv)
    if not args.nb101_table or not Path(args.nb101_table).is_file():
        raise SystemExit("error: needs --nb101-table: NAS-Bench-101's nasbench_only108.tfrecord (or nasbench_full, or an "
                         "NB101 CSV with module_hash or matrix + ops columns); see README, 'Running offline'")
    if args.quick:
        args.seeds, args.epochs, args.train_subset, args.C, args.batch_size, args.spaces = 1, 1, 64, 4, 16, args.spaces[:1]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(m, s, seed) for s in args.spaces for m in METHODS for seed in range(args.seeds)]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = [r for rows in pool.map(lambda j: search(*j, args, out), jobs) for r in rows]
    print(summarise(rows, out))
    plot(rows, out)


if __name__ == "__main__":
    main()
