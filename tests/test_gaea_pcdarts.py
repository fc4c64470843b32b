"""algos/gaea_pcdarts.py: EG and edge-normalisation updates in closed form, partial channels + channel shuffle,
the combined-weight genotype, smoke runs on every space for both --arch-update values, determinism, bad input,
and the logic of benchmarks/memory.py at a tiny size."""
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gaea_pcdarts as gp
import spaces

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import memory  # noqa: E402






def _run(tmp_path, dataset, *extra):
    return gp.main(["--dataset", dataset, "--train-subset", "64", "--batch-size", "32", "--epochs", "2",
                    "--warmup-epochs", "1", "--out-dir", str(tmp_path), *extra])


def _size_args(space):
    return ["--C", "8", "--layers", "3"] if space == "darts" else ["--C", "4", "--layers", "1"]


# ------------------------------------------------------------------------------------- update rules
def test_eg_step_on_op_weights_closed_form():
    a = torch.nn.Parameter(torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.9, 0.1 - 3e-5, 1e-5, 2e-5]]))
    with torch.no_grad():
        a[0, 3] = 1e-5
    g = torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 0.0, 30.0, 30.0]])
    a.grad = g.clone()
    start = a.detach().clone()
    gp.ExponentiatedGradient([{"params": [a], "lr": 0.1}]).step()
    row0 = start[0] * torch.exp(-0.1 * g[0])  # no entry falls below 1e-5: plain EG, then the row sum
    assert torch.allclose(a[0], row0 / row0.sum(), rtol=0, atol=1e-7)
    # second row: 1e-5 and 2e-5 times exp(-3) fall below 1e-5 and are clamped back to 1e-5 *before* the row is
    # renormalised (GAEA's order; normalising first would leave the row summing to more than 1)
    row1 = torch.tensor([0.9, 0.1 - 3e-5, 1e-5, 1e-5])
    assert torch.allclose(a[1], row1 / row1.sum(), rtol=0, atol=1e-7)
    assert torch.allclose(a.sum(-1), torch.ones(2), rtol=0, atol=1e-6)


def test_eg_step_on_edge_weights_renormalises_per_node_without_clamp():
    space = spaces.get_space("darts")
    layout = gp.edge_layout(space)
    alphas, edges = gp.init_arch(space, "eg", "cpu")
    e = edges["normal"]
    for (s, t), k in zip(space.node_slices, (2, 3, 4, 5)):  # GAEA init: 1/k on the k inputs of each node
        assert torch.allclose(e[s:t], torch.full((k,), 1.0 / k))
    torch.manual_seed(0)
    g = torch.randn(14)
    g[0] = 200.0  # drives edge 0 far below the op clamp 1e-5: edges are not clamped
    e.grad = g.clone()
    before = e.detach().clone()
    gp.ExponentiatedGradient([{"params": [e], "lr": 0.1, "slices": layout["normal"]}]).step()
    for s, t in space.node_slices:
        raw = before[s:t] * torch.exp(-0.1 * g[s:t])
        assert torch.allclose(e[s:t], raw / raw.sum(), rtol=1e-5, atol=0)
        assert abs(e[s:t].sum().item() - 1) < 1e-6
    assert 0 < e[0].item() < 1e-8


def test_softmax_adam_edge_normalisation_is_a_softmax_per_node():
    space = spaces.get_space("darts")
    layout = gp.edge_layout(space)
    torch.manual_seed(1)
    alphas, edges = gp.init_arch(space, "softmax-adam", "cpu")
    with torch.no_grad():
        edges["reduce"].copy_(torch.randn(14))
    op_w, edge_w = gp.mixture_weights(alphas, edges, layout, "softmax-adam")
    assert torch.allclose(op_w["normal"], torch.softmax(alphas["normal"], -1))
    for s, t in space.node_slices:
        assert torch.allclose(edge_w["reduce"][s:t], torch.softmax(edges["reduce"][s:t], 0))
    assert edges["normal"].abs().max() < 1e-2  # PC-DARTS init: 1e-3 * N(0, 1)


