"""Tests for algos/asng.py: the ASNG update against the reference implementation's test vectors, its parts in closed
form (utilities, Fisher norm, range restriction, step-size adaptation), the variable <-> architecture mapping,
single-path weight steps (forward hooks), smoke runs on darts and nb201, determinism and clear errors."""
import collections
import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import asng
import data
import spaces

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--train-subset", "64", "--batch-size", "32", "--epochs", "1", "--C", "4",
        "--device", "cpu"]




@pytest.fixture
def small_synthetic(monkeypatch):
    """A 64-image synthetic test set (the default 512 makes the final evaluation dominate a tiny run)."""
    monkeypatch.setattr(data, "load_arrays", functools.partial(data.load_arrays, synthetic_size=(128, 64)))


# ------------------------------------------------------------------------------------- the ASNG update
def test_reference_vectors_two_consecutive_updates():
    """Reference note section 2.9 (computed with the official CategoricalASNG): categories [3, 3], x1 = (e0, e0)
    with loss 1, x2 = (e1, e2) with loss 2, updated twice."""
    a = asng.ASNG([3, 3], alpha=1.5, delta_init=1.0)
    samples = torch.tensor([[0, 0], [1, 2]])
    assert a.N == 4 and a.d_valid == 2 and torch.allclose(a.theta_min, torch.full((2,), 0.25, dtype=torch.float64))
    assert a.update(samples, [1.0, 2.0])
    assert torch.allclose(a.theta, torch.tensor([[0.454247, 0.25, 0.295753], [0.454247, 0.295753, 0.25]],
                                                dtype=torch.float64), atol=1e-6)
    s_free = torch.cat([a.s[0, :2], a.s[1, :2]])  # the N = 4 free coordinates
    assert torch.allclose(s_free, torch.tensor([0.433013, -0.433013, 0.591506, 0.158494], dtype=torch.float64), atol=1e-6)
    assert float(a.s.square().sum()) == pytest.approx(0.75, abs=1e-6) and a.gamma == pytest.approx(0.75, abs=1e-6)
    assert a.Delta == pytest.approx(1.1331485, abs=1e-6) and a.delta == pytest.approx(0.8824969, abs=1e-6)
    assert a.update(samples, [1.0, 2.0])
    assert torch.allclose(a.theta, torch.tensor([[0.47715, 0.25, 0.27285], [0.47715, 0.27285, 0.25]],
                                                dtype=torch.float64), atol=1e-6)
    assert float(a.s.square().sum()) == pytest.approx(1.7200054, abs=1e-6)
    assert a.gamma == pytest.approx(0.9219492, abs=1e-6)
    assert a.Delta == pytest.approx(1.0261790, abs=1e-6) and a.delta == pytest.approx(0.9744889, abs=1e-6)


def test_tie_skips_the_whole_update():
    a = asng.ASNG([3, 3])
    samples = torch.tensor([[0, 0], [1, 2]])
    assert not a.update(samples, [1.0, 1.0])
    assert torch.equal(a.theta, torch.full((2, 3), 1 / 3, dtype=torch.float64)) and a.Delta == 1.0 and a.gamma == 0.0
    a.update(samples, [1.0, 2.0])  # non-trivial state, then a tie: nothing moves
    before = (a.theta.clone(), a.s.clone(), a.gamma, a.Delta)
    assert not a.update(samples, [0.7, 0.7])
    assert torch.equal(a.theta, before[0]) and torch.equal(a.s, before[1]) and (a.gamma, a.Delta) == before[2:]


def test_ranking_utility():
    assert asng.ranking_utility([1.0, 2.0]).tolist() == [1.0, -1.0]
    assert asng.ranking_utility([2.0, 1.0]).tolist() == [-1.0, 1.0]
    assert asng.ranking_utility([0.0, 0.0]).tolist() == [0.0, 0.0]  # exact tie, even at loss 0
    assert asng.ranking_utility([3.0, 1.0, 2.0, 4.0]).tolist() == [0.0, 1.0, 0.0, -1.0]  # lambda 4: mu = 1
    assert asng.ranking_utility([1.0, 1.0, 2.0, 3.0]).tolist() == [0.5, 0.5, 0.0, -1.0]  # tie shares the mean


