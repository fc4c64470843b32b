"""algos/xnas.py: closed-form checks of the XNAS step, per-sample clipping and wipeout; the batched per-sample /
per-cell expert losses; smoke runs on darts and nb201; determinism; clear errors for unsupported combinations."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import spaces
import xnas

ROOT = Path(__file__).resolve().parents[1]
INF = float("inf")




def _run(tmp_path, dataset, *extra):
    return xnas.main(["--dataset", dataset, "--epochs", "2", "--C", "4", "--batch-size", "16", "--device", "cpu",
                      "--out-dir", str(tmp_path), *extra])


# ------------------------------------------------------------------------------------------- closed form
def test_learning_rate_is_sqrt_2lnN_over_T_L2():
    assert xnas.learning_rate(8, 100, 2.0) == pytest.approx(math.sqrt(2 * math.log(8) / (100 * 4.0)))
    # DARTS setting: 391 steps x 50 epochs; 6 normal / 2 reduction cells -> different eta per group (L = 1)
    assert xnas.learning_rate(8, 6 * 391 * 50, 1.0) == pytest.approx(5.954e-3, rel=1e-3)
    assert xnas.learning_rate(8, 2 * 391 * 50, 1.0) == pytest.approx(1.0313e-2, rel=1e-3)


def test_clip_is_per_sample_per_edge_max_abs_and_keeps_direction():
    g = torch.tensor([[[3.0, -1.5, 0.0], [0.2, -0.5, 0.1]],   # sample 0: edge 0 too big, edge 1 fine
                      [[0.0, 0.0, 0.0], [-4.0, 2.0, 1.0]]])   # sample 1: zeros stay zeros, edge 1 too big
    c = xnas.clip_expert_losses(g, L=1.0)
    assert torch.allclose(c[0, 0], torch.tensor([1.0, -0.5, 0.0]))
    assert torch.equal(c[0, 1], g[0, 1]) and torch.equal(c[1, 0], g[1, 0])
    assert torch.allclose(c[1, 1], torch.tensor([-1.0, 0.5, 0.25]))
    assert c.abs().max() <= 1.0
    # clipping before the batch mean is not the same as clipping the mean (archai-style aggregate clip)
    assert not torch.allclose(c.mean(0), xnas.clip_expert_losses(g.mean(0), L=1.0))


def test_xnas_step_is_exponentiated_gradient_in_log_space():
    lw = torch.log_softmax(torch.tensor([[0.0, 0.3, -0.2, -INF]], dtype=torch.float64), -1)
    g = torch.tensor([[0.5, 0.0, -0.5, 7.0]])
    new, n_wiped = xnas.xnas_update(lw, g, eta=0.1, L=1.0, rounds_left=None)
    expected = torch.log_softmax(torch.tensor([[-0.05, 0.3, -0.15, -INF]], dtype=torch.float64), -1)
    assert torch.allclose(new, expected) and n_wiped == 0
    # v <- v * exp(-eta g), renormalised: same as the multiplicative form on probabilities
    v = lw.exp() * torch.exp(-0.1 * g.double())
    assert torch.allclose(new.exp(), v / v.sum())
    assert new[0, 3] == -INF  # a wiped op stays out whatever its loss


def test_wipeout_threshold_is_2_eta_L_times_rounds_left():
    eta, L = 0.1, 2.0
    lw = torch.tensor([[0.0, -1.0, -1.2, -2.0, 0.0]], dtype=torch.float64)
    # 3 rounds left: margin 2 * 0.1 * 2 * 3 = 1.2 in log-weight; gap 1.0 kept, gap 1.2 kept (strict), gap 2.0 wiped
    new, n = xnas.xnas_update(lw, torch.zeros(1, 5), eta, L, rounds_left=3)
    assert n == 1 and torch.isinf(new[0, 3]) and torch.isfinite(new[0, [0, 1, 2, 4]]).all()
    # 2 rounds left: margin 0.8 -> gaps 1.0 and 1.2 go as well; the tied leaders both stay
    new2, n2 = xnas.xnas_update(new, torch.zeros(1, 5), eta, L, rounds_left=2)
    assert n2 == 2 and torch.isfinite(new2[0, [0, 4]]).all() and torch.isinf(new2[0, 1:4]).all()
    # the surviving entries are log-probabilities again
    assert torch.allclose(torch.logsumexp(new2, -1), torch.zeros(1, dtype=torch.float64))
    # last step (no rounds left): only the leader survives
    last, n3 = xnas.xnas_update(new2, torch.tensor([[0.0, 0, 0, 0, 0.01]]), eta, L, rounds_left=0)
    assert n3 == 1 and torch.isfinite(last[0]).tolist() == [True, False, False, False, False]


def test_wiped_op_could_not_have_caught_up():
    """Soundness of the rule: an op wiped with r rounds left loses to the leader even if, in every remaining round,
    it gets the best possible loss (-L) and the leader the worst (+L)."""
    eta, L, r = 0.05, 1.0, 4
    lw = torch.tensor([[0.0, -0.41, -0.39]], dtype=torch.float64)  # margin 2 * 0.05 * 1 * 4 = 0.4
    new, _ = xnas.xnas_update(lw, torch.zeros(1, 3), eta, L, rounds_left=r)
    assert torch.isinf(new[0, 1]) and torch.isfinite(new[0, 2])
    best_case = lw.clone()
    for _ in range(r):
        best_case, _ = xnas.xnas_update(best_case, torch.tensor([[L, -L, -L]]), eta, L, rounds_left=None)
    assert best_case[0, 1] < best_case[0, 0] < best_case[0, 2]  # op 1 cannot pass the leader; op 2 (kept) can


# ------------------------------------------------------------------------------ batched expert losses
def _nb201_model(seed=0):
    torch.manual_seed(seed)
    model = spaces.get_space("nb201").supernet(C=4, layers=1, edge=xnas.XnasEdge)
    return model, xnas.assign_cell_ranks(model)


def test_cell_ranks_per_group():
    model = spaces.get_space("darts").supernet(C=4, layers=8, edge=xnas.XnasEdge)
    assert xnas.assign_cell_ranks(model) == {"normal": 6, "reduce": 2}
    ranks = [(c.reduction, c.edges[0].cell_rank) for c in model.cells]
    assert ranks == [(False, 0), (False, 1), (True, 0), (False, 2), (False, 3), (True, 1), (False, 4), (False, 5)]
    assert _nb201_model()[1] == {"normal": 3}


def test_batched_per_sample_per_cell_losses_equal_single_sample_gradients():
    model, cells = _nb201_model()
    model.eval()  # BN on running statistics: samples independent, so batch-of-1 gradients are the reference
    lw = torch.randn(6, 5, dtype=torch.float64)
    lw[0, 3] = -INF  # a wiped-out op on edge 0
    log_w = {"normal": torch.log_softmax(lw, -1)}
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([1, 4, 7])
    G = xnas.per_sample_expert_losses(model, log_w, cells, x, y)[0]["normal"]
    assert G.shape == (3, 3, 6, 5)  # (cells, samples, edges, ops)
    for b in range(3):
        Gb = xnas.per_sample_expert_losses(model, log_w, cells, x[b:b + 1], y[b:b + 1])[0]["normal"]
        assert torch.allclose(G[:, b], Gb[:, 0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(G[0], G[1])  # cells get their own losses
    assert (G[..., 0] == 0).all() and (G[:, :, 0, 3] == 0).all()  # `none` and the wiped op: loss 0, not computed
    # summed over cells and samples: the gradient of the summed loss w.r.t. one shared weight vector per edge
    ref = spaces.get_space("nb201").supernet(C=4, layers=1)
    ref.load_state_dict(model.state_dict())
    ref.eval()
    p = xnas.mixture_weights(log_w)["normal"].clone().requires_grad_(True)
    F.cross_entropy(ref(x, {"normal": list(p)}), y, reduction="sum").backward()
    alive = torch.isfinite(log_w["normal"])
    assert torch.allclose(G.sum((0, 1))[alive], p.grad[alive], atol=1e-5, rtol=1e-4)


def test_wiped_ops_are_never_computed_and_steps_touch_only_their_parameters():
    model, cells = _nb201_model()
    lw = torch.zeros(6, 5, dtype=torch.float64)
    lw[:, 3] = -INF  # nor_conv_3x3 wiped out on every edge
    log_w = {"normal": torch.log_softmax(lw, -1)}
    calls = {"wiped": 0, "alive": 0}
    for m in model.modules():
        if isinstance(m, xnas.XnasEdge):
            m.ops[3].register_forward_hook(lambda *a: calls.__setitem__("wiped", calls["wiped"] + 1))
            m.ops[2].register_forward_hook(lambda *a: calls.__setitem__("alive", calls["alive"] + 1))
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    w0 = [p.detach().clone() for p in model.parameters()]
    before = log_w["normal"].clone()
    xnas.arch_step(model, log_w, x, y, cells, {"normal": 0.1}, 1.0, {"normal": 1000})
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), w0))  # arch step: weights untouched
    assert not torch.equal(log_w["normal"], before) and torch.isinf(log_w["normal"][:, 3]).all()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    after_arch = log_w["normal"].clone()
    xnas.weight_step(model, log_w, opt, x, y, grad_clip=5.0)
    assert torch.equal(log_w["normal"], after_arch)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), w0))
    assert calls == {"wiped": 0, "alive": 2 * 18}  # 6 edges x 3 cells, once per step


# ------------------------------------------------------------------------------------------ smoke runs
@pytest.mark.parametrize("space,layers,n_ops,epochs", [("nb201", "1", 5, 2), ("darts", "3", 8, 1)])
def test_smoke_writes_outputs_and_ends_with_one_op_per_edge(tmp_path, tiny_npz, space, layers, n_ops, epochs):
    res = _run(tmp_path, tiny_npz, "--space", space, "--layers", layers, "--epochs", str(epochs))
    run = Path(res["run_dir"])
    assert {p.name for p in run.iterdir()} == {"args.json", "metrics.jsonl", "genotype.json", "cell.dot", "checkpoint.pt"}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1))
    groups = ["normal"] if space == "nb201" else ["normal", "reduce"]
    for g in groups:
        assert f"entropy_{g}" in metrics[-1] and f"wiped_{g}" in metrics[-1]
        # at the last update (t = T) the wipeout margin is 0: only each edge's leader survives
        n_edges = 6 if space == "nb201" else 14
        assert metrics[-1][f"wiped_{g}"] == n_edges * (n_ops - 1) and metrics[-1][f"entropy_{g}"] < 1e-6
        assert metrics[0][f"wiped_{g}"] <= metrics[-1][f"wiped_{g}"]
    assert res["steps"] == 3 * epochs
    if space == "darts":  # 1 normal and 2 reduction cells: multiple learning rates
        assert res["rounds_per_step"] == {"normal": 1, "reduce": 2}
        assert res["eta"]["normal"] == pytest.approx(xnas.learning_rate(8, 3, 1.0))
        assert res["eta"]["reduce"] == pytest.approx(xnas.learning_rate(8, 6, 1.0))
    g = spaces.parse_genotype(str(run / "genotype.json"))
    assert str(g) == metrics[-1]["genotype"] == res["genotype_str"]
    stored = json.loads((run / "genotype.json").read_text())["log_weights"]
    assert all(row.count(None) == n_ops - 1 for rows in stored.values() for row in rows)


def test_no_wipeout_keeps_every_op(tmp_path, tiny_npz):
    res = _run(tmp_path, tiny_npz, "--space", "nb201", "--layers", "1", "--epochs", "1", "--no-wipeout")
    assert res["wiped"] == {"normal": 0}


def test_top_k_wipeout_keeps_what_can_still_enter_the_top_k():
    """keep = 2 (a 1Shot1 input row with 2 parents): the margin is measured from the 2nd best, not the leader."""
    log_w = torch.log_softmax(torch.tensor([[3.0, 2.0, 0.5, -3.0]], dtype=torch.float64), dim=-1)
    zero = torch.zeros(1, 4)
    leader, _ = xnas.xnas_update(log_w, zero, eta=1.0, L=1.0, rounds_left=1, keep=1)  # margin 2 below 3.0
    assert torch.isfinite(leader).tolist() == [[True, True, False, False]]
    top2, wiped = xnas.xnas_update(log_w, zero, eta=1.0, L=1.0, rounds_left=1, keep=2)  # margin 2 below 2.0
    assert torch.isfinite(top2).tolist() == [[True, True, True, False]] and wiped == 1


@pytest.mark.parametrize("space_name", ["nb1shot1-1", "nb1shot1-2", "nb1shot1-3"])
def test_nb1shot1_smoke_nb101_spec_deterministic_and_inputs_survive(tmp_path, tiny_npz, space_name):
    """Every cell is a round of every group (9 cells at 3 per stack, 3 here at 1); after the last step each input row
    keeps exactly its allowed parents and each op row one op, so the derived cell is the survivors."""
    space = spaces.get_space(space_name)
    model = space.supernet(4, 1, 10, edge=xnas.XnasEdge)
    assert xnas.assign_cell_ranks(model, space.arch_shapes()) == {g: 3 for g in space.arch_shapes()}
    a = _run(tmp_path / "a", tiny_npz, "--space", space_name, "--layers", "1")
    b = _run(tmp_path / "b", tiny_npz, "--space", space_name, "--layers", "1")
    assert a["genotype"] == b["genotype"] and a["log_weights"] == b["log_weights"]
    spec = spaces.parse_genotype(str(Path(a["run_dir"]) / "genotype.json"))
    assert spec.space == "nb101" and sum(map(sum, spec.pruned().matrix)) <= 9
    alive = {g: sum(v is not None for v in row) for g, rows in a["log_weights"].items() for row in rows[:1]}
    assert {g: alive[g] for g in space.parents()} == space.parents()
    assert all(sum(v is not None for v in row) == 1 for row in a["log_weights"]["ops"])


def test_same_seed_same_result(tmp_path, tiny_npz):
    flags = ("--space", "nb201", "--layers", "1", "--epochs", "1", "--no-wipeout")  # no wipeout: compare all weights
    a = _run(tmp_path / "a", tiny_npz, *flags, "--seed", "7")
    b = _run(tmp_path / "b", tiny_npz, *flags, "--seed", "7")
    assert a["genotype"] == b["genotype"] and a["log_weights"] == b["log_weights"]
    c = _run(tmp_path / "c", tiny_npz, *flags, "--seed", "8")
    assert c["log_weights"] != a["log_weights"]


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("args,needle", [
    (["--space", "darts", "--nb201-table", "x.csv"], "--nb201-table needs --space nb201"),
    (["--expert-clip", "0"], "argument --expert-clip: must be a finite number > 0"),
    (["--epochs", "0"], "argument --epochs: must be an integer >= 1"),
])
def test_unsupported_combinations_exit_2_with_one_line(tmp_path, capsys, args, needle):
    with pytest.raises(SystemExit) as exc:
        xnas.main([*args, "--dataset", "synthetic", "--out-dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_cli_space_error_is_one_line_and_writes_nothing(tmp_path, tiny_npz):
    """darts with 2 cells has no normal cell: refused by the parser (data.check_search_args), usage + one line."""
    proc = subprocess.run([sys.executable, str(ROOT / "algos" / "xnas.py"), "--space", "darts", "--layers", "2",
                           "--dataset", tiny_npz, "--C", "4", "--out-dir", "out"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("xnas.py: error: --layers 2: the DARTS space needs >= 3 cells")
    assert not (tmp_path / "out").exists()
