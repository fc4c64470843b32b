"""algos/darts.py --unrolled (second order): the finite-difference Hessian-vector product and the whole unrolled
architecture gradient against exact double-backward autograd, the virtual step against the optimizer's real step,
runs, determinism and the bad flag combination.

The exact checks run in float64 on tiny supernets whose ReLUs are replaced by Softplus and whose max-pools by
average pools: a finite difference of the alpha-gradient across a ReLU / max-pool kink jumps (the gradient is
discontinuous there), so on the real ops it is exact only in the limit eps -> 0. With smooth ops the only error left
is the O(eps^2) truncation of the central difference at DARTS' eps = 0.01 / ||v||. BatchNorm stays in train mode
(batch statistics, a smooth function of the weights); both sides see identical batches."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import darts
import spaces

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--C", "4", "--batch-size", "16", "--train-subset", "64"]
SPACES = [("darts", 3), ("nb201", 1), ("nb1shot1-1", 1)]
XI, MOMENTUM, WD = 0.1, 0.9, 3e-4


def _smooth(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, nn.Softplus())
        elif isinstance(child, nn.MaxPool2d):
            setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, count_include_pad=False))
        else:
            _smooth(child)


def _setup(space_name, layers):
    """A smooth float64 supernet after one real weight step (so SGD has momentum buffers), random alphas, batches."""
    torch.manual_seed(0)
    space = spaces.get_space(space_name)
    model = space.supernet(4, layers, 10).double()
    _smooth(model)
    alphas = {g: nn.Parameter(torch.randn(*shape, dtype=torch.float64)) for g, shape in space.arch_shapes().items()}
    opt = torch.optim.SGD(model.parameters(), XI, momentum=MOMENTUM, weight_decay=WD)
    gen = torch.Generator().manual_seed(1)
    x, xa = (torch.randn(6, 3, 8, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    y, ya = (torch.randint(0, 10, (6,), generator=gen) for _ in range(2))
    darts.weight_step(model, alphas, opt, x, y, grad_clip=5.0)
    return model, alphas, opt, x, y, xa, ya


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _rel_err(a, b) -> float:
    a, b = _flat(a), _flat(b)
    return float((a - b).norm() / b.norm())


def _grad_alpha(out, alphas):
    return darts._grads_or_zeros(torch.autograd.grad(out, list(alphas.values()), allow_unused=True), list(alphas.values()))


@pytest.mark.parametrize("space_name,layers", SPACES)
def test_finite_difference_hvp_matches_double_backward(space_name, layers):
    model, alphas, _, x, y, _, _ = _setup(space_name, layers)
    names, params = zip(*model.named_parameters())
    gen = torch.Generator().manual_seed(2)
    vector = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in zip(names, params)}
    fd = darts.hessian_vector_product(model, alphas, vector, x, y)
    loss = F.cross_entropy(model(x, darts.mixture_weights(alphas)), y)
    g_w = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    exact = _grad_alpha(sum((g * vector[n]).sum() for n, g in zip(names, g_w) if g is not None), alphas)
    assert _flat(exact).norm() > 0
    assert _rel_err(fd, exact) < 1e-3


@pytest.mark.parametrize("space_name,layers", SPACES)
def test_unrolled_gradient_matches_autograd_through_the_virtual_step(space_name, layers):
    model, alphas, opt, x, y, xa, ya = _setup(space_name, layers)
    w0 = [p.detach().clone() for p in model.parameters()]
    grads, _, _ = darts.unrolled_arch_grads(model, alphas, opt, x, y, xa, ya, XI)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), w0))  # the real weights never move
    # exact: d/d alpha of L_val(w - xi * (grad_w L_train(w, alpha) + wd * w + momentum * buf), alpha)
    names, params = zip(*model.named_parameters())
    loss = F.cross_entropy(model(x, darts.mixture_weights(alphas)), y)
    g_w = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    w_virtual = {n: p - XI * ((0.0 if g is None else g) + WD * p + MOMENTUM * opt.state[p]["momentum_buffer"])
                 for n, p, g in zip(names, params, g_w)}
    val = F.cross_entropy(functional_call(model, w_virtual, (xa, darts.mixture_weights(alphas))), ya)
    exact = _grad_alpha(val, alphas)
    assert _rel_err(grads, exact) < 1e-3
    # the second-order term matters here: the first-order part alone (gradient at w' with w' held fixed) is far off
    w_fixed = {n: t.detach() for n, t in w_virtual.items()}
    direct = _grad_alpha(F.cross_entropy(functional_call(model, w_fixed, (xa, darts.mixture_weights(alphas))), ya), alphas)
    assert _rel_err(direct, exact) > 1e-2


def test_virtual_step_is_the_optimizers_next_step_without_clipping():
    model, alphas, opt, x, y, _, _ = _setup("nb201", 1)
    w_virtual = darts.virtual_step(model, alphas, opt, x, y, XI)
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        weights = darts.mixture_weights(alphas)
    F.cross_entropy(model(x, weights), y).backward()
    opt.step()  # lr = XI: the real step, momentum and weight decay included
    for name, p in model.named_parameters():
        assert torch.allclose(w_virtual[name], p, rtol=0, atol=1e-12), name


def test_unrolled_step_moves_only_alphas_and_differs_from_first_order():
    model, alphas, opt, x, y, xa, ya = _setup("nb201", 1)
    first = {g: a.detach().clone() for g, a in alphas.items()}
    arch_opt = torch.optim.Adam(alphas.values(), 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    grads, _, _ = darts.unrolled_arch_grads(model, alphas, opt, x, y, xa, ya, XI)
    darts.unrolled_arch_step(model, alphas, arch_opt, opt, x, y, xa, ya, XI)
    assert torch.allclose(alphas["normal"].grad, grads[0])
    assert not torch.equal(alphas["normal"], first["normal"])


@pytest.fixture
def run(tmp_path, tiny_npz):
    def _run(out, *extra):
        return darts.main([*TINY, "--dataset", tiny_npz, "--out-dir", str(out), *extra])
    return _run


def test_unrolled_run_is_deterministic_and_differs_from_first_order(run, tmp_path):
    a = run(tmp_path / "a", "--space", "nb201", "--layers", "1", "--unrolled")
    b = run(tmp_path / "b", "--space", "nb201", "--layers", "1", "--unrolled")
    assert a["alphas"] == b["alphas"]
    first = run(tmp_path / "c", "--space", "nb201", "--layers", "1")
    assert first["alphas"] != a["alphas"]
    assert Path(a["run_dir"]).name.startswith("darts2_") and Path(first["run_dir"]).name.startswith("darts_")
    assert json.loads((Path(a["run_dir"]) / "args.json").read_text())["unrolled"] is True


def test_unrolled_smoke_on_nb1shot1(run, tmp_path):  # (darts space: covered by the exact-gradient tests)
    res = run(tmp_path, "--space", "nb1shot1-2", "--layers", "1", "--unrolled")
    metrics = json.loads((Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()[0])
    assert torch.isfinite(torch.tensor(metrics["arch_loss"]))


def test_single_level_unrolled_is_one_clear_error_and_no_results(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "algos" / "darts.py"), "--single-level", "--unrolled",
                           "--dataset", "synthetic", "--out-dir", "out"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "--unrolled" in errors[0] and "--single-level" in errors[0]
    assert not (tmp_path / "out").exists()
