"""Checkpoint size and write time of every search at the paper's default sizes.

Each algorithm runs one epoch of its default supernet (the default space: DARTS, NB201 for gaea_darts_erm and gaea_gdas; the paper's C and cells) on a few synthetic
images, with batch 8 (the batch size does not change what a checkpoint holds, and keeps the CPU memory small); the time of every `data.save_checkpoint` call (torch.save to a temporary file, fsync, rename) is
measured around the real call, and the checkpoint's size is read from disk.

    python benchmarks/checkpoint_cost.py [--device cpu] [--out benchmarks/results/checkpoint_cost_cpu.txt]
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "algos")]
import data  # noqa: E402

# one epoch, the architecture updated in it (warm-up off), everything else the file's default
ALGOS = {"darts": [], "gaea_darts_erm": [], "gaea_pcdarts": ["--warmup-epochs", "0"], "xnas": [],
         "gaea_gdas": ["--warmup-epochs", "0"], "nasp": [], "nasp --ops 12": ["--ops", "12"], "asng": []}


def measure(name: str, extra: list, device: str, repeats: int) -> dict:
    mod = importlib.import_module(name.split()[0])
    times = []
    real = data.save_checkpoint

    def timed(path, obj):
        t0 = time.perf_counter()
        real(path, obj)
        times.append(time.perf_counter() - t0)

    data.save_checkpoint = timed
    try:
        with tempfile.TemporaryDirectory() as out:
            res = mod.main(["--dataset", "synthetic", "--train-subset", "32", "--batch-size", "8", "--epochs", "1", "--device", device,
                            "--out-dir", out, *extra])
            ckpt = Path(res["run_dir"]) / data.CHECKPOINT
            state = __import__("torch").load(ckpt, weights_only=True)
            for _ in range(repeats - 1):  # the same checkpoint written again: a median, not one noisy sample
                timed(ckpt, state)
            size = ckpt.stat().st_size
    finally:
        data.save_checkpoint = real
    return {"algo": name, "size_mb": size / 2**20, "write_s": statistics.median(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--repeats", type=int, default=5, help="checkpoint writes per algorithm (median reported)")
    p.add_argument("--out", default=None, help="also write the table to this file")
    args = p.parse_args()
    rows = [measure(name, extra, args.device, args.repeats) for name, extra in ALGOS.items()]
    lines = ["| algorithm (the file's default space, C and cells) | checkpoint MiB | write s (median) |", "|---|---|---|"]
    lines += [f"| {r['algo']} | {r['size_mb']:.2f} | {r['write_s']:.3f} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
