"""ASNG-NAS's own experiments: the integer (Gaussian) part of the ASNG update and the mixed categorical + integer step
against vectors derived by hand from the formulas (and matched to the official inpainting_int/asng_int.py run on the
same inputs), the ENAS micro space (parameter counts of a fixed cell against the official cnn_model_micro.py, the
single path, the 4.0M-parameter channel rule), the CAE inpainting space, masks / PSNR / SSIM, and tiny runs of
`asng.py --space enas`, `asng.py --task inpainting` and their retrainings in train_eval.py."""
import functools
import importlib
import json
import math
from pathlib import Path

import pytest
import torch

import asng
import data
import spaces
import train_eval

F64 = dict(dtype=torch.float64)


# ------------------------------------------------------------------------------ the integer ASNG update
def test_integer_update_1d():
    """One integer in [1, 5]: m = 3, sigma = 2, theta = (E z, E z^2) = (3, 13). Mirrored samples z = 3 +- 2 * 0.5 =
    (4, 2), losses (1, 2): u = (+1, -1), G = (T(4) - T(2)) / 2 = (1, 6). Cov T = sigma^2 [[1, 2m], [2m, 4m^2 +
    2 sigma^2]] = [[4, 24], [24, 176]] (det 128), so ||G||_F^2 = G^T Cov^-1 G = (176 - 288 + 144) / 128 = 1/4.
    theta + G / (1/2) = (5, 25); m stays in [1, 5], E z^2 is raised to m^2 + (1/4)^2 = 25.0625 (sigma >= 1/4).
    N = 2, beta = 1/sqrt(2); ||s||^2 = gamma = beta(2 - beta), Delta = exp(beta^2 (2 - beta)(1 - 1/alpha))."""
    a = asng.ASNG([1], alpha=1.5, delta_init=1.0, integers=[(1, 5)])
    assert a.N == 2 and torch.allclose(a.theta_int, torch.tensor([[3.0], [13.0]], **F64))
    assert a.update(torch.zeros(2, 1, dtype=torch.long), [1.0, 2.0], torch.tensor([[4.0], [2.0]], **F64))
    assert torch.allclose(a.theta_int, torch.tensor([[5.0], [25.0625]], **F64), atol=1e-8)
    beta = 1 / math.sqrt(2)
    assert float(a.s_int.square().sum()) == pytest.approx(beta * (2 - beta)) and a.gamma == pytest.approx(beta * (2 - beta))
    # F^(1/2) G with the symmetric root of F = Cov^-1 (closed form (F + sqrt(det F) I) / sqrt(tr F + 2 sqrt(det F))),
    # times sqrt(beta (2 - beta)) / ||G||_F; asng_int.py gives the same (0.5143102, 0.8060388)
    Fm = torch.tensor([[176.0, -24.0], [-24.0, 4.0]], **F64) / 128
    root = (Fm + Fm.det().sqrt() * torch.eye(2, **F64)) / (Fm.trace() + 2 * Fm.det().sqrt()).sqrt()
    s = math.sqrt(beta * (2 - beta)) * (root @ torch.tensor([1.0, 6.0], **F64)) / 0.5
    assert torch.allclose(a.s_int[:, 0], s, atol=1e-9) and torch.allclose(s, torch.tensor([0.5143102, 0.8060388], **F64), atol=1e-6)
    Delta1 = math.exp(beta ** 2 * (2 - beta) * (1 - 1 / 1.5))
    assert a.Delta == pytest.approx(Delta1) and a.Delta == pytest.approx(1.2404599, abs=1e-6)
    # second step from m = 5, sigma = 1/4: z = 5 +- 0.25 = (5.25, 4.75), losses (2, 1): G = (T(4.75) - T(5.25)) / 2
    # = (-0.25, -2.5); Cov = sigma^2 [[1, 10], [10, 100.125]], ||G||_F^2 = 1, so theta + delta G with delta = 1/Delta1;
    # the new E z^2 falls below m^2 + 1/16 and is raised to it.
    assert a.update(torch.zeros(2, 1, dtype=torch.long), [2.0, 1.0], torch.tensor([[5.25], [4.75]], **F64))
    m = 5 - 0.25 / Delta1
    assert torch.allclose(a.theta_int, torch.tensor([[m], [m * m + 1 / 16]], **F64), atol=1e-8)
    assert a.theta_int[0, 0].item() == pytest.approx(4.7984618, abs=1e-6)  # asng_int.py: 4.798461842
    beta2 = beta / Delta1  # beta = delta / sqrt(N) with the adapted delta
    assert a.gamma == pytest.approx((1 - beta2) ** 2 * beta * (2 - beta) + beta2 * (2 - beta2))
    assert float(a.s_int.square().sum()) == pytest.approx(0.3104421, abs=1e-6) and a.Delta == pytest.approx(1.9318970, abs=1e-6)


