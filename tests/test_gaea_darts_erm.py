"""Tests for algos/gaea_darts_erm.py: the exponentiated-gradient step (closed form, numerical safety), simplex
weights used as mixture weights, ERM vs bilevel data, smoke runs on every space, determinism, clear errors,
and the size of the diff against algos/darts.py."""
import csv
import difflib
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import gaea_darts_erm as gaea
import spaces

ROOT = Path(__file__).resolve().parents[1]
NB201_OPS_NO_NONE = ["skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
TINY = ["--train-subset", "32", "--batch-size", "16", "--epochs", "1", "--C", "4", "--device", "cpu"]






@pytest.fixture
def run(tmp_path, tiny_npz):
    def _run(*extra, layers="1"):
        return gaea.main([*TINY, "--dataset", tiny_npz, "--layers", layers, "--out-dir", str(tmp_path / "runs"), *extra])
    return _run


# ------------------------------------------------------------------------------------------- EG step
def test_eg_update_matches_closed_form():
    theta = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]], dtype=torch.float64)
    grad = torch.tensor([[1.0, 0.0, -1.0], [2.0, -3.0, 0.5]], dtype=torch.float64)
    expected = theta * torch.exp(-0.1 * grad)
    expected = expected / expected.sum(1, keepdim=True)
    assert torch.allclose(gaea.eg_update(theta, grad, 0.1), expected, atol=1e-12)
    # by hand, first row: (0.5 e^-0.1, 0.25, 0.25 e^0.1) / sum
    a, b, c = 0.5 * math.exp(-0.1), 0.25, 0.25 * math.exp(0.1)
    assert gaea.eg_update(theta, grad, 0.1)[0].tolist() == pytest.approx([a / (a + b + c), b / (a + b + c), c / (a + b + c)])


def test_eg_update_floor_is_the_release_projection():
    theta = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    out = gaea.eg_update(theta, torch.tensor([[300.0, 0.0]], dtype=torch.float64), 0.1)
    s = math.exp(-30) / (1 + math.exp(-30))  # the unclamped EG value of the first entry, far below the floor
    assert out[0].tolist() == pytest.approx([1e-5 / (1e-5 + 1 - s), (1 - s) / (1e-5 + 1 - s)], rel=1e-12)


def test_zero_gradient_leaves_theta_unchanged_no_weight_decay():
    theta = torch.nn.Parameter(torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]))
    theta.grad = torch.zeros_like(theta)
    before = theta.detach().clone()
    gaea.ExponentiatedGradient([theta], lr=0.1).step()
    assert torch.allclose(theta.detach(), before, atol=1e-7)


def test_eg_numerically_safe_10000_steps_of_huge_gradients():
    gen = torch.Generator().manual_seed(0)
    grads = 1e3 * (2 * torch.randint(0, 2, (10_000, 14, 8), generator=gen).float() - 1)
    naive = torch.full((14, 8), 1 / 8) * torch.exp(-0.1 * grads[0])  # the release's plain product fails at once,
    assert not torch.isfinite(naive / naive.sum(1, keepdim=True)).all()  # so this test can fail
    theta = torch.nn.Parameter(torch.full((14, 8), 1 / 8))
    opt = gaea.ExponentiatedGradient([theta], lr=0.1)
    for g in grads:
        theta.grad = g
        opt.step()
    w = theta.detach()
    assert torch.isfinite(w).all()
    assert (w > 0).all() and (w.sum(1) > 0).all()  # no zero rows (no zero entries either: the floor)
    assert torch.allclose(w.sum(1), torch.ones(14), atol=1e-6)


def test_mixture_weights_are_the_simplex_values_and_carry_the_gradient():
    space = spaces.get_space("nb201", ops=NB201_OPS_NO_NONE)
    alphas = gaea.init_alphas(space, "cpu")
    assert alphas["normal"].shape == (6, 4) and torch.all(alphas["normal"] == 0.25)
    w = gaea.mixture_weights(alphas)["normal"]
    assert torch.equal(w, alphas["normal"].detach())  # no softmax
    (w * torch.arange(4.0)).sum().backward()
    assert torch.equal(alphas["normal"].grad, torch.arange(4.0).expand(6, 4))
    with torch.no_grad():
        assert not gaea.mixture_weights(alphas)["normal"].requires_grad  # weight step: constants


