"""algos/nasp.py NaspEdge: the architecture step's graph runs only through the selected ops, and the gradient with
respect to A_bar is exactly the one of the full graph (every op of every edge in the graph), in float64."""
import pytest
import torch
import torch.nn.functional as F

import nasp
import spaces

CASES = [("darts", 7, 3), ("darts", 12, 3), ("nb201", None, 1)]


def _twin_supernets(space, layers, seed=0):
    """The same supernet (same weights) built with MixedEdge (full graph) and with NaspEdge, float64, train mode."""
    torch.manual_seed(seed)
    full = space.supernet(4, layers, 10).double()
    sel = space.supernet(4, layers, 10, edge=nasp.NaspEdge).double()
    sel.load_state_dict(full.state_dict())
    return full, sel


def _batch(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 8, 8, generator=gen, dtype=torch.float64), torch.randint(0, 10, (6,), generator=gen)


def _abar(space, seed=3):
    gen = torch.Generator().manual_seed(seed)
    A = {g: torch.rand(*s, generator=gen, dtype=torch.float64) for g, s in space.arch_shapes().items()}
    return nasp.discretize(A, space.node_slices, nasp.edges_kept(space))


def _grads(model, abar, x, y):
    abar = {g: a.clone().requires_grad_(True) for g, a in abar.items()}
    logits = model(x, abar)
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(logits, y), list(abar.values()) + list(params), allow_unused=True)
    return logits, grads[:len(abar)], dict(zip(names, grads[len(abar):]))


@pytest.mark.parametrize("space_name,n_ops,layers", CASES)
def test_abar_gradient_equals_the_full_graph(space_name, n_ops, layers):
    space = nasp.nasp_space(n_ops, space_name)
    full, sel = _twin_supernets(space, layers)
    abar, (x, y) = _abar(space), _batch()
    logits_full, g_full, w_full = _grads(full, abar, x, y)
    logits_sel, g_sel, w_sel = _grads(sel, abar, x, y)
    assert torch.allclose(logits_full, logits_sel)
    for a, b, dropped_rows in zip(g_full, g_sel, (a.sum(1) == 0 for a in abar.values())):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
        assert (a != 0).sum() > a.shape[0]  # unselected entries carry gradient too (not only the hot ones)
        if dropped_rows.any():
            assert b[dropped_rows].abs().sum() > 0  # dropped edges too
    # the graph: unselected ops get no gradient at all (full graph: exactly 0); selected ones the same gradient
    for name, g in w_sel.items():
        if g is None:
            assert ".ops." in name and (w_full[name] is None or not w_full[name].any()), name
        else:
            assert torch.allclose(g, w_full[name], rtol=1e-10, atol=1e-12), name
    assert sum(g is None for g in w_sel.values()) > sum(g is None for g in w_full.values())


def test_arch_step_with_nasp_edge_gives_the_full_graph_step():
    space = nasp.nasp_space(7)
    full, sel = _twin_supernets(space, 3)
    x, y = _batch()
    rel = nasp.size_weights(space, "cpu")
    steps = []
    for model in (full, sel):
        gen = torch.Generator().manual_seed(5)
        A = {g: torch.nn.Parameter(torch.rand(*s, generator=gen, dtype=torch.float64)) for g, s in space.arch_shapes().items()}
        opt = torch.optim.Adam(A.values(), 1e-2, betas=(0.5, 0.999), weight_decay=1e-3)
        nasp.arch_step(model, A, opt, x, y, space.node_slices, {g: w.double() for g, w in rel.items()}, 0.5)
        steps.append({g: (a.detach(), a.grad) for g, a in A.items()})
        assert all(p.grad is None for p in model.parameters())
    for g in steps[0]:
        assert torch.allclose(steps[0][g][1], steps[1][g][1], rtol=1e-10, atol=1e-12)
        assert torch.allclose(steps[0][g][0], steps[1][g][0])


def test_nasp_edge_is_generic_nb1shot1():
    """The edge takes a spec per edge like MixedEdge: on 1Shot1's choice blocks (one-hot op rows, weighted inputs and
    outputs with gradient) the gradients equal the full graph's."""
    space = spaces.get_space("nb1shot1-1")
    full, sel = _twin_supernets(space, 1)
    x, y = _batch()
    gen = torch.Generator().manual_seed(4)
    arch = {g: torch.rand(*s, generator=gen, dtype=torch.float64) for g, s in space.arch_shapes().items()}
    arch["ops"] = F.one_hot(arch["ops"].argmax(1), arch["ops"].shape[1]).double()
    grads = []
    for model in (full, sel):
        leaves = {g: a.clone().requires_grad_(True) for g, a in arch.items()}
        grads.append(torch.autograd.grad(F.cross_entropy(model(x, leaves), y), list(leaves.values())))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
