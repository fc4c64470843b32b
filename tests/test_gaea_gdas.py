"""Tests for algos/gaea_gdas.py: Gumbel straight-through gradients, GDAS' zero-valued terms, the EG step, one op per
edge, smoke runs (nb201 / darts x eg / softmax-adam), determinism, warm-up, and clear errors."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gaea_gdas as G
import spaces

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--batch-size", "16", "--C", "4", "--epochs", "1", "--warmup-epochs", "0", "--device", "cpu"]




def run(tmp_path, dataset, *extra, name="r"):
    return G.main([*TINY, "--dataset", dataset, "--out-dir", str(tmp_path), "--run-name", name, *extra])


# ----------------------------------------------------------------------------------------- arguments and errors
def test_defaults_are_the_issue_settings():
    a = G.parse_args([])
    assert (a.space, a.C, a.layers, a.batch_size, a.epochs, a.lr, a.lr_min) == ("nb201", 16, None, 64, 150, 0.025, 0.001)
    assert (a.arch_update, a.arch_lr, a.kl_coef, a.arch_wd, a.arch_betas) == ("eg", 0.1, 0.01, None, None)
    assert (a.tau_max, a.tau_min, a.warmup_epochs) == (10.0, 0.1, 50)  # the release's 50 warm-up epochs
    b = G.parse_args(["--arch-update", "softmax-adam"])
    assert (b.arch_lr, tuple(b.arch_betas), b.arch_wd, b.kl_coef, b.warmup_epochs) == (3e-4, (0.5, 0.999), 1e-3, None, 0)
    c = G.parse_args(["--space", "nb1shot1-2"])  # 1Shot1's GDAS setting
    assert (c.epochs, c.batch_size, c.tau_max, c.tau_min, c.warmup_epochs) == (100, 96, 10.0, 1.0, 0)


@pytest.mark.parametrize("bad", [
    ["--arch-update", "softmax-adam", "--kl-coef", "0.1"],
    ["--arch-wd", "0.001"],
    ["--arch-betas", "0.9", "0.99"],
    ["--tau-min", "2", "--tau-max", "1"],
    ["--warmup-epochs", "1"],  # == --epochs 1: the architecture would never be updated
    ["--space", "darts", "--nb201-table", "x.csv"],
])
def test_unsupported_combinations_fail_before_writing(tmp_path, capsys, tiny_npz, bad):
    with pytest.raises(SystemExit) as exc:
        run(tmp_path / "out", tiny_npz, *bad)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error:" in err[-1]
    assert not (tmp_path / "out").exists()


def test_cli_bad_dataset_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "algos" / "gaea_gdas.py"), "--dataset", str(tmp_path / "missing.npz"),
                           "--out-dir", str(out), "--epochs", "1", "--warmup-epochs", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert not out.exists()


# ------------------------------------------------------------------------------------- Gumbel straight-through
def test_gumbel_noise_is_standard_gumbel_and_seeded():
    g = G.gumbel_noise((200_000,), torch.Generator().manual_seed(0), "cpu")
    assert abs(g.mean().item() - 0.5772) < 0.01 and abs(g.var().item() - math.pi ** 2 / 6) < 0.03
    assert torch.equal(g, G.gumbel_noise((200_000,), torch.Generator().manual_seed(0), "cpu"))


def test_straight_through_is_hard_one_hot_at_gumbel_argmax():
    torch.manual_seed(0)
    logp, noise = torch.randn(6, 5).log_softmax(-1), torch.randn(6, 5)
    hardwts, index = G.straight_through(logp, noise, tau=0.5)
    assert torch.equal(index, (logp + noise).argmax(-1))
    assert torch.allclose(hardwts, F.one_hot(index, 5).float(), atol=1e-6)


def _st_grad_closed_form(logp, noise, c, tau):
    """d/d(log p) of sum(c * softmax((log p + g)/tau)): p * (c - <p, c>) / tau."""
    p = F.softmax((logp + noise) / tau, -1)
    return p * (c - (p * c).sum(-1, keepdim=True)) / tau


@pytest.mark.parametrize("update", ["eg", "softmax-adam"])
def test_straight_through_gradient_is_the_softmax_gradient(update):
    torch.manual_seed(1)
    raw = torch.rand(6, 5) + 0.1 if update == "eg" else torch.randn(6, 5)
    param = (raw / raw.sum(-1, keepdim=True) if update == "eg" else raw).requires_grad_()
    noise, c, tau = G.gumbel_noise((6, 5), torch.Generator().manual_seed(3), "cpu"), torch.randn(6, 5), 0.7
    logp = G.log_probs({"normal": param}, update)["normal"]
    hardwts, _ = G.straight_through(logp, noise, tau)
    (grad,) = torch.autograd.grad((c * hardwts).sum(), param)
    v = _st_grad_closed_form(logp.detach(), noise, c, tau)
    if update == "eg":  # log p = log(alpha): chain rule divides by alpha
        expected = v / param.detach()
    else:  # log p = log_softmax(theta)
        expected = v - F.softmax(param.detach(), -1) * v.sum(-1, keepdim=True)
    assert torch.allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize("quirk", [True, False])
def test_edge_gradient_of_sampled_and_non_sampled_weights(quirk):
    torch.manual_seed(2)
    edge = (G.GDASEdge if quirk else spaces.MixedEdge)(3, 1, spaces.NB201_OPS, False).eval()
    x, r, k = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5), 3
    w = F.one_hot(torch.tensor(k), 5).float().requires_grad_()
    out = edge(x, (w, k))
    assert torch.equal(out, edge.ops[k](x))  # value: exactly the sampled op
    (grad,) = torch.autograd.grad((out * r).sum(), w)
    assert torch.allclose(grad[k], (r * edge.ops[k](x)).sum(), atol=1e-5)
    others = torch.tensor([j for j in range(5) if j != k])
    expected = r.sum() if quirk else torch.tensor(0.0)  # GDAS' forward_gdas: each non-sampled term gets sum(upstream)
    assert torch.allclose(grad[others], expected.expand(4), atol=1e-5)


# ---------------------------------------------------------------------------------------- exponentiated gradient
def test_eg_step_closed_form_divide_then_clamp():
    a = torch.nn.Parameter(torch.tensor([[0.2, 0.3, 0.5], [0.5, 0.25, 0.25]]))
    untouched = torch.nn.Parameter(torch.tensor([[0.5, 0.5]]))
    a.grad = torch.tensor([[1.0, -2.0, 0.5], [0.0, 300.0, 300.0]])
    G.ExponentiatedGradient([a, untouched], lr=0.1).step()
    row = torch.tensor([0.2, 0.3, 0.5]) * torch.exp(-0.1 * torch.tensor([1.0, -2.0, 0.5]))
    assert torch.allclose(a[0], row / row.sum(), atol=1e-7)
    # divide first (-> [1, ~0, ~0]), then clamp: [1, 1e-5, 1e-5]; clamping first would give ~[0.99996, 2e-5, 2e-5]
    assert torch.allclose(a[1], torch.tensor([1.0, 1e-5, 1e-5]), rtol=0, atol=1e-7)
    assert torch.equal(untouched.detach(), torch.tensor([[0.5, 0.5]]))


def test_kl_to_uniform_value_and_gradient():
    a = torch.tensor([[0.2, 0.3, 0.5], [1 / 3, 1 / 3, 1 / 3]], requires_grad=True)
    kl = G.kl_to_uniform({"normal": a})
    assert torch.allclose(kl, (torch.tensor([0.2, 0.3, 0.5]) * (3 * torch.tensor([0.2, 0.3, 0.5])).log()).sum(), atol=1e-6)
    (grad,) = torch.autograd.grad(kl, a)
    assert torch.allclose(grad, (3 * a.detach()).log() + 1, atol=1e-6)


def test_arch_step_is_eg_on_the_straight_through_gradient():
    torch.manual_seed(0)
    space = spaces.get_space("nb201")
    model, x, y = space.supernet(4, 1, 10, edge=G.GDASEdge), torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    arch = {"normal": torch.nn.Parameter(torch.softmax(torch.randn(6, 5), -1))}
    before, state = arch["normal"].detach().clone(), torch.Generator().manual_seed(5).get_state()
    # by hand: the same sample, CE + 0.01 KL, alpha * exp(-0.1 g) / row sum, clamp
    ref = {"normal": before.clone().requires_grad_()}
    loss = F.cross_entropy(model(x, G.sample_arch(ref, "eg", 2.0, torch.Generator().set_state(state))), y)
    (g,) = torch.autograd.grad(loss + 0.01 * G.kl_to_uniform(ref), ref["normal"])
    expected = before * torch.exp(-0.1 * g)
    expected = (expected / expected.sum(-1, keepdim=True)).clamp(min=1e-5)
    arch_loss, _ = G.arch_step(model, arch, "eg", G.ExponentiatedGradient(arch.values(), 0.1), x, y, 2.0,
                               torch.Generator().set_state(state), kl_coef=0.01)
    assert arch_loss == pytest.approx(loss.item(), rel=1e-5)
    assert torch.allclose(arch["normal"].detach(), expected, atol=1e-6) and not torch.allclose(expected, before)
    assert all(p.grad is None for p in model.parameters())  # the architecture step computes no weight gradients


def test_tau_schedule_is_linear_from_max_to_min():
    taus = [G.tau_at(e, 5, 0, 10.0, 0.1) for e in range(5)]
    assert taus == pytest.approx([10.0, 7.525, 5.05, 2.575, 0.1])
    assert [G.tau_at(e, 6, 2, 10.0, 0.1) for e in range(6)] == pytest.approx([10, 10, 10, 6.7, 3.4, 0.1])


# ------------------------------------------------------------------------------------------ one op per edge
@pytest.mark.parametrize("space_name,layers", [("nb201", 1), ("darts", 3)])
def test_sampled_edge_runs_only_its_op(space_name, layers):
    torch.manual_seed(0)
    space = spaces.get_space(space_name)
    model = space.supernet(4, layers, 10, edge=G.GDASEdge)
    cells = [m for m in model.modules() if isinstance(m, (spaces.NB201SearchCell, spaces.DartsSearchCell))]
    calls, edges = [], [e for c in cells for e in c.edges]
    for edge in edges:
        for k, op in enumerate(edge.ops):
            op.register_forward_hook(lambda mod, inp, out, e=id(edge), k=k: calls.append((e, k)))
    arch, gen = G.init_arch(space, "eg", "cpu"), torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    specs = G.sample_arch(arch, "eg", 1.0, gen)
    model(x, specs)
    group = lambda c: "reduce" if getattr(c, "reduction", False) else "normal"
    expected = [(id(e), specs[group(c)][i][1]) for c in cells for i, e in enumerate(c.edges)]
    assert sorted(calls) == sorted(expected) and len(calls) == len(edges)
    calls.clear()
    child = G.sample_child(arch, "eg", gen)
    G.weight_step(model, child, torch.optim.SGD(model.parameters(), 0.01), x, y, 5.0)
    assert len(calls) == len(edges) and len({e for e, _ in calls}) == len(edges)


# ------------------------------------------------------------------------------------------------ full runs
@pytest.mark.parametrize("space_name,layers", [("nb201", "1"), ("darts", "3")])
@pytest.mark.parametrize("update", ["eg", "softmax-adam"])
def test_smoke_run_writes_results(tmp_path, tiny_npz, space_name, layers, update):
    res = run(tmp_path, tiny_npz, "--space", space_name, "--layers", layers, "--arch-update", update)
    out = Path(res["run_dir"])
    assert {p.name for p in out.iterdir()} >= {"args.json", "metrics.jsonl", "genotype.json", "cell.dot"}
    saved = json.loads((out / "genotype.json").read_text())
    assert saved["algorithm"] == ("gaea_gdas" if update == "eg" else "gdas") and saved["search_space"] == space_name
    assert str(spaces.parse_genotype(str(out / "genotype.json"))) == res["genotype_str"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    groups = ("normal", "reduce") if space_name == "darts" else ("normal",)
    assert all(f"entropy_{g}" in metrics[-1] for g in groups) and metrics[-1]["tau"] == pytest.approx(10.0)
    for g in groups:
        a = torch.tensor(res["alphas"][g])
        if update == "eg":
            assert torch.allclose(a.sum(-1), torch.ones(len(a)), atol=1e-4) and (a >= 1e-5).all()
            assert not torch.allclose(a, torch.full_like(a, 1 / a.shape[-1]))  # the EG step moved it
        assert math.isfinite(metrics[-1]["arch_loss"])


def test_gumbel_top_k_is_a_k_hot_straight_through_row():
    logp = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]])).requires_grad_(True)
    noise = torch.tensor([[0.5, 0.0, -1.0, 0.2]])
    hard, _ = G.straight_through(logp, noise, tau=2.0, k=2)
    z = (logp + noise).detach()
    assert torch.equal(hard.detach(), G.top_k_mask(z, 2)) and hard.detach().tolist() == [[0.0, 1.0, 0.0, 1.0]]  # log p + g = -1.80, -1.61, -2.20, -0.72
    w = torch.randn(1, 4)
    (hard * w).sum().backward()
    probe = logp.detach().clone().requires_grad_(True)
    (F.softmax((probe + noise) / 2.0, dim=-1) * w).sum().backward()
    assert torch.allclose(logp.grad, probe.grad)


@pytest.mark.parametrize("update", ["eg", "softmax-adam"])
@pytest.mark.parametrize("space_name", ["nb1shot1-1", "nb1shot1-2", "nb1shot1-3"])
def test_nb1shot1_smoke_valid_nb101_spec_and_deterministic(tmp_path, tiny_npz, space_name, update):
    space = spaces.get_space(space_name)
    arch = G.init_arch(space, update, "cpu")
    child = G.sample_child(arch, update, torch.Generator().manual_seed(0), space.parents())
    assert len(child["ops"]) == space.n and {g: int(child[g].sum()) for g in space.parents()} == space.parents()
    extra = ["--space", space_name, "--layers", "1", "--epochs", "2", "--arch-update", update]
    r1, r2 = (run(tmp_path, tiny_npz, *extra, name=n) for n in ("a", "b"))
    spec = spaces.parse_genotype(str(Path(r1["run_dir"]) / "genotype.json"))
    assert spec.space == "nb101" and str(spec) == r1["genotype_str"] and sum(map(sum, spec.pruned().matrix)) <= 9
    assert r1["alphas"] == r2["alphas"] and r1["genotype_str"] == r2["genotype_str"]
    if update == "eg":
        assert r1["alphas"]["out"] != [[0.2] * 5 if space_name != "nb1shot1-3" else [1 / 6] * 6]  # EG moved it


def test_same_seed_same_search_other_seed_differs(tmp_path, tiny_npz):
    a, b = run(tmp_path, tiny_npz, "--layers", "1", name="a"), run(tmp_path, tiny_npz, "--layers", "1", name="b")
    c = run(tmp_path, tiny_npz, "--layers", "1", "--seed", "3", name="c")
    assert a["alphas"] == b["alphas"] and a["genotype_str"] == b["genotype_str"]
    assert a["alphas"] != c["alphas"]


def test_warmup_trains_weights_only(tmp_path, tiny_npz):
    res = run(tmp_path, tiny_npz, "--layers", "1", "--epochs", "2", "--warmup-epochs", "1", "--selected-only")
    metrics = [json.loads(line) for line in (Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["arch_updated"] is False and "arch_loss" not in metrics[0]
    assert metrics[0]["entropy_normal"] == pytest.approx(math.log(5), abs=1e-6)  # still uniform
    assert metrics[1]["arch_updated"] is True and math.isfinite(metrics[1]["arch_loss"])
    assert metrics[1]["tau"] == pytest.approx(10.0)  # the only search epoch starts the schedule at tau_max
    a = torch.tensor(res["alphas"]["normal"])
    assert not torch.allclose(a, torch.full_like(a, 0.2))
