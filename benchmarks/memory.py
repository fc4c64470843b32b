"""Peak memory of one supernet training step: DARTS' full mixture (algos/darts.py) vs GAEA PC-DARTS' partial
channels (algos/gaea_pcdarts.py, K = 4), same space (DARTS), batch, C and cells; and DARTS' second-order step
(darts.py --unrolled: virtual weights w', the gradient at w', two finite-difference passes) beside its first order.

One training step = the architecture step (forward + backward on the architecture batch, then its update: Adam for
DARTS, EG for GAEA PC-DARTS) followed by the weight step (forward + backward + clip + SGD on the training batch),
each algorithm through its own algos-file functions. Memory figures:
  - peak: what the step adds to the process at its worst moment. CPU: each measurement runs in a fresh subprocess;
    after the model, optimisers and one warm-up step at batch 2 exist (so kernels and optimiser state are part of
    the baseline), the kernel's peak-RSS mark is reset (/proc/self/clear_refs) and the step's peak = VmHWM after
    the step - VmRSS before it. Where clear_refs is not available: ru_maxrss after - VmRSS before (an upper bound
    that can include start-up). CUDA: torch.cuda.max_memory_allocated during the step - memory_allocated before.
  - saved: bytes of the tensors autograd keeps for backward during the architecture step's forward (storages
    counted once, parameters excluded): deterministic, the same on every machine.
The target set for this repository: GAEA PC-DARTS' peak <= 0.45x DARTS' at the same batch. darts_unrolled / darts is reported
for information (no target); its saved-for-backward column is '-' (the step builds four graphs one after another).

Usage:
    python benchmarks/memory.py                 # batch 64, C=16, 8 cells, 32 px; CPU (and CUDA when present); 3 repeats
    python benchmarks/memory.py --quick         # batch 16, 1 repeat
    python benchmarks/memory.py --batch 32 --repeats 5 --device cpu
From other scripts: `measure(algo, batch, C, layers, device) -> bytes`, `saved_bytes(...)`, `compare(...)`.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

_root = Path(__file__).resolve().parents[1]
for _p in (_root, _root / "algos"):  # benchmarks may import the algos files
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
import darts  # noqa: E402
import gaea_pcdarts  # noqa: E402
import spaces  # noqa: E402

ALGOS = ("darts", "gaea_pcdarts", "darts_unrolled")
TARGET = 0.45  # GAEA PC-DARTS peak / DARTS peak, at most


def build(algo: str, C: int = 16, layers: int = 8, device="cpu", k: int = 4, seed: int = 0) -> SimpleNamespace:
    """One algorithm's supernet on the DARTS space, with its optimisers: .model, .arch_params (list), .step(x, y, xa, ya)
    = one training step (architecture step, then weight step) through that algorithm's own functions, and
    .arch_forward(x) = the architecture step's forward (logits, architecture weights with gradient)."""
    torch.manual_seed(seed)
    space = spaces.get_space("darts")
    if algo in ("darts", "darts_unrolled"):
        model = space.supernet(C, layers, 10).to(device)
        alphas = darts.init_alphas(space, device)
        arch_opt = torch.optim.Adam(alphas.values(), 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
        opt = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)

        def step(x, y, xa, ya):
            if algo == "darts_unrolled":
                darts.unrolled_arch_step(model, alphas, arch_opt, opt, x, y, xa, ya, opt.param_groups[0]["lr"])
            else:
                darts.arch_step(model, alphas, arch_opt, xa, ya)
            darts.weight_step(model, alphas, opt, x, y, 5.0)
        arch_forward = None if algo == "darts_unrolled" else (lambda x: model(x, darts.mixture_weights(alphas)))
        return SimpleNamespace(model=model, arch_params=list(alphas.values()), step=step, arch_forward=arch_forward)
    if algo == "gaea_pcdarts":
        model = space.supernet(C, layers, 10, edge=functools.partial(gaea_pcdarts.PartialChannelEdge, k=k)).to(device)
        layout = gaea_pcdarts.edge_layout(space)
        alphas, edges = gaea_pcdarts.init_arch(space, "eg", device)
        args = argparse.Namespace(arch_update="eg", arch_lr=0.1, edge_lr=0.1)
        arch_opt = gaea_pcdarts.make_arch_optimizer(args, alphas, edges, layout)
        opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=3e-4)
        common = (model, space, alphas, edges, layout, "eg")

        def step(x, y, xa, ya):
            gaea_pcdarts.arch_step(*common, arch_opt, xa, ya)
            gaea_pcdarts.weight_step(*common, opt, x, y, 5.0)
        return SimpleNamespace(model=model, arch_params=[*alphas.values(), *edges.values()], step=step,
                               arch_forward=lambda x: gaea_pcdarts.forward(
                                   model, space, x, *gaea_pcdarts.mixture_weights(alphas, edges, layout, "eg")))
    raise ValueError(f"unknown algorithm {algo!r}; choose from {', '.join(ALGOS)}")