def test_fisher_norm_formula():
    """||F^(1/2) G||^2 from the closed form equals sum G^2/theta and the explicit (K-1)-dim quadratic form
    G'(diag(1/theta) + 11'/theta_K)G, on random distributions with mixed numbers of categories."""
    g = torch.Generator().manual_seed(0)
    K = torch.tensor([2, 3, 5, 4])
    mask = torch.arange(5)[None] < K[:, None]
    theta = torch.where(mask, torch.rand(4, 5, generator=g, dtype=torch.float64) + 0.05, 0.0)
    theta = theta / theta.sum(1, keepdim=True)
    G = torch.where(mask, torch.randn(4, 5, generator=g, dtype=torch.float64), 0.0)
    G = torch.where(mask, G - G.sum(1, keepdim=True) / K[:, None], 0.0)  # rows sum to 0 (tangent to the simplex)
    s = asng.fisher_sqrt(G, theta, K)
    explicit = 0.0
    for i, k in enumerate(K.tolist()):
        F_i = torch.diag(1 / theta[i, :k - 1]) + 1 / theta[i, k - 1]
        explicit += float(G[i, :k - 1] @ F_i @ G[i, :k - 1])
        assert (s[i, k - 1:] == 0).all()  # only the K-1 free coordinates
    assert float(s.square().sum()) == pytest.approx(explicit, rel=1e-10)
    assert float(torch.where(mask, G.square() / theta, 0.0).sum()) == pytest.approx(explicit, rel=1e-10)  # sum G^2/theta


def test_range_restriction_keeps_simplex_and_floor():
    g = torch.Generator().manual_seed(1)
    K = torch.tensor([2, 3, 5, 7, 4])
    theta_min = 1.0 / (len(K) * (K - 1).double())
    mask = torch.arange(7)[None] < K[:, None]
    for _ in range(20):
        raw = torch.where(mask, torch.randn(5, 7, generator=g, dtype=torch.float64) * 0.5, 0.0)
        raw = torch.where(mask, raw - raw.sum(1, keepdim=True) / K[:, None] + 1.0 / K[:, None], 0.0)  # rows sum 1
        out = asng.restrict_range(raw, K, theta_min)
        assert torch.allclose(out.sum(1), torch.ones(5, dtype=torch.float64), atol=1e-12)
        assert (out[mask] >= theta_min[:, None].expand(5, 7)[mask] - 1e-12).all()
        assert (out[~mask] == 0).all()
    feasible = torch.where(mask, 1.0 / K[:, None].double(), 0.0)  # already inside: unchanged
    assert torch.allclose(asng.restrict_range(feasible, K, theta_min), feasible, atol=1e-15)
    # the reference example: [0.622008, 0.044658, 0.333333] with theta_min 0.25
    row = asng.restrict_range(torch.tensor([[0.622008, 0.044658, 0.333334]], dtype=torch.float64), torch.tensor([3]),
                              torch.tensor([0.25], dtype=torch.float64))
    assert torch.allclose(row, torch.tensor([[0.454247, 0.25, 0.295753]], dtype=torch.float64), atol=1e-6)


def test_delta_adaptation():
    """First update: ||s||^2 = gamma = beta(2-beta), so Delta_1 = exp(beta^2 (2-beta)(1-1/alpha)). Then a consistent
    signal (the same ranking every step) makes delta grow; alternating rankings make it shrink every step."""
    samples = torch.stack([torch.zeros(20, dtype=torch.long), torch.ones(20, dtype=torch.long)])
    a = asng.ASNG([5] * 20, alpha=1.5)
    beta = 1.0 / math.sqrt(80)
    a.update(samples, [1.0, 2.0])
    assert a.Delta == pytest.approx(math.exp(beta ** 2 * (2 - beta) * (1 - 1 / 1.5)), rel=1e-12)
    for _ in range(5):
        a.update(samples, [1.0, 2.0])
    assert a.delta > 1.2
    b, deltas = asng.ASNG([5] * 20), [1.0]
    for t in range(10):
        b.update(samples, [1.0, 2.0] if t % 2 == 0 else [2.0, 1.0])
        deltas.append(b.delta)
    assert all(d1 < d0 for d0, d1 in zip(deltas, deltas[1:]))


