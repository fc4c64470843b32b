"""benchmarks/claims.py: the verdict rules, the entropy curves, BN re-estimation, and --quick end to end."""
import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("claims", ROOT / "benchmarks" / "claims.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["claims"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


claims = _load()


def test_compare_rule():
    assert claims.compare([3.0, 3.1], [1.0, 1.2])[0] == "reproduced"
    assert claims.compare([1.0, 1.2], [3.0, 3.1])[0] == "not reproduced"
    assert claims.compare([1.0, 3.0], [1.5, 2.0])[0] == "inconclusive"  # overlapping seeds
    assert claims.compare([1.95, 3.0], [0.0, 1.9])[0] == "inconclusive"  # separated, but the gap < the spread
    assert claims.compare([0.1, 0.2], [0.9, 0.8], higher_is_better=False)[0] == "reproduced"  # lower entropy wins
    assert claims.compare([5.0], [1.0])[0].startswith("inconclusive")  # one seed decides nothing
    verdict, diff, spread = claims.compare([3.0, 3.1], [1.0, 1.2])
    assert diff == pytest.approx(1.95) and spread == pytest.approx(0.2)


def test_steps_per_epoch_bilevel_erm_and_split():
    assert claims.steps_per_epoch({"train_subset": 2048, "batch_size": 32, "single_level": False}, 5000) == 32
    assert claims.steps_per_epoch({"train_subset": 2048, "batch_size": 32, "single_level": True}, 5000) == 64
    assert claims.steps_per_epoch({"train_subset": 0, "batch_size": 30, "bilevel": False}, 100) == 4  # ceil
    assert claims.steps_per_epoch({"train_subset": 100, "batch_size": 10, "bilevel": True, "train_portion": 0.5}, 0) == 5


def _run(algo, space, metrics, **settings):
    job = claims.Job("x", algo, space, [], 0, "nb201")
    return {"job": job, "args": {"space": space, "train_subset": 64, "batch_size": 32, "single_level": False,
                                 **settings}, "metrics": metrics}


def test_entropy_curve_normalises_by_ln_k_and_counts_architecture_steps():
    m = [{"epoch": 1, "entropy_normal": math.log(5) / 2}, {"epoch": 2, "entropy_normal": math.log(5) / 4}]
    xs, ys = claims.entropy_curve(_run("darts", "nb201", m), 0)
    assert xs == [0, 1, 2] and ys == pytest.approx([1.0, 0.5, 0.25])
    # GAEA DARTS has no `none` on NB201 (4 ops); PC-DARTS' edge entropies are not op weights; warm-up epochs add none
    m = [{"epoch": 1, "arch_steps": 0, "entropy_normal": math.log(8), "entropy_reduce": math.log(8),
          "entropy_edges_normal": 0.1}, {"epoch": 2, "arch_steps": 1, "entropy_normal": 0.0, "entropy_reduce": math.log(8)}]
    xs, ys = claims.entropy_curve(_run("gaea_pcdarts", "darts", m), 0)
    assert xs == [0, 0, 1] and ys == pytest.approx([1.0, 1.0, 0.5])
    xs, ys = claims.entropy_curve(_run("gaea_darts_erm", "nb201", [{"epoch": 1, "entropy_normal": math.log(4)}]), 0)
    assert ys[-1] == pytest.approx(1.0)


def test_reestimate_bn_gives_the_plain_average_of_the_batches():
    model = nn.Sequential(nn.BatchNorm2d(3, affine=False))
    model.forward = lambda x, *arch: nn.Sequential.forward(model, x)
    xs = [torch.randn(4, 3, 2, 2) + 5, torch.randn(4, 3, 2, 2) - 1]
    claims._reestimate_bn(model, [(x, None) for x in xs], lambda x: x, torch.device("cpu"), ())
    bn = model[0]
    expect = torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0)
    assert torch.allclose(bn.running_mean, expect, atol=1e-5)


def test_plan_shares_runs_between_panels(tmp_path, shared_data):
    args = claims.parse_args(["--runs", str(tmp_path)])
    args.dataset_path = "x.npz"
    jobs = claims.plan(args)
    names = [j.name(args) for j in jobs]
    assert len(names) == len(set(names))
    # nb201, nasp and asng use the same DARTS (bilevel) runs at the default arch lr: 3 seeds, not 9
    assert sum(j.label == "DARTS (bilevel)" and j.tags.get("arch_lr") == 3e-4 for j in jobs) == 3
    assert {j.label for j in jobs if j.tags.get("pair") == "darts"} == {"GAEA PC-DARTS", "PC-DARTS"}
    only = claims.parse_args(["--panels", "asng", "--runs", str(tmp_path)])
    only.dataset_path = "x.npz"
    assert {j.algo for j in claims.plan(only)} == {"asng", "darts"}


def test_quick_runs_every_panel_end_to_end(tmp_path, shared_data):
    verdicts = claims.main(["--quick", "--jobs", "2", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "table.md").read_text()
    for section in ("GAEA Figure 1", "discretisation gap", "Table 2 ordering", "NASP Figures 3 and 2", "ASNG's robustness"):
        assert section in md
    assert md.index("**Rule.**") < md.index("| pair | method")  # the rule stands before the numbers
    assert all(v.startswith("inconclusive") for k, v in verdicts.items() if "collapse" not in k)  # one seed each
    rows = list(csv.DictReader(open(tmp_path / "out" / "raw.csv")))
    assert len(rows) == 16
    gap = [r for r in rows if r["space"] == "darts"]
    assert len(gap) == 2 and all(0 <= float(r["acc_discrete_reestimated_bn"]) <= 100 for r in gap)
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "out" / "entropy_darts.png").is_file() and (tmp_path / "out" / "asng_robustness.png").is_file()


def test_paper_scale_commands_are_accepted_by_every_algos_file(tmp_path, shared_data):
    args = claims.parse_args(["--paper-scale", "--runs", str(tmp_path)])  # --device cuda is checked for a GPU at parse
    args.dataset_path = args.dataset
    jobs = claims.plan(args)
    modules = {algo: claims._load_algo(algo) for algo in {j.algo for j in jobs}}
    for job in jobs:
        parsed = modules[job.algo].parse_args(job.argv(args) + ["--out-dir", str(tmp_path)])
        assert parsed.dataset == "cifar10" and "--epochs" not in job.argv(args)  # each file's own epochs
        if job.space == "darts":
            assert parsed.train_subset == 45000  # 5,000 training images held out for the gap
        if job.space == "nb201" and not job.erm:
            assert parsed.split_file.endswith("cifar-split.txt.gz")
