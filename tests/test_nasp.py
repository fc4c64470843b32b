"""Tests for algos/nasp.py (NASP) and the NASP part of benchmarks/speed.py."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nasp
import spaces

ROOT = Path(__file__).resolve().parents[1]
SLICES = [(0, 2), (2, 5), (5, 9), (9, 14)]
TINY = ["--dataset", "synthetic", "--train-subset", "64", "--batch-size", "16", "--C", "4", "--layers", "3",
        "--epochs", "1"]




def tiny_setup(n_ops, seed=0, C=4, layers=3, batch=8, size=8):
    torch.manual_seed(seed)
    space = nasp.nasp_space(n_ops)
    model = space.supernet(C, layers, 10)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    return space, model, x, y


def random_A(space, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {g: torch.nn.Parameter(torch.rand(*s, generator=gen)) for g, s in space.arch_shapes().items()}


# ------------------------------------------------------------------------------------------- spaces / flags
def test_op_sets_are_the_papers():
    s12, s7 = nasp.nasp_space(12), nasp.nasp_space(7)
    assert s12.ops["normal"] == ["skip_connect", "conv_3x1_1x3", "dil_conv_3x3", "conv_1x1", "conv_3x3",
                                 "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7"]
    assert s12.ops["reduce"] == ["skip_connect", "avg_pool_3x3", "max_pool_3x3", "max_pool_5x5", "max_pool_7x7"]
    assert len(set(s12.ops["normal"]) | set(s12.ops["reduce"])) == 12
    assert s7.ops["normal"] == s7.ops["reduce"] and len(s7.ops["normal"]) == 7 and "none" not in s7.ops["normal"]
    assert s12.arch_shapes() == {"normal": (14, 8), "reduce": (14, 5)}
    with pytest.raises(spaces.SpaceError):
        nasp.nasp_space(8)


def test_defaults_are_the_papers_search():
    a = nasp.parse_args([])
    assert (a.space, a.ops, a.C, a.layers, a.batch_size, a.epochs, a.reg) == ("darts", 7, 16, None, 64, 50, 0.0)
    assert (a.arch_lr, tuple(a.arch_betas), a.arch_wd, a.lr, a.grad_clip) == (3e-4, (0.5, 0.999), 1e-3, 0.025, 5.0)
    assert nasp.nasp_space(7).default_layers == 8


def test_init_is_one_half():
    A = nasp.init_arch(nasp.nasp_space(12), "cpu")
    assert all(torch.equal(a, torch.full_like(a, 0.5)) and a.requires_grad for a in A.values())


# ------------------------------------------------------------------------------------------- proximal operators
def test_prox_c2_is_a_clamp_to_unit_box():
    A = {"normal": torch.tensor([[-0.3, 0.2, 1.7], [0.0, 1.0, 0.5]])}
    nasp.prox_c2_(A)
    assert torch.equal(A["normal"], torch.tensor([[0.0, 0.2, 1.0], [0.0, 1.0, 0.5]]))


def test_prox_c1_all_half_picks_first_op_on_first_two_edges_per_node():
    abar = nasp.prox_c1(torch.full((14, 8), 0.5), SLICES)
    expected = torch.zeros(14, 8)
    expected[[0, 1, 2, 3, 5, 6, 9, 10], 0] = 1.0
    assert torch.equal(abar, expected)


def test_prox_c1_closed_form_top2_edges():
    a = torch.zeros(14, 3)
    a[0] = torch.tensor([0.1, 0.2, 0.05])   # node 0: both edges kept, op 1
    a[1] = torch.tensor([0.9, 0.9, 0.1])    # tie inside a row: first op
    a[2:5] = torch.tensor([[0.3, 0.1, 0.0], [0.0, 0.0, 0.8], [0.7, 0.0, 0.0]])  # node 1: keep edges 3 (0.8), 4 (0.7)
    a[5:9] = torch.tensor([[0.4, 0.0, 0.0], [0.0, 0.6, 0.0], [0.0, 0.0, 0.6], [0.5, 0.0, 0.0]])  # tie 6/7: both
    a[9:14] = torch.tensor([[0.2, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 0.2], [0.2, 0.0, 0.0], [0.0, 0.9, 0.0]])
    abar = nasp.prox_c1(a, SLICES)
    hot = {e: int(abar[e].argmax()) for e in range(14) if abar[e].any()}
    assert hot == {0: 1, 1: 0, 3: 2, 4: 0, 6: 1, 7: 2, 9: 0, 13: 1}  # node 3: 13 (0.9), then lowest of the 0.2 ties
    assert set(abar.unique().tolist()) <= {0.0, 1.0} and (abar.sum(1) <= 1).all()


def test_prox_c1_random_properties():
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        a = torch.rand(14, 8, generator=gen)
        abar = nasp.prox_c1(a, SLICES)
        assert ((abar.sum(1) == 0) | (abar.sum(1) == 1)).all()
        for s, e in SLICES:
            kept = [r for r in range(s, e) if abar[r].any()]
            assert len(kept) == 2
            assert sorted(kept) == sorted(torch.topk(a[s:e].max(1).values, 2).indices.add(s).tolist())
            for r in kept:
                assert abar[r, a[r].argmax()] == 1


# ------------------------------------------------------------------------------------------- regulariser
def test_param_counts_match_the_official_table():
    s = nasp.nasp_space(12)
    # at C=12: conv k x k = 144 k^2, conv_3x1_1x3 = 2*144*3, dil = 9*12 + 144, sep_k = 2 (12 k^2 + 144)
    expected = [0, 864, 252, 144, 1296, 504, 888, 1464]
    assert nasp.op_param_counts(s.ops["normal"]) == expected
    w = nasp.size_weights(s, "cpu")
    assert set(w) == {"normal"}  # reduction ops have no parameters
    assert torch.allclose(w["normal"], torch.tensor(expected, dtype=torch.float32) / 5412)
    assert set(nasp.size_weights(nasp.nasp_space(7), "cpu")) == {"normal"}


def test_regulariser_value_and_gradient():
    s = nasp.nasp_space(12)
    rel = nasp.size_weights(s, "cpu")
    A = random_A(s, 1)
    abar = {g: nasp.prox_c1(a, SLICES).requires_grad_(True) for g, a in A.items()}
    r = nasp.size_penalty(abar, rel)
    p = rel["normal"]
    assert r.item() == pytest.approx(float((p * abar["normal"].detach().pow(2).sum(0)).sum()))
    g = torch.autograd.grad(3.0 * r, list(abar.values()), allow_unused=True)
    assert torch.allclose(g[0], 2 * 3.0 * p * abar["normal"].detach())  # d/dA_bar = 2 eta (p_k/p_bar) A_bar
    assert g[1] is None  # reduction cells are not regularised


# ------------------------------------------------------------------------------------------- the two steps
@pytest.mark.parametrize("reg", [0.0, 0.5])
def test_arch_step_applies_grad_at_abar_to_A(reg):
    space, model, x, y = tiny_setup(12)
    A = random_A(space)
    A0 = {g: a.detach().clone() for g, a in A.items()}
    rel = nasp.size_weights(space, "cpu")
    # reference: autograd directly on A_bar
    abar = {g: nasp.prox_c1(a, space.node_slices).requires_grad_(True) for g, a in A0.items()}
    loss = F.cross_entropy(model(x, abar), y) + reg * nasp.size_penalty(abar, rel)
    ref = torch.autograd.grad(loss, list(abar.values()))
    opt = torch.optim.Adam(A.values(), 1e-2, betas=(0.5, 0.999), weight_decay=1e-3)
    nasp.arch_step(model, A, opt, x, y, space.node_slices, rel, reg)
    for (g, a), r in zip(A.items(), ref):
        assert torch.allclose(a.grad, r, atol=1e-6, rtol=1e-4)
        dropped = abar[g].detach().sum(1) == 0
        assert a.grad[dropped].abs().sum() > 0  # dropped edges get gradient too (they can become selected)
        assert not torch.equal(a.detach(), A0[g])  # A (continuous) moved, and is not A_bar
        assert not torch.equal(a.detach(), abar[g].detach())
    assert all(p.grad is None for p in model.parameters())  # the arch step leaves the weights alone


@pytest.mark.parametrize("n_ops", [7, 12])
def test_weight_step_calls_only_the_ops_of_abar(n_ops):
    space, model, x, y = tiny_setup(n_ops)
    A = random_A(space, 2)
    abar = nasp.discretize(A, space.node_slices)
    calls = {}

    def counter(key):
        def hook(module, inp, out):
            calls[key] = calls.get(key, 0) + 1
        return hook

    for c, cell in enumerate(model.cells):
        for e, edge in enumerate(cell.edges):
            for k, op in enumerate(edge.ops):
                op.register_forward_hook(counter((c, e, k)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=3e-4)
    nasp.weight_step(model, abar, opt, x, y, 5.0)
    expected = {(c, e, k) for c, cell in enumerate(model.cells) for e, k in
                abar["reduce" if cell.reduction else "normal"].nonzero().tolist()}
    assert set(calls) == expected and all(v == 1 for v in calls.values())
    assert len(expected) == 8 * len(model.cells)  # 4 nodes x 2 edges x 1 op per cell
    for n, p in model.named_parameters():
        if ".ops." in n:
            c, e, k = (int(t) for t in (n.split(".")[1], n.split(".")[3], n.split(".")[5]))
            assert torch.equal(p, before[n]) == ((c, e, k) not in expected), n


def test_child_forward_equals_abar_mixture():
    space, model, x, y = tiny_setup(12)
    model.eval()
    abar = nasp.discretize(random_A(space, 4), space.node_slices)
    with torch.no_grad():
        child = model(x, nasp.child_specs(abar))
    mixture = model(x, {g: a.clone().requires_grad_(True) for g, a in abar.items()})
    assert torch.allclose(child, mixture.detach(), atol=1e-5)


def test_derive_returns_abar():
    space = nasp.nasp_space(12)
    A = random_A(space, 5)
    g = nasp.derive_genotype(space, A)
    for ct in ("normal", "reduce"):
        abar = nasp.prox_c1(A[ct], space.node_slices)
        pairs = getattr(g, ct)
        got = set()
        for i, (op, j) in enumerate(pairs):
            s, _ = space.node_slices[i // 2]
            got.add((s + j, space.ops[ct].index(op)))
        assert got == {tuple(t) for t in abar.nonzero().tolist()}


# ------------------------------------------------------------------------------------------- runs
@pytest.mark.parametrize("n_ops", [7, 12])
def test_smoke_run(tmp_path, n_ops):
    res = nasp.main(TINY + ["--ops", str(n_ops), "--out-dir", str(tmp_path), "--reg", "0.1"])
    run = Path(res["run_dir"])
    assert {p.name for p in run.iterdir()} >= {"args.json", "metrics.jsonl", "genotype.json", "cell.dot"}
    g = spaces.parse_genotype(str(run / "genotype.json"))
    space = nasp.nasp_space(n_ops)
    assert {op for op, _ in g.normal} <= set(space.ops["normal"]) and {op for op, _ in g.reduce} <= set(space.ops["reduce"])
    saved = json.loads((run / "genotype.json").read_text())
    assert saved["algorithm"] == "nasp" and saved["ops"] == n_ops
    A = {k: torch.tensor(v) for k, v in saved["alphas"].items()}
    assert all(((a >= 0) & (a <= 1)).all() for a in A.values())  # prox onto C2 held
    assert str(nasp.derive_genotype(space, A)) == str(g)
    abar = {k: torch.tensor(v) for k, v in saved["alphas_discrete"].items()}
    assert all(torch.equal(abar[k], nasp.prox_c1(A[k], space.node_slices)) for k in A)
    m = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(m) == 1 and {"entropy_normal", "entropy_reduce", "arch_step_s", "weight_step_s", "genotype"} <= set(m[0])


def test_nb201_keeps_every_edge_one_op_each_and_logs_the_oracle(tmp_path, shared_data):
    """On NB201 every edge exists: prox onto C1 is one op per edge (no top-2 rule), `none` is not a candidate."""
    space = nasp.nasp_space(None, "nb201")
    assert "none" not in space.ops["normal"] and nasp.edges_kept(space) is None
    a = torch.rand(6, 4)
    abar = nasp.prox_c1(a, space.node_slices, None)
    assert torch.equal(abar.sum(1), torch.ones(6)) and torch.equal(abar.argmax(1), a.argmax(1))
    res = nasp.main(TINY + ["--space", "nb201", "--layers", "1", "--out-dir", str(tmp_path),
                            "--nb201-table", str(shared_data / "nb201" / "nb201_oracle.csv.gz")])
    g = spaces.parse_genotype(str(Path(res["run_dir"]) / "genotype.json"))
    assert isinstance(g, spaces.NB201Genotype) and "none" not in str(g)
    m = json.loads((Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()[-1])
    assert m["genotype"] == str(g) and 0 < m["oracle_c10_test_200"] <= 100


def test_abar_value_paper_keeps_the_entry_and_scales_the_child():
    """--abar-value paper: A_bar[e, k*] = A[e, k*] (projection onto C1) on the same support as the official 0/1 A_bar;
    the child then runs only op k* scaled by that entry."""
    a = torch.rand(14, 7, generator=torch.Generator().manual_seed(3))
    one, paper = nasp.prox_c1(a, SLICES), nasp.prox_c1(a, SLICES, values=True)
    assert torch.equal(one != 0, paper != 0) and torch.equal(paper[one != 0], a[one != 0])
    specs = nasp.child_specs({"normal": paper})["normal"]
    for e, spec in enumerate(specs):
        if one[e].any():
            w, k = spec
            assert k == int(one[e].argmax()) and float(w[k]) == float(a[e, k])
        else:
            assert spec is None


@pytest.mark.parametrize("space_name", ["nb1shot1-1", "nb1shot1-2", "nb1shot1-3"])
def test_nb1shot1_abar_keeps_the_allowed_inputs(space_name):
    space = nasp.nasp_space(None, space_name)
    keep = nasp.edges_kept(space)
    A = random_A(space, seed=1)
    abar = nasp.discretize(A, None, keep)
    assert torch.equal(abar["ops"].sum(1), torch.ones(space.n)) and torch.equal(abar["ops"].argmax(1), A["ops"].argmax(1))
    for g, k in keep.items():  # the k largest inputs, 0/1
        assert int(abar[g].sum()) == k and set(abar[g].unique().tolist()) <= {0.0, 1.0}
        assert set(abar[g][0].nonzero().flatten().tolist()) == set(torch.topk(A[g][0].detach(), k).indices.tolist())
    specs = nasp.child_specs(abar)
    assert specs["ops"] == A["ops"].argmax(1).tolist() and all(torch.equal(specs[g], abar[g]) for g in keep)
    spec = nasp.derive_genotype(space, A)
    assert spec.space == "nb101" and sum(map(sum, spec.pruned().matrix)) <= 9


@pytest.mark.parametrize("space_name", ["nb1shot1-1", "nb1shot1-2", "nb1shot1-3"])
def test_smoke_nb1shot1_nb101_spec_and_deterministic(tmp_path, space_name):
    args = TINY + ["--space", space_name, "--layers", "1", "--reg", "0.1"]
    r1 = nasp.main(args + ["--out-dir", str(tmp_path / "a")])
    r2 = nasp.main(args + ["--out-dir", str(tmp_path / "b")])
    g = spaces.parse_genotype(str(Path(r1["run_dir"]) / "genotype.json"))
    assert g.space == "nb101" and str(g) == r1["genotype_str"] and sum(map(sum, g.pruned().matrix)) <= 9
    assert r1["genotype"] == r2["genotype"] and r1["alphas"] == r2["alphas"]
    r3 = nasp.main(args + ["--abar-value", "paper", "--out-dir", str(tmp_path / "c")])
    assert spaces.parse_genotype(str(Path(r3["run_dir"]) / "genotype.json")).space == "nb101"
    if space_name == "nb1shot1-2":  # the search's genotype.json retrains with train_eval.py's NB101 protocol
        import train_eval
        ev = train_eval.main(["--genotype", str(Path(r1["run_dir"]) / "genotype.json"), "--dataset", "synthetic",
                              "--epochs", "1", "--batch-size", "16", "--C", "4", "--layers", "1", "--device", "cpu",
                              "--out-dir", str(tmp_path / "eval"), "--train-subset", "32"])
        assert ev["protocol"].startswith("nb101")


def test_deterministic(tmp_path):
    r1 = nasp.main(TINY + ["--ops", "12", "--out-dir", str(tmp_path / "a")])
    r2 = nasp.main(TINY + ["--ops", "12", "--out-dir", str(tmp_path / "b")])
    assert r1["genotype"] == r2["genotype"] and r1["alphas"] == r2["alphas"]
    assert r1["alphas"] != {g: [[0.5] * len(r) for r in rows] for g, rows in r1["alphas"].items()}  # A moved


@pytest.mark.parametrize("extra, needle", [
    (["--ops", "5"], "--ops must be 7"),
    (["--ops", "8"], "--ops must be 7"),
    (["--space", "nb1shot1-1", "--ops", "7"], "--ops chooses"),
    (["--space", "nb201", "--ops", "12"], "--ops chooses"),
    (["--nb201-table", "x.csv"], "--nb201-table needs --space nb201"),
    (["--reg", "-1"], "argument --reg: must be a finite number >= 0"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, extra, needle):
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as exc:
        nasp.main(TINY + ["--out-dir", str(out), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error:" in err[-1] and needle in err[-1]
    assert not out.exists()


def test_cli_data_error_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(ROOT / "algos" / "nasp.py"), *TINY, "--out-dir", str(out),
                           "--dataset", "no_such_dataset"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "unknown dataset" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


# ------------------------------------------------------------------------------------------- benchmark logic
@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("nasref_speed", ROOT / "benchmarks" / "speed.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_interleaves_and_counts(speed):
    calls, order = [], []
    fns = {n: (lambda n=n: calls.append(n)) for n in ("a", "b", "c")}
    times = speed.interleaved_times(fns, repeats=4, warmup=2, order_log=order)
    assert calls[:6] == ["a", "b", "c"] * 2 and len(calls) == 6 + 12
    assert order[:6] == ["a", "b", "c", "b", "c", "a"]
    assert {n: len(t) for n, t in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert speed.median_ms([0.001, 0.003, 0.002]) == pytest.approx(2.0)


def test_benchmark_step_functions_tiny(speed):
    cfg = speed.BenchConfig(batch_size=4, C=2, layers=3, image_size=8, repeats=1, warmup=0)
    space = nasp.nasp_space(12)
    A = speed.largest_arch(space)
    abar = nasp.discretize(A, space.node_slices)
    assert all(set(abar[g].nonzero()[:, 1].tolist()) == {k} for g, k in (("normal", 7), ("reduce", 4)))
    assert len(speed.random_arch(space, 0)["normal"]) == 14
    for fn in (speed.darts_weight_step_fn(space, cfg), speed.nasp_weight_step_fn(space, cfg, A)):
        loss, acc = fn()
        assert loss > 0 and 0 <= acc <= 1
    rows = speed.bench_nasp(cfg)
    assert [r.case for r in rows] == ["7 ops, random child (x3)", "7 ops, largest child",
                                      "12 ops, random child (x3)", "12 ops, largest child"]
    assert [r.target for r in rows] == [5.0, None, 10.0, None]
    assert all(r.ratio == pytest.approx(r.baseline_ms / r.candidate_ms) for r in rows)
    assert "nasp" in speed.BENCHMARKS


def test_benchmark_cli_tiny(speed, tmp_path, capsys):
    out = tmp_path / "speed.json"
    rows = speed.main(["--only", "nasp", "--batch-size", "2", "--C", "2", "--layers", "3", "--image-size", "8",
                       "--repeats", "1", "--warmup", "0", "--json", str(out)])
    text = capsys.readouterr().out
    assert "machine:" in text and "torch=" in text and "ratio" in text and "12 ops, random child (x3)" in text
    saved = json.loads(out.read_text())
    assert len(saved["rows"]) == len(rows) == 4 and saved["config"]["batch_size"] == 2
    assert speed.parse_args(["--quick"]).quick
    with pytest.raises(SystemExit):
        speed.parse_args(["--repeats", "0"])