def make_batch(batch: int, image_size: int = 32, device="cpu", seed: int = 0):
    """Two random batches (x, y, xa, ya) of normalised-looking images and labels."""
    g = torch.Generator().manual_seed(seed)
    x, xa = (torch.randn(batch, 3, image_size, image_size, generator=g).to(device) for _ in range(2))
    y, ya = (torch.randint(0, 10, (batch,), generator=g).to(device) for _ in range(2))
    return x, y, xa, ya


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def step_peak_bytes(algo: str, batch: int, C: int, layers: int, device="cpu", image_size: int = 32) -> int:
    """In this process: the memory one training step adds at its peak (see the module docstring)."""
    device = torch.device(device)
    step = build(algo, C, layers, device).step
    step(*make_batch(2, image_size, device, seed=1))  # warm-up: kernels, optimiser state
    x, y, xa, ya = make_batch(batch, image_size, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step(x, y, xa, ya)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = _status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
        reset = True
    except OSError:
        reset = False
    step(x, y, xa, ya)
    if before is None:
        raise RuntimeError("CPU peak memory needs /proc/self/status (Linux)")
    peak_kb = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(0, peak_kb - before) * 1024


def measure(algo: str, batch: int, C: int = 16, layers: int = 8, device="cpu", image_size: int = 32,
            threads: int = 1) -> int:
    """Peak bytes one training step adds, measured in a fresh Python process (so earlier runs leave no trace)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", algo, str(batch), str(C), str(layers), str(device),
           str(image_size), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"measurement {algo} batch {batch} on {device} failed:\n{out.stderr.strip()[-2000:]}")
    return int(out.stdout.strip().splitlines()[-1])


def saved_bytes(algo: str, batch: int, C: int = 16, layers: int = 8, image_size: int = 32) -> int | None:
    """Bytes of the distinct storages autograd saves for backward in the architecture step's forward (CPU);
    None for darts_unrolled (several graphs in sequence, no single architecture forward)."""
    net = build(algo, C, layers, "cpu")
    if net.arch_forward is None:
        return None
    x, y, _, _ = make_batch(batch, image_size)
    skip = {p.untyped_storage().data_ptr() for p in [*net.model.parameters(), *net.arch_params]}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(net.arch_forward(x), y)
    del loss
    return sum(seen.values())


def compare(batch: int, C: int, layers: int, device="cpu", repeats: int = 3, image_size: int = 32,
            threads: int = 1, measure_fn=measure, algos=ALGOS) -> dict:
    """Median peak per algorithm over `repeats` fresh processes, the ratio gaea_pcdarts / darts and (information)
    darts_unrolled / darts."""
    peaks = {a: [measure_fn(a, batch, C, layers, device, image_size, threads) for _ in range(repeats)] for a in algos}
    med = {a: statistics.median(v) for a, v in peaks.items()}
    ratio = (lambda a: med[a] / med["darts"] if med["darts"] and a in med else float("nan"))  # noqa: E731
    return {"device": str(device), "batch": batch, "C": C, "layers": layers, "repeats": repeats, "peaks": peaks,
            "median": med, "ratio": ratio("gaea_pcdarts"), "ratio_unrolled": ratio("darts_unrolled")}


def format_table(results: list[dict], saved: dict | None = None) -> str:
    mib = lambda b: f"{b / 2 ** 20:9.1f}"  # noqa: E731
    lines = [f"{'device':8} {'batch':>5} {'C':>3} {'cells':>5} {'algorithm':14} {'peak MiB':>9} {'saved MiB':>9}"]
    for r in results:
        for a in r["median"]:
            s = mib(saved[a]) if saved and saved.get(a) is not None else f"{'-':>9}"
            lines.append(f"{r['device']:8} {r['batch']:5d} {r['C']:3d} {r['layers']:5d} {a:14} {mib(r['median'][a])} {s}")
        verdict = "OK" if r["ratio"] <= TARGET else "MISSED"
        lines.append(f"  ratio gaea_pcdarts / darts (median of {r['repeats']}): {r['ratio']:.3f}  "
                     f"(target <= {TARGET}: {verdict})")
        if r.get("ratio_unrolled") == r.get("ratio_unrolled"):  # not NaN: darts_unrolled was measured
            lines.append(f"  ratio darts_unrolled / darts (second / first order, information): {r['ratio_unrolled']:.3f}")
    if saved:
        lines.append(f"  saved-for-backward ratio (arch step, deterministic): {saved['gaea_pcdarts'] / saved['darts']:.3f}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Peak memory of one supernet step: DARTS vs GAEA PC-DARTS (DARTS space).")
    p.add_argument("--batch", type=int, default=64, help="batch size of both steps")
    p.add_argument("--C", type=int, default=16, help="initial channels")
    p.add_argument("--layers", type=int, default=8, help="cells")
    p.add_argument("--image-size", type=int, default=32, help="input resolution")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per algorithm; the median is reported")
    p.add_argument("--device", default="all", help="cpu | cuda | cuda:N | all (CPU, and CUDA when present)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads in each measuring process")
    p.add_argument("--quick", action="store_true", help="batch 16, 1 repeat")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--child", nargs=6, default=None, help=argparse.SUPPRESS)  # internal: one measurement
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = 16, 1
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.child:
        torch.set_num_threads(args.threads)
        algo, batch, C, layers, device, size = args.child
        print(step_peak_bytes(algo, int(batch), int(C), int(layers), device, int(size)))
        return []
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])] if args.device == "all" else [args.device]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads per measurement {args.threads}", flush=True)
    results = [compare(args.batch, args.C, args.layers, d, args.repeats, args.image_size, args.threads) for d in devices]
    saved = {a: saved_bytes(a, args.batch, args.C, args.layers, args.image_size) for a in ALGOS}
    print(format_table(results, saved))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "saved_bytes": saved}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