def test_integer_update_2d():
    """Integers in [1, 3] and [64, 256] (the CAE's kernel index and channels): m = (2, 160), sigma = (1, 96), E z^2 =
    (5, 34816). z = m +- sigma * (1, -0.5) = (3, 112), (1, 208); losses (1, 2): G = [[1, -48], [4, -15360]] (rows:
    E z, E z^2). Per variable G^T Cov^-1 G = (18 - 32 + 16) / 2 = 1 and 42467328 / (9216 * 18432) = 1/4, so
    ||G||_F = sqrt(5/4); N = 4, beta = 1/2, Delta = exp(beta * gamma (1 - 1/alpha)) = exp(1/8)."""
    a = asng.ASNG([1], integers=[(1, 3), (64, 256)])
    z = torch.tensor([[3.0, 112.0], [1.0, 208.0]], **F64)
    assert a.update(torch.zeros(2, 1, dtype=torch.long), [1.0, 2.0], z)
    step = 1 / math.sqrt(1.25)
    want = torch.tensor([[2 + step, 160 - 48 * step], [5 + 4 * step, 34816 - 15360 * step]], **F64)
    assert torch.allclose(a.theta_int, want, rtol=1e-12)  # both variances inside [1/16, ((hi - lo)/2)^2]
    assert torch.allclose(a.theta_int, torch.tensor([[2.8944272, 117.0674949], [8.5777088, 21077.5983585]], **F64), atol=1e-6)
    # asng_int.py's s over (E z row, E z^2 row): 0.40025806, -0.15220847, 0.66316927, -0.35613562
    assert torch.allclose(a.s_int.flatten(), torch.tensor([0.40025806, -0.15220847, 0.66316927, -0.35613562], **F64), atol=1e-7)
    assert a.gamma == pytest.approx(0.75) and float(a.s_int.square().sum()) == pytest.approx(0.75)
    assert a.Delta == pytest.approx(math.exp(0.125)) and a.delta == pytest.approx(0.8824969, abs=1e-6)


