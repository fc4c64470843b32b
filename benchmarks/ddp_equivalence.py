"""Is N-process torchrun search the same experiment as one process with the same global batch? For each mixture
method (darts, gaea_darts_erm, gaea_pcdarts with EG, pcdarts = gaea_pcdarts.py --arch-update softmax-adam, xnas)
this runs one search in one process with --batch-size B and the same search under `torchrun --nproc_per_node N`
(gloo on CPU, B/N per rank), each as its own process, and prints the largest difference of the final architecture
state (logits, simplex weights, PC-DARTS' edge weights too, xnas' log-weights) beside how far the op weights moved
from their start.

Two settings: `no-bn` replaces every BatchNorm2d by the identity (then nothing couples the samples of a batch and
the two runs must agree up to float summation order), and `bn` keeps BatchNorm (each rank normalises with the
statistics of its own B/N samples, the one intended difference; Adam's normalised steps amplify it).

Usage (CPU, 10-30 s per run on a busy 2-core machine; tiny synthetic data, NB201 space, C=4, one cell per stage):
    python benchmarks/ddp_equivalence.py                       # 2 processes, batch 16, 2 epochs, both settings
    python benchmarks/ddp_equivalence.py --nproc 4 --batch 32 --algos darts xnas --settings no-bn
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import data  # noqa: E402

ALGOS = ("darts", "gaea_darts_erm", "gaea_pcdarts", "pcdarts", "xnas")  # pcdarts: gaea_pcdarts.py --arch-update softmax-adam
NO_BN = '''import runpy, sys
import torch.nn as nn


class NoBatchNorm(nn.Identity):
    def __init__(self, *args, **kwargs):
        super().__init__()


if sys.argv[1] == "no-bn":
    nn.BatchNorm2d = NoBatchNorm
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def arch_state(result: dict, keys=("alphas", "edges", "log_weights")) -> np.ndarray:
    """Final architecture state as one vector (wiped-out xnas entries, JSON null, become NaN)."""
    return np.concatenate([np.array(result[k][g], dtype=float).ravel() for k in keys if k in result
                           for g in sorted(result[k])])


def op_movement(algo: str, result: dict) -> float:
    """Largest change of an op weight from its start: logits 1e-3 N(0,1) ~ 0 (darts, pcdarts), uniform simplex rows 1/K
    (gaea_*), log(1/K) (xnas); the edge weights of gaea_pcdarts are not counted."""
    ops = arch_state(result, ("alphas", "log_weights"))
    k = len(next(iter((result.get("alphas") or result["log_weights"]).values()))[0])
    start = {"darts": 0.0, "pcdarts": 0.0, "xnas": -np.log(k)}.get(algo, 1.0 / k)
    return float(np.nanmax(np.abs(ops - start)))


def run(algo: str, nproc: int, setting: str, argv: list, out: Path, runner: Path) -> dict:
    script = str(ROOT / "algos" / f"{'gaea_pcdarts' if algo == 'pcdarts' else algo}.py")
    launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                                                   str(nproc), "--master-port", str(free_port())]
    cmd = [*launch, str(runner), setting, script, *argv, "--out-dir", str(out), "--run-name", "r"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "r" / "genotype.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=int, default=2, help="processes of the torchrun run")
    p.add_argument("--batch", type=int, default=16, help="global batch of both runs")
    p.add_argument("--epochs", type=int, default=2, help="search epochs (the tiny set gives 3 steps per epoch)")
    p.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS, help="methods to compare")
    p.add_argument("--settings", nargs="+", default=["no-bn", "bn"], choices=("no-bn", "bn"), help="see the header")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        npz, runner = tmp / "tiny.npz", tmp / "runner.py"
        np.savez(npz, **data.make_synthetic(96, 32, image_size=16))
        runner.write_text(NO_BN)
        print(f"| method | setting | max abs difference, 1 vs {args.nproc} processes | max op-weight movement from init | "
              f"same genotype |\n|---|---|---|---|---|")
        for algo in args.algos:
            argv = ["--space", "nb201", "--dataset", str(npz), "--C", "4", "--layers", "1", "--batch-size",
                    str(args.batch), "--epochs", str(args.epochs), "--device", "cpu", "--seed", "0"]
            if algo in ("gaea_pcdarts", "pcdarts"):
                argv += ["--warmup-epochs", "0"] + (["--arch-update", "softmax-adam"] if algo == "pcdarts" else [])
            for setting in args.settings:
                one = run(algo, 1, setting, argv, tmp / f"{algo}_{setting}_1", runner)
                many = run(algo, args.nproc, setting, argv, tmp / f"{algo}_{setting}_{args.nproc}", runner)
                a, b = arch_state(one), arch_state(many)
                ok = ~np.isnan(a) & ~np.isnan(b)
                if not np.array_equal(np.isnan(a), np.isnan(b)):
                    print(f"| {algo} | {setting} | other ops wiped out | | |")
                    continue
                print(f"| {algo} | {setting} | {np.abs(a[ok] - b[ok]).max():.2e} | {op_movement(algo, one):.2e} | "
                      f"{one['genotype'] == many['genotype']} |", flush=True)


if __name__ == "__main__":
    main()