def test_arch_step_is_one_eg_step_on_the_loss_gradient():
    torch.manual_seed(0)
    space = spaces.get_space("nb201", ops=NB201_OPS_NO_NONE)
    model = space.supernet(4, 1, 10)
    alphas = gaea.init_alphas(space, "cpu")
    alphas["normal"].data = torch.softmax(torch.randn(6, 4), 1)  # off the uniform point
    before = alphas["normal"].detach().clone()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    gaea.arch_step(model, alphas, gaea.ExponentiatedGradient(alphas.values(), 0.1), x, y)
    grad = alphas["normal"].grad
    assert grad is not None and grad.abs().sum() > 0
    expected = before * torch.exp(-0.1 * grad)
    assert torch.allclose(alphas["normal"].detach(), expected / expected.sum(1, keepdim=True), atol=1e-6)


# ---------------------------------------------------------------------------------------- data / flags
def test_defaults_are_the_papers_nb201_erm_search(capsys):
    a = gaea.parse_args([])
    assert (a.space, a.bilevel, a.C, a.layers, a.epochs, a.batch_size) == ("nb201", False, 16, None, 25, 64)
    assert (a.lr, a.lr_min, a.momentum, a.wd, a.grad_clip, a.arch_lr) == (0.025, 0.001, 0.9, 3e-4, 5.0, 0.1)
    for adam_flag in ("--arch-wd", "--arch-betas", "--single-level"):  # no Adam, no weight decay on theta
        with pytest.raises(SystemExit):
            gaea.parse_args([adam_flag, "0"])


class _Stop(Exception):
    pass