def test_mixed_update_is_the_official_combined_step():
    """Categories [3, 3] with reference note 2.9's samples (x1 = (e0, e0), x2 = (e1, e2)) and one integer in [1, 5]
    with z = (4, 2), losses (1, 2): one shared norm ||G||_F^2 = 3 (categorical) + 1/4 (Gaussian) = 13/4, N = 4 + 2,
    beta = 1/sqrt(6). Categorical step G/sqrt(13/4) then the theta_min = 1/4 floor; Gaussian step (3, 13) + (1, 6) /
    sqrt(13/4). The expected values (two consecutive updates) are asng_int.py's on the same inputs."""
    a = asng.ASNG([3, 3], integers=[(1, 5)])
    cat, z = torch.tensor([[0, 0], [1, 2]]), torch.tensor([[4.0], [2.0]], **F64)
    assert a.N == 6 and a.update(cat, [1.0, 2.0], z)
    step = 1 / math.sqrt(3.25)
    raw = torch.tensor([1 / 3 + 0.5 * step, 1 / 3 - 0.5 * step, 1 / 3], **F64)  # row 0 before the floor
    floor = torch.maximum(raw, torch.tensor(0.25, **F64))
    row0 = floor - (floor.sum() - 1) * (floor - 0.25) / (floor.sum() - 0.75)
    assert torch.allclose(a.theta[0], row0) and torch.allclose(a.theta[1], row0[[0, 2, 1]])
    assert torch.allclose(a.theta, torch.tensor([[0.45307985, 0.25, 0.29692015], [0.45307985, 0.29692015, 0.25]], **F64), atol=1e-7)
    assert torch.allclose(a.theta_int[:, 0], torch.tensor([3 + step, 13 + 6 * step], **F64))
    beta = 1 / math.sqrt(6)
    assert a.gamma == pytest.approx(beta * (2 - beta)) == pytest.approx(0.6498299, abs=1e-6)
    s_free = torch.cat([a.s[0, :2], a.s[1, :2], a.s_int[:, 0]])
    assert torch.allclose(s_free, torch.tensor([0.38724766, -0.38724766, 0.52899014, 0.14174248, 0.12026228, 0.18847785],
                                               **F64), atol=1e-7)
    assert a.Delta == pytest.approx(1.0924585, abs=1e-6)
    assert a.update(cat, [1.0, 2.0], z)
    assert torch.allclose(a.theta, torch.tensor([[0.47642221, 0.25, 0.27357779], [0.47642221, 0.27357779, 0.25]], **F64), atol=1e-7)
    assert torch.allclose(a.theta_int[:, 0], torch.tensor([4.04970774, 19.29824644], **F64), atol=1e-6)
    assert float(a.s.square().sum() + a.s_int.square().sum()) == pytest.approx(1.6424588, abs=1e-6)
    assert a.gamma == pytest.approx(0.8626438, abs=1e-6) and a.Delta == pytest.approx(1.0016114, abs=1e-6)


def test_mirrored_sampling_and_categorical_only():
    a = asng.ASNG([2, 3], integers=[(1, 3), (64, 256)])
    cat, z = a.sample_many(4, torch.Generator().manual_seed(0))
    assert cat.shape == (4, 2) and z.shape == (4, 2)
    assert torch.allclose(z[0::2] + z[1::2], 2 * a.theta_int[0].expand(2, 2))  # pairs m + sigma xi, m - sigma xi
    _, z = a.sample_many(20000, torch.Generator().manual_seed(1))
    assert torch.allclose(z.mean(0), a.theta_int[0], rtol=1e-9) and torch.allclose(z.std(0), torch.tensor([1.0, 96.0], **F64), rtol=0.03)
    b = asng.ASNG([3, 3])  # no integers: the categorical ASNG of test_asng.py
    assert b.N == 4 and b.theta_int.shape == (2, 0) and b.sample_many(2, torch.Generator())[1].shape == (2, 0)
    with pytest.raises(ValueError, match="lo < hi"):
        asng.ASNG([3, 3], integers=[(5, 5)])


# ----------------------------------------------------------------------------------------- ENAS micro space
# A fixed cell (one index per official variable: per node input_a, input_b, op_a, op_b; normal then reduce); node 0
# of the normal cell applies the same op to the same input twice (one shared module, counted once).
ENAS_IDX = [1, 1, 3, 3, 0, 0, 0, 3, 2, 3, 1, 1, 2, 0, 4, 4, 5, 0, 2, 1,
            0, 0, 2, 2, 0, 1, 3, 2, 1, 0, 1, 2, 0, 3, 0, 3, 1, 3, 0, 4]


def enas_genotype():
    return spaces.EnasSpace().genotype(ENAS_IDX)


def test_enas_variables_and_genotype_round_trip():
    space = spaces.get_space("enas")
    assert len(space.categories) == 40 and sum(k - 1 for k in space.categories) == 140  # official "dim theta" 180
    g = enas_genotype()
    assert g.normal[:2] == (("sep_conv_3x3", 1), ("sep_conv_3x3", 1)) and g.normal[2:4] == (("skip_connect", 0), ("sep_conv_3x3", 0))
    assert spaces.enas_loose_ends(g.normal) == [4, 6] and spaces.enas_loose_ends(g.reduce) == [2, 4, 5, 6]  # unused states
    assert spaces.parse_genotype(json.dumps(g.to_json())) == g
    dot = spaces.genotype_to_dot(g)
    assert dot.startswith("digraph") and '"normal:4" -> "normal:c_{k}"' in dot and '"normal:3" -> "normal:c_{k}"' not in dot
    with pytest.raises(spaces.GenotypeError, match="input"):
        spaces.EnasGenotype(g.normal[:9] + (("skip_connect", 6),), g.reduce)
    with pytest.raises(spaces.GenotypeError, match="unknown op"):
        spaces.EnasGenotype((("dil_conv_3x3", 0),) + g.normal[1:], g.reduce)


