"""torch.distributed helpers of data.py (gloo, 2 processes), sharded sampling and augmentation that make N ranks
one search, and the refusal of scripts that do not support torchrun."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _helpers_worker(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    r, w, device = data.init_distributed("cpu")
    assert (r, w, device.type) == (rank, world, "cpu") and data.is_main() == (rank == 0)
    a, b = torch.tensor([rank + 1.0]), torch.full((3,), float(rank))
    data.all_reduce_mean_([a, b])
    assert a.item() == 1.5 and b.tolist() == [0.5] * 3
    # an optimizer whose gradients are averaged before each step keeps identical parameters
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = torch.optim.SGD([p], lr=1.0)
    data.average_grads_before_step(opt)
    p.grad = torch.tensor([float(rank), 2.0 * rank])
    opt.step()
    assert p.tolist() == [0.5, 1.0]
    m = data.mean_over_ranks({"loss": float(rank), "epoch": 3, "genotype": "g"})
    assert m == {"loss": 0.5, "epoch": 3, "genotype": "g"}
    data.check_same_across_ranks([p, torch.tensor([float("-inf"), 1.0])], "arch")  # same everywhere: passes
    same_entries = torch.arange(4.0) if rank == 0 else torch.arange(4.0).flip(0)  # same sum, other order
    for differing in (p + 1e-7 * rank, same_entries):
        try:
            data.check_same_across_ranks([differing], "architecture")
            raise AssertionError("divergent ranks not detected")
        except data.DistributedError as err:
            assert "architecture differs across the 2 ranks" in str(err)
    # DDP: weight gradients averaged, except inside local_grads
    torch.manual_seed(rank)  # different initial weights: DDP broadcasts rank 0's
    net = torch.nn.Linear(2, 1, bias=False)
    model = data.wrap_ddp(net, device)
    x = torch.full((1, 2), float(rank + 1))
    with data.local_grads(model):
        model(x).sum().backward()
    assert net.weight.grad.tolist() == [[rank + 1.0] * 2]
    net.weight.grad = None
    model(x).sum().backward()
    assert net.weight.grad.tolist() == [[1.5, 1.5]]
    data.check_same_across_ranks(list(net.parameters()), "weights")
    data.barrier_and_destroy()


def test_distributed_helpers_two_processes_gloo():
    mp.start_processes(_helpers_worker, args=(2, free_port()), nprocs=2, join=True, start_method="fork")  # no re-import


def test_helpers_are_no_ops_in_one_process():
    t = torch.tensor([2.0])
    data.all_reduce_mean_([t])
    data.check_same_across_ranks([t], "x")
    assert t.item() == 2.0 and data.mean_over_ranks({"a": 1.0}) == {"a": 1.0} and data.is_main()
    net = torch.nn.Linear(1, 1)
    assert data.wrap_ddp(net, torch.device("cpu")) is net
    assert data.init_distributed("cpu") == (0, 1, torch.device("cpu"))
    assert data.per_rank_batch(1024, 8) == 128
    with pytest.raises(data.DistributedError, match="does not split over 3"):
        data.per_rank_batch(256, 3)


def test_sharded_sampler_interleaves_one_global_order():
    n, world = 24, 3
    single = data.SeededSampler(n, seed=5)
    shards = [data.SeededSampler(n, seed=5, rank=r, world_size=world) for r in range(world)]
    for _ in range(2):  # two passes: each reshuffles, alike on every rank
        order = list(single)
        parts = [list(s) for s in shards]
        assert [parts[r][i] for i in range(n // world) for r in range(world)] == order
        assert sorted(order) == list(range(n))
    assert order != list(range(n))


def test_sharded_augment_equals_one_process():
    info = data.DataInfo("t", 10, 8, (0.5,) * 3, (0.25,) * 3, 2)
    x = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8)
    full = data.Augment(info, True, cutout=4, generator=torch.Generator().manual_seed(3))
    parts = [data.Augment(info, True, cutout=4, generator=torch.Generator().manual_seed(3), shard=(r, 3))
             for r in range(3)]
    for _ in range(2):  # consecutive batches stay aligned
        expected = full(x)
        got = [aug(x[r::3]) for r, aug in enumerate(parts)]
        for r in range(3):
            torch.testing.assert_close(got[r], expected[r::3], rtol=0, atol=0)


def test_refuse_torchrun_is_one_line_on_rank_0_only(monkeypatch):
    data.refuse_torchrun("no")  # one process: nothing happens
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(data.DistributedError, match="^single path$"):
        data.refuse_torchrun("single path")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as info:
        data.refuse_torchrun("single path")
    assert info.value.code == 1


# ------------------------------------------------------------------------------------- torchrun searches
ROOT = Path(__file__).resolve().parents[1]
NO_BN = '''
import runpy, sys
import torch.nn as nn


class NoBatchNorm(nn.Identity):
    def __init__(self, *args, **kwargs):
        super().__init__()


nn.BatchNorm2d = NoBatchNorm  # no batch statistics: the samples of a batch no longer interact
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


class NoBatchNorm(torch.nn.Identity):
    def __init__(self, *args, **kwargs):
        super().__init__()


def test_torchrun_two_processes_are_one_search(tiny_npz, tmp_path, monkeypatch):
    """darts.py, 2 processes x batch 8 == 1 process x batch 16 with BatchNorm removed (the only term that couples the
    samples of a batch): the same alpha after 2 epochs (6 architecture steps) up to float summation order; exactly one
    run directory; the ranks' architectures were checked equal at every epoch end (a difference aborts the run).
    The other mixture methods: benchmarks/ddp_equivalence.py (too slow for the suite)."""
    algo = "darts"
    argv = ["--space", "nb201", "--dataset", tiny_npz, "--C", "4", "--layers", "1", "--batch-size", "16",
            "--epochs", "2", "--device", "cpu", "--seed", "0", "--run-name", "r"]
    module = __import__(algo)
    start = {}

    def recording_init(space, device):
        alphas = real_init(space, device)
        start.update({g: a.detach().clone() for g, a in alphas.items()})
        return alphas
    real_init = module.init_alphas
    monkeypatch.setattr(module, "init_alphas", recording_init)
    monkeypatch.setattr(torch.nn, "BatchNorm2d", NoBatchNorm)
    single = module.main([*argv, "--out-dir", str(tmp_path / "one")])
    monkeypatch.undo()
    runner = tmp_path / "no_bn.py"
    runner.write_text(NO_BN)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(free_port()),
           str(runner), str(ROOT / "algos" / f"{algo}.py"), *argv, "--out-dir", str(tmp_path / "two")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["r"] and proc.stdout.count("results in") == 1
    two = json.loads((tmp_path / "two" / "r" / "genotype.json").read_text())
    a1, a2 = (np.concatenate([np.ravel(r["alphas"][g]) for g in sorted(r["alphas"])]) for r in (single, two))
    a0 = np.concatenate([start[g].numpy().ravel() for g in sorted(start)])
    assert np.abs(a1 - a0).max() > 1e-3  # alpha moved (6 Adam steps of lr 3e-4) ...
    np.testing.assert_allclose(a2, a1, rtol=0, atol=1e-6)  # ... identically (measured: ~2e-10; with BN: ~2e-3)
    assert two["genotype"] == single["genotype"]
    assert two["supernet_test_loss"] == pytest.approx(single["supernet_test_loss"], rel=1e-5)
    metrics = [json.loads(line) for line in (tmp_path / "two" / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]


@pytest.mark.parametrize("algo,extra", [("gaea_gdas", []), ("nasp", []), ("asng", []), ("darts", ["--unrolled"])])
def test_single_path_methods_and_unrolled_darts_refuse_torchrun(algo, extra, tmp_path, monkeypatch):
    module = __import__(algo)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(data.DistributedError, match="under torchrun"):
        module.main(["--dataset", "synthetic", "--device", "cpu", "--out-dir", str(tmp_path / "runs"), *extra])
    assert not (tmp_path / "runs").exists()


def test_refusal_is_one_line(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "algos" / "nasp.py"), "--out-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1 and proc.stderr.startswith("error: nasp.py") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "runs").exists()