def test_sampling_matches_theta_and_mode():
    a = asng.ASNG([2, 4])
    a.theta = torch.tensor([[0.3, 0.7, 0.0, 0.0], [0.1, 0.2, 0.6, 0.1]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([a.sample(g) for _ in range(20000)])
    for i, k in enumerate((2, 4)):
        freq = torch.bincount(draws[:, i], minlength=4).double() / len(draws)
        assert torch.allclose(freq, a.theta[i], atol=0.015) and (draws[:, i] < k).all()
    assert a.mode().tolist() == [1, 2]


def test_infeasible_floor_is_rejected():
    with pytest.raises(ValueError, match="D_valid"):
        asng.ASNG([3])


# --------------------------------------------------------------------------------- variables and single path
def darts_space():
    return spaces.get_space("darts", ops=[o for o in spaces.DARTS_OPS if o != "none"])


def test_darts_variables_give_two_distinct_inputs_per_node():
    space = darts_space()
    v = asng.ArchVariables(space)
    per_cell = [3, 7, 7, 6, 7, 7, 10, 7, 7]  # node 0: ops only; nodes 1-3: pair + two ops
    assert v.categories == [7, 7] + per_cell + [7, 7] + per_cell and len(v.categories) == 22
    a, g = asng.ASNG(v.categories), torch.Generator().manual_seed(0)
    for _ in range(50):
        idx = a.sample(g)
        arch, geno = v.decode(idx), v.genotype(idx)
        for ct in ("normal", "reduce"):
            for i, (s, e) in enumerate(space.node_slices):
                assert sum(spec is not None for spec in arch[ct][s:e]) == 2
            pairs = getattr(geno, ct)
            assert all(pairs[2 * i][1] < pairs[2 * i + 1][1] < 2 + i for i in range(4))  # two distinct inputs
            assert "none" not in [op for op, _ in pairs]
        assert spaces.parse_genotype(json.dumps(geno.to_json())) == geno
    # the mode decodes op_a onto the lower input of the most likely pair
    a.theta[v.nodes[3][2]] = torch.tensor([0.0] * 9 + [1.0], dtype=torch.float64)  # normal node 3: pair (3, 4)
    assert v.genotype(a.mode()).normal[6][1] == 3 and v.genotype(a.mode()).normal[7][1] == 4


def test_nb201_variables():
    v = asng.ArchVariables(spaces.get_space("nb201"))
    assert v.categories == [5] * 6
    idx = torch.tensor([0, 1, 2, 3, 4, 0])
    assert v.decode(idx) == {"normal": [0, 1, 2, 3, 4, 0]}
    assert str(v.genotype(idx)) == "|none~0|+|skip_connect~0|nor_conv_1x1~1|+|nor_conv_3x3~0|avg_pool_3x3~1|none~2|"
    with pytest.raises(spaces.SpaceError, match="none"):
        asng.ArchVariables(spaces.get_space("darts"))


def test_nb1shot1_variables_sample_valid_cells():
    """Space 2: 4 op variables, input sets C(2,1), C(3,2), C(4,2) and C(5,3) for the output; every sample decodes to
    exactly the allowed number of inputs per node and to a valid, pruned NB101 spec."""
    space = spaces.get_space("nb1shot1-2")
    v = asng.ArchVariables(space)
    assert v.categories == [3, 3, 3, 3, 2, 3, 6, 10] and v.groups[4:] == ["in2", "in3", "in4", "out"]
    a, gen = asng.ASNG(v.categories), torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = a.sample(gen)
        arch = v.decode(idx)
        assert arch["ops"] == idx[:4].tolist()
        assert {g: int(arch[g].sum()) for g in space.parents()} == space.parents()
        g = v.genotype(idx)
        assert g.space == "nb101" and len(g.matrix) == 7
        pruned = g.pruned()
        assert sum(map(sum, pruned.matrix)) <= 9
    idx = torch.tensor([1, 2, 0, 1, 1, 0, 5, 9])  # node2 <- 1; node3 <- {0, 1}; node4 <- {2, 3}; out <- {2, 3, 4}
    g = v.genotype(idx)
    assert g.ops[1:5] == tuple(spaces.NB1SHOT1_OPS[k] for k in (1, 2, 0, 1))
    assert [g.matrix[i][4] for i in range(4)] == [0, 0, 1, 1] and [g.matrix[i][6] for i in (2, 3, 4)] == [1, 1, 1]


def count_op_calls(model):
    calls = collections.Counter()
    for name, mod in model.named_modules():
        if isinstance(mod, spaces.MixedEdge):
            for k, op in enumerate(mod.ops):
                op.register_forward_hook(lambda m, i, o, key=(name, k): calls.update([key]))
    return calls


def expected_calls(model, arch_list):
    want = collections.Counter()
    for name, mod in model.named_modules():
        if isinstance(mod, spaces.MixedEdge):
            cell_name, e = name.rsplit(".edges.", 1)
            cell = model.get_submodule(cell_name)
            group = "reduce" if getattr(cell, "reduction", False) else "normal"
            for arch in arch_list:
                if arch[group][int(e)] is not None:
                    want[(name, arch[group][int(e)])] += 1
    return want


@pytest.mark.parametrize("space_name", ["darts", "nb201"])
def test_steps_compute_only_the_sampled_ops(space_name):
    torch.manual_seed(0)
    space = darts_space() if space_name == "darts" else spaces.get_space("nb201")
    model = space.supernet(C=4, layers=3 if space_name == "darts" else 1, num_classes=10)
    v = asng.ArchVariables(space)
    a = asng.ASNG(v.categories)
    drawn, sample = [], a.sample
    a.sample = lambda gen: drawn.append(sample(gen)) or drawn[-1]
    calls = count_op_calls(model)
    opt = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    asng.weight_step(model, a, v, opt, x, y, 5.0, 2, torch.Generator().manual_seed(0))
    archs = [v.decode(idx) for idx in drawn]
    assert len(archs) == 2 and calls == expected_calls(model, archs)
    if space_name == "darts":  # 8 of the 14 edges per cell, one op each, per sample
        assert sum(calls.values()) == 2 * 3 * 8
    used = {key for key in calls}
    for name, mod in model.named_modules():  # ops never sampled get no gradient, so SGD leaves them alone
        if isinstance(mod, spaces.MixedEdge):
            for k, op in enumerate(mod.ops):
                grads = [p.grad for p in op.parameters()]
                if (name, k) not in used:
                    assert all(gr is None for gr in grads)
    calls.clear()
    drawn.clear()
    theta0 = a.theta.clone()
    loss, acc, updated = asng.theta_step(model, a, v, x, y, 2, torch.Generator().manual_seed(1))
    assert calls == expected_calls(model, [v.decode(idx) for idx in drawn])
    assert updated == (not torch.equal(theta0, a.theta))


# ------------------------------------------------------------------------------------------- whole runs
def run(tmp_path, *extra):
    return asng.main(TINY + ["--out-dir", str(tmp_path)] + list(extra))


def check_run(result, space_name, groups):
    run_dir = Path(result["run_dir"])
    for f in ("args.json", "metrics.jsonl", "genotype.json", "cell.dot"):
        assert (run_dir / f).is_file()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1
    for key in ["train_loss", "valid_acc", "theta_convergence", "delta", "genotype"] + [f"entropy_{g}" for g in groups]:
        assert key in metrics[0]
    assert 0 < metrics[0]["theta_convergence"] <= 1 and metrics[0]["delta"] > 0
    geno = spaces.parse_genotype(str(run_dir / "genotype.json"))
    assert geno.space == space_name and str(geno) == result["genotype_str"]
    for row in result["theta"].values():
        assert sum(row) == pytest.approx(1.0, abs=1e-9)


def test_smoke_darts(tmp_path, small_synthetic):
    result = run(tmp_path, "--layers", "3")
    check_run(result, "darts", ("normal", "reduce"))
    assert len(result["theta"]) == 22


def test_smoke_nb201_and_determinism(tmp_path, small_synthetic):
    r1 = run(tmp_path, "--space", "nb201", "--layers", "1", "--run-name", "a")
    check_run(r1, "nb201", ("normal",))
    r2 = run(tmp_path, "--space", "nb201", "--layers", "1", "--run-name", "b")
    assert r1["genotype_str"] == r2["genotype_str"] and r1["theta"] == r2["theta"] and r1["delta"] == r2["delta"]
    assert r1["theta"] != {n: [1 / 5] * 5 for n in r1["theta"]}  # theta moved


@pytest.mark.parametrize("space_name", ["nb1shot1-1", "nb1shot1-2", "nb1shot1-3"])
def test_smoke_nb1shot1_gives_nb101_specs_and_is_deterministic(tmp_path, small_synthetic, space_name):
    r1 = run(tmp_path, "--space", space_name, "--layers", "1", "--batch-size", "16", "--run-name", "a")
    check_run(r1, "nb101", ("ops", "out"))
    spec = spaces.parse_genotype(str(Path(r1["run_dir"]) / "genotype.json")).pruned()
    assert sum(map(sum, spec.matrix)) <= 9
    r2 = run(tmp_path, "--space", space_name, "--layers", "1", "--batch-size", "16", "--run-name", "b")
    assert r1["genotype_str"] == r2["genotype_str"] and r1["theta"] == r2["theta"]


@pytest.mark.parametrize("bad", [["--nb201-table", "t.csv"], ["--lam", "1"],
                                 ["--delta-init", "0"]])
def test_bad_flags_exit_before_writing(tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        run(tmp_path, *bad)
    assert exc.value.code == 2 and "error:" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_data_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "algos" / "asng.py"), "--dataset", str(tmp_path / "no.npz"),
                           "--out-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