def test_enas_parameter_counts_and_the_4M_rule():
    """Official MicroProbabilisticCNN(n_cells=20, affine=True).get_params_mle() on this cell: 2,558,134 at C = 36;
    its binary search for <= 4.0M parameters ends at C = 45 with 3,913,705 (the paper's ~3.9M)."""
    g = enas_genotype()
    with torch.device("meta"):
        count = lambda C: spaces.count_parameters(spaces.EnasNetwork(g, C, 20, 10, auxiliary=True))
        assert count(36) == 2_558_134
        C = spaces.enas_params_limited_C(g, 4.0)
        assert C == 45 and count(45) == 3_913_705 and count(46) > 4_000_000
    assert spaces.enas_params_limited_C(g, 0.5) < 20


def test_enas_supernet_runs_only_the_sampled_child():
    torch.manual_seed(0)
    space = spaces.get_space("enas")
    net = space.supernet(C=4, layers=3)
    calls = []
    for name, mod in net.named_modules():
        if name.count(".") == 3 and ".ops." in name:  # cells.<i>.ops.<node>_<input>_<op>
            mod.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    arch = space.decode(ENAS_IDX)
    net(torch.randn(2, 3, 16, 16), arch).sum().backward()
    expect = [f"cells.{c}.ops.{n // 2}_{j}_{k}" for c, kind in enumerate(net.kinds) for n, (k, j) in enumerate(arch[kind])]
    assert sorted(calls) == sorted(expect) and len(calls) == 30  # 10 op applications per cell, nothing else
    used = set(expect)
    for name, p in net.named_parameters():
        if ".ops." in name:
            key = ".".join(name.split(".")[:4])
            assert (p.grad is not None) == (key in used), name
    for c, cell in enumerate(net.cells):  # the 1x1 conv's columns of nodes that are not loose ends get no gradient
        loose = spaces.enas_loose_ends(arch[net.kinds[c]])
        grad = cell.conv.weight.grad.view(cell.C, 5, cell.C)
        assert all((grad[:, n - 2].abs().sum() > 0) == (n in loose) for n in range(2, 7))


def test_enas_search_and_retrain_under_a_parameter_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "load_arrays", functools.partial(data.load_arrays, synthetic_size=(128, 64)))
    res = asng.main(["--space", "enas", "--dataset", "synthetic", "--train-subset", "32", "--batch-size", "16",
                     "--epochs", "1", "--C", "4", "--layers", "3", "--device", "cpu", "--out-dir", str(tmp_path)])
    g = spaces.parse_genotype(res["run_dir"])
    assert isinstance(g, spaces.EnasGenotype) and len(res["theta"]) == 40 and res["search_space"] == "enas"
    out = train_eval.main(["--genotype", res["run_dir"], "--dataset", "synthetic", "--train-subset", "32", "--epochs", "1",
                           "--layers", "3", "--params-limit", "0.02", "--batch-size", "16", "--device", "cpu",
                           "--out-dir", str(tmp_path)])
    args = json.loads((Path(out["run_dir"]) / "args.json").read_text())
    assert out["protocol"] == "enas-cifar" and out["params"] <= 20_000 and args["C"] >= 1
    with torch.device("meta"):  # C is the largest within the budget
        assert spaces.count_parameters(spaces.EnasNetwork(g, args["C"] + 1, 3, 10)) > 20_000
    with pytest.raises(spaces.SpaceError, match="--C and --params-limit"):
        train_eval.main(["--genotype", res["run_dir"], "--C", "8", "--params-limit", "1", "--out-dir", str(tmp_path)])


