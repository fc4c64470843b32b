"""The run object's overhead (data.Run) against the search step it wraps, at DARTS' default sizes.

Measured side by side in one process: one DARTS first-order search step (architecture step + weight step; DARTS
space, C=16, 8 cells, batch 64, 32 px, 10 classes); the per-step cost of `Run.steps` (running sums, the non-finite
check, the progress line) over the same number of batches with no work in them, against a bare loop; and the
per-epoch cost of `Run.end_epoch` (checkpoint of the real supernet and optimizers, metrics line, the cross-rank and
non-finite checks), spread over the 391 steps of a CIFAR-10 epoch (25,000 images / 64). Medians of --repeats.

    python benchmarks/plumbing.py --threads 1 [--out benchmarks/results/plumbing_cpu.txt]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "algos")]
import darts  # noqa: E402
import data  # noqa: E402
import spaces  # noqa: E402


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=3, help="repeats per measurement (median)")
    p.add_argument("--steps-per-epoch", type=int, default=391, help="steps an epoch's checkpoint is spread over")
    p.add_argument("--out", default=None, help="also write the report to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    space = spaces.get_space("darts")
    model = space.supernet(16, 8, 10)
    alphas = darts.init_alphas(space, "cpu")
    opt = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    arch_opt = torch.optim.Adam(alphas.values(), 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))

    def search_step():
        darts.arch_step(model, alphas, arch_opt, x, y)
        darts.weight_step(model, alphas, opt, x, y, 5.0)

    search_step()  # warm-up
    step_s = median_time(search_step, args.repeats)
    n = args.steps_per_epoch
    with tempfile.TemporaryDirectory() as out:
        ns = argparse.Namespace(epochs=50, out_dir=out, run_name="r", resume=False, tensorboard=False,
                                deterministic=False, log_every=50)
        run = data.Run(ns, "r", argv=[])
        run.restore({})
        batches = list(range(n))

        def with_run():
            sums = {"train_loss": 0.0, "train_acc": 0.0, "arch_loss": 0.0, "arch_acc": 0.0}
            for _ in run.steps(batches, 1, sums):
                for k in sums:
                    sums[k] += 0.5

        def bare():
            sums = {"train_loss": 0.0, "train_acc": 0.0, "arch_loss": 0.0, "arch_acc": 0.0}
            for _ in batches:
                for k in sums:
                    sums[k] += 0.5

        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):
            per_step_s = (median_time(with_run, args.repeats) - median_time(bare, args.repeats)) / n
            state = {"model": model, "alphas": alphas, "opt": opt, "arch_opt": arch_opt}
            epochs = iter(range(1, 10 ** 6))
            end_s = median_time(lambda: run.end_epoch(state, {"epoch": next(epochs), "train_loss": 1.0},
                                                      darts.mixture_weights(alphas)), args.repeats)
        run.finish({}, "-", None)
    per_epoch_share = end_s / n
    lines = [
        f"# data.Run overhead vs one DARTS search step (CPU, {args.threads} thread(s), medians of {args.repeats})",
        f"search step (arch + weight, C=16, 8 cells, batch 64):  {step_s * 1e3:10.1f} ms",
        f"Run.steps per step (sums check, progress):             {per_step_s * 1e3:10.4f} ms  "
        f"= {100 * per_step_s / step_s:.4f}% of a step",
        f"Run.end_epoch (checkpoint, metrics, checks):           {end_s * 1e3:10.1f} ms per epoch = "
        f"{per_epoch_share * 1e3:.2f} ms per step over {n} steps = {100 * per_epoch_share / step_s:.3f}% of a step",
        f"total plumbing per step: {100 * (per_step_s + per_epoch_share) / step_s:.3f}% of a search step (target < 3%)",
    ]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