@pytest.mark.parametrize("flag, bilevel", [([], False), (["--bilevel"], True)])
def test_erm_by_default_bilevel_on_the_held_out_half(tmp_path, run, monkeypatch, flag, bilevel):
    seen, real = {}, data.search_loaders

    def spy(*args, **kwargs):
        seen["paired"] = real(*args, **kwargs)[0]
        raise _Stop

    monkeypatch.setattr(data, "search_loaders", spy)
    with pytest.raises(_Stop):
        run(*flag)
    paired = seen["paired"]
    w_ds, a_ds = paired.weight_loader.dataset, paired.arch_loader.dataset
    if bilevel:  # disjoint halves of the 32 images
        assert len(w_ds) == len(a_ds) == 16 and not torch.equal(w_ds.x[:16], a_ds.x[:16])
    else:  # both steps draw from the whole training set
        assert a_ds is w_ds and len(w_ds) == 32
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, msg", [
    (["--space", "darts", "--nb201-table", "t.csv"], "--nb201-table needs --space nb201"),
    (["--split-file", "s.txt"], "need --bilevel"),
])
def test_unsupported_combinations_exit_2_before_writing(tmp_path, run, capsys, argv, msg):
    with pytest.raises(SystemExit) as e:
        run(*argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_bad_input_is_one_error_line_and_no_run_dir(tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(ROOT / "algos" / "gaea_darts_erm.py"), "--dataset",
                           str(tmp_path / "missing.npz"), "--out-dir", str(out)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


# ------------------------------------------------------------------------------------------ smoke runs
def _check_run(result, groups):
    run_dir = Path(result["run_dir"])
    for name in ("args.json", "metrics.jsonl", "genotype.json", "cell.dot"):
        assert (run_dir / name).is_file()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["genotype"] == result["genotype_str"]
    assert str(spaces.parse_genotype(str(run_dir / "genotype.json"))) == result["genotype_str"]
    for g in groups:
        w = torch.tensor(result["alphas"][g])
        assert torch.allclose(w.sum(-1), torch.ones(w.shape[0]), atol=1e-5) and (w > 0).all()
        assert 0 <= metrics[0][f"entropy_{g}"] <= math.log(w.shape[-1]) + 1e-6
    return metrics


@pytest.mark.parametrize("space, layers", [("darts", "3"), ("nb1shot1-1", "1"), ("nb1shot1-2", "1"), ("nb1shot1-3", "1")])
def test_smoke_other_spaces(run, space, layers):
    result = run("--space", space, layers=layers)
    groups = list(spaces.get_space(space).arch_shapes())
    _check_run(result, groups)
    if space == "darts":  # the DARTS space keeps `none` (8 ops), derived by the standard rule
        assert len(result["alphas"]["normal"][0]) == 8
        g = spaces.parse_genotype(str(Path(result["run_dir"]) / "genotype.json"))
        assert "none" not in str(g)


def test_nb201_smoke_without_none_with_oracle_table_and_deterministic(tmp_path, run):
    table = tmp_path / "table.csv"  # every 4-op NB201 cell gets a distinct fake accuracy
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arch_str", "c10_test_200", "c10_valid_200"])
        for i, ops in enumerate(itertools.product(NB201_OPS_NO_NONE, repeat=6)):
            arch = f"|{ops[0]}~0|+|{ops[1]}~0|{ops[2]}~1|+|{ops[3]}~0|{ops[4]}~1|{ops[5]}~2|"
            writer.writerow([arch, i, -1])
    r1 = run("--nb201-table", str(table), "--run-name", "a")
    metrics = _check_run(r1, ["normal"])
    assert len(r1["alphas"]["normal"]) == 6 and len(r1["alphas"]["normal"][0]) == 4 and "none" not in r1["genotype_str"]
    expected = data.load_table(str(table))[r1["genotype_str"]]["c10_test_200"]
    assert metrics[0]["oracle_c10_test_200"] == expected and "oracle_c10_valid_200" not in metrics[0]
    assert metrics[0]["entropy_normal"] < math.log(4) - 1e-6  # EG moved off the uniform point
    r2 = run("--nb201-table", str(table), "--run-name", "b")
    assert r1["genotype_str"] == r2["genotype_str"] and r1["alphas"] == r2["alphas"]
    assert Path(r1["run_dir"]).name == "a" and json.loads((Path(r1["run_dir"]) / "args.json").read_text())["bilevel"] is False


# ---------------------------------------------------------------------------------------- diff budget
def test_diff_against_darts_stays_small():
    old = (ROOT / "algos" / "darts.py").read_text().splitlines()
    new = (ROOT / "algos" / "gaea_darts_erm.py").read_text().splitlines()
    ops = difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()  # = `diff | grep -c '^>'` here
    # the lines GAEA writes anew (darts.py's own extras, e.g. second order, are lines GAEA drops, not counted)
    added = sum(j2 - j1 for tag, i1, i2, j1, j2 in ops if tag != "equal")
    assert added <= 55, f"{added} lines of gaea_darts_erm.py differ from darts.py"
    assert len(new) < 400
    assert "import darts" not in "\n".join(new)


def test_tiny_direct_search_on_a_cifar100_stand_in(tmp_path, monkeypatch):
    """GAEA's Table 2 direct-search rows on a synthetic CIFAR-100 stand-in: weights on all 48 training images, theta on
    the xvalid half of the 40-image test set, the supernet tested on the xtest half; the oracle's CIFAR-100 columns
    come first in the log and `oracle_test` is the CIFAR-100 test accuracy of the derived cell."""
    arrays = data.make_synthetic(48, 40, image_size=8)
    np.savez(tmp_path / "cifar100_standin.npz", **arrays)
    perm = np.random.default_rng(1).permutation(40)
    split = tmp_path / "cifar100-test-split.txt"
    split.write_text(json.dumps({"xvalid": ["int", [str(i) for i in perm[:20]]], "xtest": ["int", [str(i) for i in perm[20:]]]}))
    table = tmp_path / "table.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arch_str", "c10_test_200", "c100_valid_200", "c100_test_200"])
        for i, ops in enumerate(itertools.product(NB201_OPS_NO_NONE, repeat=6)):
            writer.writerow([f"|{ops[0]}~0|+|{ops[1]}~0|{ops[2]}~1|+|{ops[3]}~0|{ops[4]}~1|{ops[5]}~2|", i, -i, 1000 + i])
    seen, real = {}, data.search_loaders

    def spy(*args, **kwargs):
        seen["out"] = real(*args, **kwargs)
        return seen["out"]

    monkeypatch.setattr(data, "search_loaders", spy)
    res = gaea.main(["--dataset", str(tmp_path / "cifar100_standin.npz"), "--bilevel", "--split-file", str(split),
                     "--nb201-table", str(table), "--epochs", "1", "--C", "4", "--layers", "1", "--batch-size", "8",
                     "--device", "cpu", "--out-dir", str(tmp_path / "runs")])
    paired, test_loader, _ = seen["out"]
    assert len(paired.weight_loader.dataset) == 48 and len(paired.arch_loader.dataset) == 20 and len(test_loader.dataset) == 20
    assert torch.equal(paired.arch_loader.dataset.x, torch.from_numpy(arrays["x_test"][perm[:20]]).permute(0, 3, 1, 2))
    m = json.loads((Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()[-1])
    oracle = [k for k in m if k.startswith("oracle_")]
    assert oracle[:2] == ["oracle_c100_valid_200", "oracle_c100_test_200"] and "oracle_c10_test_200" in oracle
    assert m["oracle_test"] == data.load_table(str(table))[res["genotype_str"]]["c100_test_200"] >= 1000