@pytest.mark.parametrize("algo", ["darts", "gaea_darts_erm", "gaea_gdas", "gaea_pcdarts", "nasp", "xnas"])
def test_other_algorithms_refuse_the_enas_space(algo, capsys):
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(algo).parse_args(["--space", "enas"])
    assert exc.value.code == 2 and "asng.py" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ the inpainting task
def test_cae_space_sizes_and_parameter_count():
    """Official ProbablisticCAE (20 columns, level-back 5): 41 categoricals (94 free parameters), 40 integers (80).
    A fixed chain: the official init_network_by_c + get_params give 3,522,058 parameters."""
    s = spaces.CAESpace()
    assert len(s.categories) == 41 and sum(k - 1 for k in s.categories) == 94 and 2 * len(s.integers) == 80
    g = spaces.CAEGenotype(((5, 79, False), (5, 184, True), (5, 200, False), (5, 64, True), (5, 64, True)))
    assert spaces.count_parameters(spaces.CAENetwork(genotype=g)) == 3_522_058
    assert spaces.parse_genotype(json.dumps(g.to_json())) == g
    small = spaces.CAESpace(cols=6, ch_range=(2, 8))  # output <- position 6 (node 5) <- 3 (node 2) <- image
    cat = [1, 0, 0, 0, 0, 0, 0, 2, 1, 1, 1, 2, 4]  # (skip, input) per node, then the output's input
    z = torch.tensor([3.0, 2.4, 1, 2, 2.5, 7.6, 1, 2, 1, 2, 0.6, 9.0])  # kernel index 2.5 -> 2 (half to even), 9 -> 8
    assert small.decode(cat, z) == ((2, 0, 3, 8), (5, 1, 1, 8))
    with pytest.raises(spaces.GenotypeError):
        spaces.CAEGenotype(((4, 8, True),))


def test_masks_psnr_ssim():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    center = data.mask_images(x, "center")
    assert (center[:, :, 2:6, 2:6] == 0).all() and torch.equal(center[:, :, :2], x[:, :, :2])
    half = data.mask_images(torch.ones(64, 1, 8, 8), "random-half", torch.Generator().manual_seed(0))
    assert (half.sum((1, 2, 3)) == 32).all()
    pixels = data.mask_images(torch.ones(64, 3, 16, 16), "random-pixel", torch.Generator().manual_seed(0))
    assert abs(pixels.mean().item() - 0.2) < 0.02 and torch.equal(pixels[:, 0], pixels[:, 2])  # all channels alike
    assert torch.allclose(data.psnr((x + 0.1).clamp(max=1.0), x.clamp(max=0.9)), torch.full((3,), 20.0, **F64))
    assert torch.allclose(data.ssim(x, x), torch.ones(3, **F64)) and (data.ssim(x, x.flip(-1)) < 0.9).all()


def test_tiny_inpainting_search_and_retrain(tmp_path):
    res = asng.main(["--task", "inpainting", "--dataset", "synthetic", "--image-size", "8", "--ch-range", "2", "6",
                     "--train-subset", "64", "--iters", "6", "--device", "cpu", "--out-dir", str(tmp_path)])
    g = spaces.parse_genotype(res["run_dir"])
    assert isinstance(g, spaces.CAEGenotype) and res["search_space"] == "cae" and len(g.layers) >= 1
    assert all(k in (1, 3, 5) and 2 <= ch <= 6 for k, ch, _ in g.layers)
    assert all(1 <= m <= hi for m, hi in zip(res["theta_int_mean"], [3, 6] * 20))
    assert math.isfinite(res["supernet_test_psnr"]) and 0 < res["supernet_test_ssim"] <= 1 + 1e-9
    metrics = [json.loads(line) for line in (Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(math.isfinite(m["valid_psnr"]) for m in metrics)  # 6 iterations of 2 steps
    out = train_eval.main(["--genotype", res["run_dir"], "--dataset", "synthetic", "--image-size", "8",
                           "--train-subset", "32", "--epochs", "1", "--device", "cpu", "--out-dir", str(tmp_path)])
    assert out["protocol"] == "cae-inpainting" and math.isfinite(out["test_psnr"]) and out["params"] > 0
