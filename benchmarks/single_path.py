"""Cost of a single-path weight step: gaea_gdas' supernet step on a sampled child vs. the same child as a plain network.

The weight step of a single-path method (GDAS, GAEA GDAS) trains one sampled architecture, so it should cost about
what that child network costs. This times, interleaved and on the same batch, (a) gaea_gdas.weight_step on the
NB201 supernet (Gumbel sample + forward + backward + clip + SGD) and (b) the same step on spaces.NB201Network of the
sampled genotype, and reports the median of each and their ratio (target <= 1.2).

    python benchmarks/single_path.py                     # NB201, C=16, N=5, batch 64, 15 steps, CPU
    python benchmarks/single_path.py --genotype "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    python benchmarks/single_path.py --quick             # seconds: C=8, N=1, batch 16, 3 steps
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "algos"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
import gaea_gdas  # noqa: E402
import spaces  # noqa: E402


def sample_genotype(seed: int = 0) -> spaces.NB201Genotype:
    """One Gumbel-max draw from gaea_gdas' uniform initial distribution, as an NB201 genotype."""
    space = spaces.get_space("nb201")
    arch = gaea_gdas.init_arch(space, "eg", "cpu")
    child = gaea_gdas.sample_child(arch, "eg", torch.Generator().manual_seed(seed))
    return space.derive({"normal": F.one_hot(torch.tensor(child["normal"]), len(spaces.NB201_OPS)).float()})


def peaked_arch(genotype: spaces.NB201Genotype) -> dict[str, nn.Parameter]:
    """A simplex point at the genotype (other entries at GAEA's floor 1e-5): its Gumbel samples are that child
    except with probability ~1e-4 per step (checked and reported)."""
    index = [spaces.NB201_OPS.index(op) for node in genotype.nodes for op, _ in node]
    a = F.one_hot(torch.tensor(index), len(spaces.NB201_OPS)).float().clamp(min=1e-5)
    return {"normal": nn.Parameter(a / a.sum(-1, keepdim=True))}


def discrete_step(net, opt, x, y, grad_clip=5.0) -> float:
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    opt.step()
    return loss.item()


def time_weight_steps(genotype=None, C=16, N=5, batch=64, steps=15, warmup=2, seed=0, threads=1) -> dict:
    """Interleaved timings (seconds) of the supernet weight step and the discrete child step; medians and ratio."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    genotype = sample_genotype(seed) if genotype is None else genotype
    supernet = spaces.get_space("nb201").supernet(C, N, 10, edge=gaea_gdas.GDASEdge)
    child_net = spaces.NB201Network(genotype, C, N, 10)
    arch = peaked_arch(genotype)
    target = arch["normal"].argmax(-1).tolist()
    opt_s = torch.optim.SGD(supernet.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    opt_c = torch.optim.SGD(child_net.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    t_super, t_child, other_child = [], [], 0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        child = gaea_gdas.sample_child(arch, "eg", gen)
        gaea_gdas.weight_step(supernet, child, opt_s, x, y, 5.0)
        t1 = time.perf_counter()
        discrete_step(child_net, opt_c, x, y)
        t2 = time.perf_counter()
        other_child += child["normal"] != target
        if i >= warmup:
            t_super.append(t1 - t0)
            t_child.append(t2 - t1)
    med_s, med_c = statistics.median(t_super), statistics.median(t_child)
    return {"genotype": str(genotype), "C": C, "N": N, "batch": batch, "steps": steps, "threads": threads,
            "supernet_step_s": med_s, "child_step_s": med_c, "ratio": med_s / med_c,
            "steps_with_other_child": other_child}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Single-path weight step vs. the plain child network (NB201, CPU).")
    p.add_argument("--genotype", default=None, help="NB201 arch string (default: one Gumbel sample from the uniform distribution)")
    p.add_argument("--C", type=int, default=16, help="initial channels")
    p.add_argument("--N", type=int, default=5, help="cells per stage")
    p.add_argument("--batch", type=int, default=64, help="batch size")
    p.add_argument("--steps", type=int, default=15, help="timed steps per network (after 2 untimed ones)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled genotype and the batch")
    p.add_argument("--quick", action="store_true", help="tiny setting (C=8, N=1, batch 16, 3 steps) to check that it runs")
    args = p.parse_args(argv)
    if args.quick:
        args.C, args.N, args.batch, args.steps = 8, 1, 16, 3
    genotype = spaces.NB201Genotype.from_str(args.genotype) if args.genotype else None
    res = time_weight_steps(genotype, args.C, args.N, args.batch, args.steps, seed=args.seed, threads=args.threads)
    print(f"child {res['genotype']}  C={res['C']} N={res['N']} batch={res['batch']} threads={res['threads']}")
    print(f"median weight step: supernet {res['supernet_step_s'] * 1e3:.1f} ms | child network "
          f"{res['child_step_s'] * 1e3:.1f} ms | ratio {res['ratio']:.3f} (target <= 1.2) | "
          f"steps on another child: {res['steps_with_other_child']}")
    return res


if __name__ == "__main__":
    try:
        main()
    except spaces.GenotypeError as err:
        sys.exit(f"error: {err}")