def test_init_and_layout_per_space():
    _, edges = gp.init_arch(spaces.get_space("nb201"), "eg", "cpu")
    assert torch.allclose(edges["normal"], torch.tensor([1.0, 1 / 2, 1 / 2, 1 / 3, 1 / 3, 1 / 3]))
    space = spaces.get_space("nb1shot1-2")  # input weights `in{b}` and `out` play the edge weights' part
    alphas, edges = gp.init_arch(space, "eg", "cpu")
    assert set(alphas) == {"ops"} and set(edges) == {"out", "in2", "in3", "in4"}
    assert torch.allclose(alphas["ops"], torch.full((4, 3), 1 / 3))
    assert torch.allclose(edges["in3"], torch.full((1, 3), 1 / 3)) and torch.allclose(edges["out"], torch.full((1, 5), 0.2))


# ------------------------------------------------------------------------------- partial channels
def test_channel_shuffle_index_map():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    y = gp.channel_shuffle(x, 4).flatten().tolist()
    # channel g*c + j (4 groups of c = 2) moves to j*4 + g
    assert y == [0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]
    assert torch.equal(gp.channel_shuffle(gp.channel_shuffle(x, 4), 2), x)  # shuffling back with C/K groups


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channel_edge_sends_exactly_c_over_k_channels_through_the_ops(stride):
    torch.manual_seed(0)
    C, K = 8, 4
    edge = gp.PartialChannelEdge(C, stride, spaces.DARTS_OPS, True, k=K)
    seen = []
    edge.mixed.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].shape))
    x = torch.randn(2, C, 8, 8)
    w = torch.softmax(torch.randn(8), 0)
    out = edge(x, w)
    assert out.shape == (2, C, 8 // stride, 8 // stride)
    assert seen == [torch.Size([2, C // K, 8, 8])]
    assert edge.mixed.ops[4][0][1].in_channels == C // K  # sep_conv_3x3 built for C/K channels
    mix = edge.mixed(x[:, : C // K], w)
    bypass = x[:, C // K:] if stride == 1 else torch.nn.functional.max_pool2d(x[:, C // K:], 2, 2)
    assert torch.allclose(out, gp.channel_shuffle(torch.cat([mix, bypass], 1), K))
    mixed_pos = [j * K for j in range(C // K)]  # where the mixture's channels land after the shuffle
    x2 = x.clone()
    x2[:, C // K:] += 1.0  # changing the bypassed channels leaves the mixture's output untouched
    out2 = edge(x2, w)
    assert torch.allclose(out2[:, mixed_pos], out[:, mixed_pos])
    assert not torch.allclose(out2, out)
    assert edge(x, None) is None


def test_supernets_accept_partial_channel_edges_and_edge_weights():
    edge = functools.partial(gp.PartialChannelEdge, k=2)
    space = spaces.get_space("nb201")
    model = space.supernet(4, 1, 10, edge=edge)
    alphas, edges = gp.init_arch(space, "eg", "cpu")
    assert len([m for m in model.modules() if isinstance(m, gp.PartialChannelEdge)]) == 3 * 6  # 3 cells x 6 edges
    out = gp.forward(model, space, torch.randn(2, 3, 8, 8), alphas, edges)
    assert out.shape == (2, 10)
    with pytest.raises(spaces.SpaceError):
        gp.PartialChannelEdge(6, 1, spaces.NB201_OPS, False, k=4)


# -------------------------------------------------------------------------------------- genotype
def test_genotype_ranks_edges_by_edge_weight_times_op_weight():
    space = spaces.get_space("darts")
    layout = gp.edge_layout(space)
    alphas, edges = gp.init_arch(space, "eg", "cpu")
    sep = spaces.DARTS_OPS.index("sep_conv_3x3")
    with torch.no_grad():
        for g in ("normal", "reduce"):
            alphas[g][2] = torch.full((8,), 0.1 / 7)  # node 1: edge 2 (input 0) has the strongest op ...
            alphas[g][2, sep] = 0.9
            for e in (3, 4):
                alphas[g][e] = torch.full((8,), 0.5 / 7)
                alphas[g][e, sep] = 0.5
            edges[g][2:5] = torch.tensor([0.1, 0.45, 0.45])  # ... but the weakest edge weight
    op_only = space.derive({g: a.detach() for g, a in alphas.items()})
    assert sorted(j for _, j in op_only.normal[2:4]) == [0, 1]  # what ignoring the edge weights would give
    g = gp.derive_genotype(space, alphas, edges, layout, "eg")
    assert sorted(j for _, j in g.normal[2:4]) == [1, 2] and all(op == "sep_conv_3x3" for op, _ in g.normal[2:4])
    nb = spaces.get_space("nb201")
    a, e = gp.init_arch(nb, "eg", "cpu")
    with torch.no_grad():
        a["normal"][5] = torch.tensor([0.1, 0.1, 0.1, 0.6, 0.1])
    assert str(gp.derive_genotype(nb, a, e, gp.edge_layout(nb), "eg")).endswith("nor_conv_3x3~2|")


# ------------------------------------------------------------------------------------ smoke runs
@pytest.mark.parametrize("mode", ["eg", "softmax-adam"])
@pytest.mark.parametrize("space", [s for s in spaces.SPACES if s != "enas"])  # enas: asng.py only
def test_smoke_every_space_both_arch_updates(tmp_path, tiny_npz, space, mode):
    res = _run(tmp_path, tiny_npz, "--space", space, "--arch-update", mode, *_size_args(space))
    run = Path(res["run_dir"])
    assert {p.name for p in run.iterdir()} == {"args.json", "metrics.jsonl", "genotype.json", "cell.dot", "checkpoint.pt"}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["arch_steps"] for m in metrics] == [0, 1]  # epoch 1 is warm-up: no architecture step
    assert "arch_loss" not in metrics[0] and "arch_loss" in metrics[1]
    assert any(k.startswith("entropy_edges_") for k in metrics[1])
    assert str(spaces.parse_genotype(str(run / "genotype.json"))) == metrics[-1]["genotype"] == res["genotype_str"]
    assert res["algorithm"] == ("gaea_pcdarts" if mode == "eg" else "pcdarts")
    layout = gp.edge_layout(spaces.get_space(space))
    if mode == "eg":  # simplex weights that moved away from their uniform start
        a = {g: torch.tensor(v) for g, v in res["alphas"].items()}
        assert all(torch.allclose(w.sum(-1), torch.ones(w.shape[0])) for w in a.values())
        assert any(not torch.allclose(w, torch.full_like(w, 1 / w.shape[-1])) for w in a.values())
        for g, v in res["edges"].items():
            assert all(abs(seg.sum().item() - 1) < 1e-5 for seg in gp.segments(torch.tensor(v), layout[g]))
    else:
        assert json.loads((run / "args.json").read_text())["arch_lr"] == (3e-4 if space.startswith("nb1shot1") else 6e-4)


@pytest.mark.parametrize("mode", ["eg", "softmax-adam"])
def test_same_seed_same_result(tmp_path, tiny_npz, mode):
    args = ("--space", "nb201", "--C", "4", "--layers", "1", "--arch-update", mode)
    a, b = _run(tmp_path / "a", tiny_npz, *args, "--seed", "5"), _run(tmp_path / "b", tiny_npz, *args, "--seed", "5")
    assert a["genotype"] == b["genotype"] and a["alphas"] == b["alphas"] and a["edges"] == b["edges"]
    c = _run(tmp_path / "c", tiny_npz, *args, "--seed", "6")
    assert c["alphas"] != a["alphas"]


def test_defaults_follow_the_papers():
    eg, sa = gp.parse_args([]), gp.parse_args(["--arch-update", "softmax-adam"])
    assert (eg.arch_lr, eg.edge_lr, eg.warmup_epochs, eg.batch_size, eg.lr, eg.epochs) == (0.1, 0.1, 10, 256, 0.1, 50)
    assert (sa.arch_lr, sa.arch_wd, sa.arch_betas, sa.warmup_epochs) == (6e-4, 1e-3, (0.5, 0.999), 15)
    e1, s1 = gp.parse_args(["--space", "nb1shot1-1"]), gp.parse_args(["--space", "nb1shot1-1", "--arch-update", "softmax-adam"])
    assert (e1.epochs, e1.batch_size, e1.lr, e1.lr_min, e1.warmup_epochs, e1.arch_lr) == (100, 96, 0.025, 0.001, 10, 0.1)
    assert (s1.epochs, s1.batch_size, s1.warmup_epochs, s1.arch_lr, s1.arch_wd) == (100, 96, 0, 3e-4, 1e-3)
    assert eg.partial_k == 4 and eg.C == 16 and eg.grad_clip == 5.0 and eg.wd == 3e-4 and eg.lr_min == 0.0


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args,needle", [
    (["--arch-update", "eg", "--arch-betas", "0.9", "0.99"], "need --arch-update softmax-adam"),
    (["--arch-update", "softmax-adam", "--edge-lr", "0.1"], "--edge-lr is for --arch-update eg"),
    (["--C", "6"], "must be a multiple of --partial-k"),
    (["--C", "4"], "C/K >= 2 on darts"),
    (["--epochs", "5"], "--warmup-epochs 10 must be in [0, --epochs 5)"),
    (["--space", "nb1shot1-1", "--nb201-table", "x.csv"], "--nb201-table needs --space nb201"),
])
def test_unsupported_combinations_exit_2_before_writing(tmp_path, capsys, args, needle):
    with pytest.raises(SystemExit) as exc:
        gp.main([*args, "--dataset", "synthetic", "--out-dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_cli_bad_dataset_one_line_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "algos" / "gaea_pcdarts.py"), "--dataset", "missing.npz",
                           "--out-dir", "out"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "missing.npz" in proc.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ memory benchmark
def test_memory_benchmark_logic_at_a_tiny_size():
    for algo in memory.ALGOS:  # one training step moves the architecture of both algorithms
        net = memory.build(algo, C=8, layers=3)
        before = [p.detach().clone() for p in net.arch_params]
        net.step(*memory.make_batch(2, image_size=8))
        assert any(not torch.equal(p, q) for p, q in zip(net.arch_params, before))
    saved = {a: memory.saved_bytes(a, batch=2, C=8, layers=3, image_size=8) for a in memory.ALGOS}
    assert 0 < saved["gaea_pcdarts"] < memory.TARGET * saved["darts"]  # partial channels keep far fewer activations
    assert saved["darts_unrolled"] is None  # no single architecture forward to hook
    fake = {"darts": 1000, "gaea_pcdarts": 300, "darts_unrolled": 1500}
    res = memory.compare(4, 8, 3, "cpu", repeats=3, measure_fn=lambda a, *rest: fake[a])
    assert res["median"] == fake and res["ratio"] == pytest.approx(0.3) and res["ratio_unrolled"] == pytest.approx(1.5)
    table = memory.format_table([res], saved)
    assert "0.300" in table and "OK" in table and "gaea_pcdarts" in table and "1.500" in table
    with pytest.raises(ValueError):
        memory.build("enas")


def test_memory_measure_runs_in_a_fresh_process():
    peak = memory.measure("gaea_pcdarts", batch=4, C=8, layers=3, image_size=16)
    assert isinstance(peak, int) and peak > 0
