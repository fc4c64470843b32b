"""benchmarks/darts_space.py (search -> select -> retrain) and the discretisation check in spaces.py."""
import csv
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import spaces

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("darts_space", ROOT / "benchmarks" / "darts_space.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["darts_space"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ds = _load()


# ------------------------------------------------------------------------------- discretisation check
def _node_sets(pairs):
    return [set(pairs[i:i + 2]) for i in range(0, len(pairs), 2)]


def test_one_hot_weights_select_exactly_the_genotype_edges():
    space = spaces.get_space("darts")
    w = spaces.one_hot_weights(space, spaces.PUBLISHED["DARTS_V2"])
    for ct in ("normal", "reduce"):
        assert w[ct].shape == (14, 8) and w[ct].sum() == 8 and set(w[ct].unique().tolist()) == {0.0, 1.0}
        assert (w[ct].sum(1) <= 1).all()  # one op per kept edge, unselected edges off
        derived = space.derive(w)  # the standard rule recovers the same cell from its one-hot weights
        assert _node_sets(getattr(derived, ct)) == _node_sets(getattr(spaces.PUBLISHED["DARTS_V2"], ct))


def test_one_hot_weights_nb201_none_edges_are_off():
    space = spaces.get_space("nb201")
    g = spaces.NB201Genotype.from_str("|none~0|+|skip_connect~0|nor_conv_3x3~1|+|none~0|none~1|avg_pool_3x3~2|")
    w = spaces.one_hot_weights(space, g)["normal"]
    assert w.sum(1).tolist() == [0, 1, 1, 0, 0, 1]


def test_one_hot_weights_rejects_a_genotype_of_another_space():
    with pytest.raises(spaces.SpaceError):
        spaces.one_hot_weights(spaces.get_space("darts"), spaces.PUBLISHED["NASP"])  # conv_3x3 is not a DARTS op


def _logits(model, x, w):
    model.eval()
    with torch.no_grad():
        return model(x, w)


def test_a_one_hot_supernet_has_no_discretisation_gap():
    torch.manual_seed(0)
    space = spaces.get_space("darts")
    model = space.supernet(C=4, layers=3, num_classes=10)
    x = torch.randn(4, 3, 8, 8)
    g = ds.random_darts_cell(random.Random(1))
    one_hot = spaces.one_hot_weights(space, g)
    # "continuous" weights that happen to be one-hot, taken through the dense path (weights with gradient)
    dense = {k: v.clone().requires_grad_(True) for k, v in one_hot.items()}
    model.eval()
    with torch.no_grad():
        cont = model(x, dense)
    seen = []
    gap = spaces.discretisation_check(space, space.derive(one_hot), lambda w: (0.0, seen.append(w) or 1.0), "cpu")
    assert set(gap) == {"supernet_test_acc_discrete", "supernet_test_loss_discrete"}
    torch.testing.assert_close(_logits(model, x, seen[0]), cont)
    uniform = {k: torch.full_like(v, 1 / v.shape[1]) for k, v in one_hot.items()}
    assert not torch.allclose(_logits(model, x, uniform), cont)  # a non-one-hot supernet does differ


def test_pcdarts_edge_weights_from_one_hot_turn_unselected_edges_off():
    import functools

    import gaea_pcdarts
    torch.manual_seed(0)
    space = spaces.get_space("darts")
    edge = functools.partial(gaea_pcdarts.PartialChannelEdge, k=2)
    model = space.supernet(C=4, layers=3, num_classes=10, edge=edge)
    g = ds.random_darts_cell(random.Random(2))
    w = spaces.one_hot_weights(space, g)
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        off = model(x, w, {k: v.sum(-1) for k, v in w.items()})
        # unselected edges with any op weights at all must not matter once their edge weight is 0
        noisy = {k: v + (v.sum(-1, keepdim=True) == 0) * torch.rand_like(v) for k, v in w.items()}
        torch.testing.assert_close(model(x, noisy, {k: v.sum(-1) for k, v in w.items()}), off)


def test_no_one_hot_form_for_nb1shot1_gives_no_keys():
    space = spaces.get_space("nb1shot1-1")
    assert spaces.discretisation_check(space, None, lambda w: pytest.fail("must not evaluate"), "cpu") == {}


# ------------------------------------------------------------------------------------ reference cells
def test_random_reference_cells_are_valid_seeded_and_distinct():
    a = ds.reference_cells(["random:3"], seed=0)
    assert [c[0] for c in a] == ["random_0", "random_1", "random_2"]
    assert a == ds.reference_cells(["random:3"], seed=0)
    assert a != ds.reference_cells(["random:3"], seed=1)
    assert len({json.dumps(c[2], sort_keys=True) for c in a}) == 3
    for _, kind, js in a:
        g = spaces.genotype_from_json(js)  # validates inputs and ops
        assert kind == "random"
        for ct in ("normal", "reduce"):
            pairs = getattr(g, ct)
            assert all(op in spaces.DARTS_OPS and op != "none" for op, _ in pairs)
            assert all(pairs[i][1] != pairs[i + 1][1] for i in range(0, 8, 2))  # two distinct inputs per node
        net = spaces.DartsEvalNetwork(g, 4, 3, 10, auxiliary=False)
        net.eval()
        assert net(torch.randn(1, 3, 8, 8))[0].shape == (1, 10)


def test_references_accept_published_and_reject_unknown_names():
    refs = ds.reference_cells(["DARTS_V2", "PC_DARTS"], seed=0)
    assert [(r[0], r[1]) for r in refs] == [("DARTS_V2", "DARTS_V2"), ("PC_DARTS", "PC_DARTS")]
    for bad in (["NOPE"], ["random:0"], ["NASP"]):
        with pytest.raises(ValueError):
            ds.reference_cells(bad, seed=0)


def test_bad_flags_exit_with_one_line(capsys):
    for argv in (["--references", "NOPE"], ["--algo", "nope"], ["--mini", "--quick"], ["--space", "nb201"]):
        with pytest.raises(SystemExit) as err:
            ds.parse_args(argv)
        assert err.value.code == 2


# ------------------------------------------------------------------------------ stages and bookkeeping
def test_select_split_holds_out_training_images_only(tmp_path):
    import data
    arrays = data.make_synthetic(40, 8, image_size=8)
    src = tmp_path / "toy.npz"
    np.savez(src, **arrays)
    path = ds.make_select_split(str(src), ".", 30, 10, tmp_path)
    with np.load(path) as d:
        assert np.array_equal(d["x_train"], arrays["x_train"][:20])
        assert np.array_equal(d["x_test"], arrays["x_train"][20:30])  # validation = held-out TRAINING images
        assert np.array_equal(d["y_test"], arrays["y_train"][20:30])
    with pytest.raises(ds.PipelineError):
        ds.make_select_split(str(src), ".", 30, 30, tmp_path)


def _step(tmp_path, name, stage="select", seed=0):
    return ds.Step(stage, "cell", seed, tmp_path / stage / name, ["python", "x.py"], "summary.json",
                   ["--resume", "RUN"], {"search_seed": seed, "genotype": str(tmp_path / name / "genotype.json")})


def test_winner_is_picked_by_validation_accuracy_not_test(tmp_path):
    steps = []
    for seed, valid, search_test in ((0, 0.40, 0.90), (1, 0.55, 0.10), (2, 0.55, 0.20)):
        s = _step(tmp_path, f"sel{seed}", seed=seed)
        s.run_dir.mkdir(parents=True)
        # train_eval's test_acc of a stage-2 run IS the validation accuracy (the split's held-out part)
        (s.run_dir / "summary.json").write_text(json.dumps({"test_acc": valid, "params": 1}))
        (tmp_path / f"sel{seed}").mkdir()
        (tmp_path / f"sel{seed}" / "genotype.json").write_text(json.dumps({"supernet_test_acc": search_test}))
        steps.append(s)
    assert ds.pick_winner(steps) is steps[1]  # best validation; the tie goes to the lower search seed


def test_step_status_skip_resume_and_stale(tmp_path, monkeypatch):
    class Args:
        out_dir, threads = tmp_path, 1
    s = _step(tmp_path, "run")
    assert s.status() == "new" and s.command() == s.cmd
    s.run_dir.mkdir(parents=True)
    assert s.status() == "stale"
    (s.run_dir / "checkpoint.pt").write_bytes(b"")
    assert s.status() == "resume" and s.command() == s.cmd + ["--resume", "RUN"]
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        (s.run_dir / "summary.json").write_text("{}")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(ds.subprocess, "run", fake_run)
    ds.run_step(s, Args)
    assert calls == [s.cmd + ["--resume", "RUN"]] and s.status() == "done"
    ds.run_step(s, Args)  # finished: not run again
    assert len(calls) == 1
    # killed before its first checkpoint: moved aside, started afresh
    t = _step(tmp_path, "other")
    t.run_dir.mkdir(parents=True)
    (t.run_dir / "args.json").write_text("{}")
    monkeypatch.setattr(ds.subprocess, "run", lambda cmd, **kw: (t.run_dir.mkdir(), (t.run_dir / "summary.json")
                                                                .write_text("{}"), subprocess.CompletedProcess(cmd, 0))[-1])
    ds.run_step(t, Args)
    assert (t.run_dir.parent / "other.interrupted1" / "args.json").is_file() and t.status() == "done"
    u = _step(tmp_path, "failing")
    monkeypatch.setattr(ds.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(ds.PipelineError):
        ds.run_step(u, Args)


def test_table_aggregates_best_mean_std_and_groups_random_cells():
    rows = [dict(cell="gaea_pcdarts", stage="1-search", seed=s, params="", valid_acc="", test_acc="",
                 supernet_acc=a, supernet_acc_discrete=b, time_s=t, run_dir="")
            for s, a, b, t in ((0, 0.5, 0.3, 3600.0), (1, 0.7, 0.5, 7200.0))]
    rows += [dict(cell=c, stage="3-train", seed=s, params=p, valid_acc="", test_acc=acc, supernet_acc="",
                  supernet_acc_discrete="", time_s=1.0, run_dir="")
             for c, s, p, acc in (("gaea_pcdarts", 0, 2e6, 0.70), ("gaea_pcdarts", 1, 2e6, 0.80),
                                  ("random_0", 0, 1e6, 0.60), ("random_1", 0, 3e6, 0.50), ("DARTS_V2", 0, 1e6, 0.75))]
    rows.append(dict(cell="gaea_pcdarts", stage="2-select", seed=0, params=2e6, valid_acc=0.99, test_acc="",
                     supernet_acc="", supernet_acc_discrete="", time_s=1.0, run_dir=""))
    t = {r["cell"]: r for r in ds.table_rows(rows)}
    assert t["gaea_pcdarts"]["best"] == pytest.approx(20.0) and t["gaea_pcdarts"]["mean_std"] == "25.00 ± 7.07"
    assert t["gaea_pcdarts"]["n"] == 2 and t["gaea_pcdarts"]["search_h"] == pytest.approx(1.5)
    assert t["random"]["cells"] == 2 and t["random"]["params"] == pytest.approx(2.0) and t["random"]["best"] == 40.0
    assert t["DARTS_V2"]["search_h"] is None
    md = ds.render_table(rows, "PROTO")
    assert "| gaea_pcdarts | 20.00 | 25.00 ± 7.07 | 2 | 2.000 | 1.500 | 2.39 | 2.50 ± 0.06 |" in md
    assert "| random (2 cells) | 40.00 | 45.00 ± 7.07 |" in md
    assert "| gaea_pcdarts | 2 | 60.00 ± 14.14 | 40.00 ± 14.14 | 75.07 | 33.23 |" in md


def test_quick_pipeline_runs_then_skips_everything(tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["--quick", "--search-seeds", "0", "1", "--train-seeds", "0", "--references", "random:1",
            "--threads", "1", "--device", "cpu", "--out-dir", str(out)]
    rows = ds.main(argv)
    stages = sorted(r["stage"] for r in rows)
    assert stages == ["1-search"] * 2 + ["2-select"] * 2 + ["3-train"] * 2
    for r in rows:
        if r["stage"] == "1-search":
            assert 0 <= float(r["supernet_acc_discrete"]) <= 1
    sel = {int(r["seed"]): float(r["valid_acc"]) for r in rows if r["stage"] == "2-select"}
    plan = json.loads(next((out / "plans").glob("*.json")).read_text())
    assert plan["winner"].endswith(f"_s{max(sel, key=lambda k: (sel[k], -k))}")
    raw = list(csv.DictReader(open(out / "raw.csv")))
    assert len(raw) == 6 and (out / "table.md").is_file() and (out / "cells" / "random_0.dot").is_file()
    assert "random (1 cells)" in (out / "table.md").read_text()
    monkeypatch.setattr(ds.shutil, "which", lambda name: None)
    monkeypatch.setattr(ds.subprocess, "run", lambda *a, **k: pytest.fail(f"finished step run again: {a}"))
    assert ds.main(argv) == rows  # a re-run skips every finished step and reports the same


def test_print_commands_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ds.subprocess, "run", lambda *a, **k: pytest.fail("--print-commands must not run steps"))
    out = tmp_path / "out"
    ds.main(["--quick", "--references", "DARTS_V2", "random:1", "--arch-update", "softmax-adam", "--out-dir", str(out),
             "--print-commands"])
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 2 + 2 + 2 + 4  # searches, selections, winner x 2 seeds, 2 references x 2 seeds
    assert all("--arch-update softmax-adam" in line for line in lines if "algos/gaea_pcdarts.py" in line)
    assert sum("WINNER_GENOTYPE_JSON" in line for line in lines) == 2
    assert not (out / "search").exists() and not (out / "train").exists()
