"""ImageNet search data (per-class subsets, ImageFolder loaders) and the PC-DARTS ImageNet search stem, on a tiny
fake ImageFolder written into tmp_path."""
import numpy as np
import pytest
import torch

import data
import gaea_pcdarts
import spaces

CLASSES, PER_CLASS = ("cat", "dog", "eel"), 12


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory):
    """DIR/train/<class>/<i>.png: 3 classes x 12 small RGB images of varying size (ImageFolder needs PIL)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / "train" / c).mkdir(parents=True)
        for i in range(PER_CLASS):
            h, w = rng.integers(20, 40, size=2)
            Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(root / "train" / c / f"{i}.png")
    return root


def test_per_class_subsets_are_disjoint_per_class_and_seeded():
    targets = np.repeat(np.arange(4), [40, 80, 120, 41])
    w, a = data.per_class_subsets(targets, (0.1, 0.025))
    assert np.intersect1d(w, a).size == 0 and np.all(np.diff(w) > 0) and np.all(np.diff(a) > 0)
    assert np.bincount(targets[w]).tolist() == [4, 8, 12, 4]  # round(0.1 n_c) of every class
    assert np.bincount(targets[a]).tolist() == [1, 2, 3, 1]  # max(1, round(0.025 n_c))
    again = data.per_class_subsets(targets, (0.1, 0.025))
    assert all(np.array_equal(x, y) for x, y in zip((w, a), again))  # fixed seed: the same draw every time
    other = data.per_class_subsets(targets, (0.1, 0.025), seed=1)
    assert not np.array_equal(w, other[0])
    shuffled = np.random.default_rng(3).permutation(len(targets))  # labels in any order: still per class
    w2, _ = data.per_class_subsets(targets[shuffled], (0.1, 0.025))
    assert np.bincount(targets[shuffled][w2]).tolist() == [4, 8, 12, 4]


@pytest.mark.parametrize("fractions", [(0.6, 0.5), (0.0, 0.1), ()])
def test_per_class_subsets_bad_fractions(fractions):
    with pytest.raises(data.DataError):
        data.per_class_subsets(np.zeros(10, dtype=int), fractions)


def test_per_class_subsets_class_too_small():
    with pytest.raises(data.DataError, match="class 1 has 1 images"):
        data.per_class_subsets(np.array([0, 0, 0, 1]), (0.5, 0.25))


def test_imagenet_search_loaders(fake_imagenet):
    pairs, test_loader, info = data.imagenet_search_loaders(str(fake_imagenet), batch_size=4, seed=0, workers=0,
                                                            fractions=(0.5, 0.25), image_size=32)
    assert info.num_classes == 3 and info.image_size == 32 and info.loader_augments and info.crop_pad == 0
    w_labels = [y for _, y in pairs.weight_loader.dataset.samples]
    a_paths = [p for p, _ in pairs.arch_loader.dataset.samples]
    assert np.bincount(w_labels).tolist() == [6, 6, 6]  # per class: 50% and 25% of 12
    assert len(a_paths) == 9 and not set(a_paths) & {p for p, _ in pairs.weight_loader.dataset.samples}
    assert [p for p, _ in test_loader.dataset.samples] == a_paths  # final evaluation on the architecture subset
    (xw, yw), (xa, ya) = next(iter(pairs))
    assert xw.shape == (4, 3, 32, 32) and xw.dtype == torch.uint8 and yw.dtype == torch.int64
    assert xa.shape == (4, 3, 32, 32)
    x = data.Augment(info, train=True, generator=torch.Generator().manual_seed(0))(xw)  # normalise only
    mean, std = torch.tensor(data.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(data.IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (xw.float() / 255 - mean) / std)
    xt, _ = next(iter(test_loader))
    assert torch.equal(xt, next(iter(test_loader))[0])  # eval transform: deterministic resize + centre crop


def test_imagenet_subset_files_and_errors(fake_imagenet, tmp_path):
    wf, af = tmp_path / "w.txt", tmp_path / "a.txt"
    wf.write_text("cat/0.png\ndog/1.png\neel/2.png\n")
    af.write_text("cat/3.png\n")
    pairs, _, _ = data.imagenet_search_loaders(str(fake_imagenet), 2, seed=0, workers=0, subset_files=(wf, af))
    assert sorted(p.split("train/")[1] for p, _ in pairs.weight_loader.dataset.samples) == \
        ["cat/0.png", "dog/1.png", "eel/2.png"]
    af.write_text("cat/0.png\n")
    with pytest.raises(data.DataError, match="share images"):
        data.imagenet_search_loaders(str(fake_imagenet), 2, seed=0, workers=0, subset_files=(wf, af))
    af.write_text("cat/99.png\n")
    with pytest.raises(data.DataError, match="not in"):
        data.imagenet_search_loaders(str(fake_imagenet), 2, seed=0, workers=0, subset_files=(wf, af))
    with pytest.raises(data.DataError, match="ImageFolder"):
        data.imagenet_search_loaders(str(tmp_path / "nowhere"), 2, seed=0)


def test_imagenet_stem_supernet():
    space = spaces.get_space("darts")
    net = space.supernet(4, 5, 7, stem="imagenet")
    assert not hasattr(net, "stem") and net.cells[0].pre0.__class__.__name__ == "FactorizedReduce"
    convs = [m for m in [*net.stem0, *net.stem1] if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(3, 6, (2, 2)), (6, 12, (2, 2)),
                                                                          (12, 12, (2, 2))]
    arch = {g: torch.full(s, 1.0 / s[1]) for g, s in space.arch_shapes().items()}
    feats = {}
    net.cells[0].register_forward_hook(lambda m, i, o: feats.update(cell0=(i[0].shape, i[1].shape, o.shape)))
    out = net(torch.randn(2, 3, 64, 64), arch)
    assert out.shape == (2, 7)
    s0, s1, c0 = feats["cell0"]
    assert s0[-1] == 16 and s1[-1] == 8 and c0[-1] == 8  # 1/4 and 1/8 resolution; the first cell is at 1/8
    assert spaces.get_space("darts").supernet(4, 5, 7).stem is not None  # cifar stem by default
    with pytest.raises(spaces.SpaceError):
        space.supernet(4, 5, 7, stem="tiny")


def test_cosine_schedule_with_warmup():
    def lrs(warmup):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        sched = gaea_pcdarts.cosine_schedule(opt, 10, 0.01, warmup)
        out = []
        for _ in range(10):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, 10, eta_min=0.01)
    expected = []
    for _ in range(10):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert lrs(0) == pytest.approx(expected, rel=1e-12)
    assert lrs(3)[:4] == pytest.approx([0.5 / 3, 1.0 / 3, 0.5, expected[3]], rel=1e-12)


@pytest.mark.parametrize("mode", ["eg", "softmax-adam"])
def test_gaea_pcdarts_imagenet_search_one_epoch(fake_imagenet, tmp_path, mode):
    import json

    import gaea_pcdarts

    res = gaea_pcdarts.main(["--dataset", "imagenet", "--data-dir", str(fake_imagenet), "--arch-update", mode,
                             "--workers", "0", "--C", "4", "--layers", "3", "--batch-size", "4", "--epochs", "1",
                             "--warmup-epochs", "0", "--lr-warmup-epochs", "0", "--device", "cpu",
                             "--out-dir", str(tmp_path)])
    run = tmp_path / f"gaea_pcdarts_{mode}_darts_imagenet_s2"
    args = json.loads((run / "args.json").read_text())
    assert (args["partial_k"], args["lr"], args["arch_lr"]) == (2, 0.5, 0.1 if mode == "eg" else 6e-3)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert "stem0.0.weight" in ckpt["state"]["model"] and "stem.0.weight" not in ckpt["state"]["model"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["arch_steps"] == 1  # 3 weight images (1 per class) -> one step
    assert res["genotype"]["space"] == "darts" and 0.0 <= res["supernet_test_acc"] <= 1.0


def test_gaea_pcdarts_imagenet_defaults_and_refusals(capsys):
    import gaea_pcdarts

    a = gaea_pcdarts.parse_args(["--dataset", "imagenet", "--arch-update", "softmax-adam"])
    assert (a.partial_k, a.batch_size, a.lr, a.lr_warmup_epochs, a.warmup_epochs, a.arch_lr, a.workers, a.epochs,
            a.C, a.wd) == (2, 1024, 0.5, 5, 35, 6e-3, 8, 50, 16, 3e-4)
    c = gaea_pcdarts.parse_args([])
    assert (c.partial_k, c.batch_size, c.lr, c.lr_warmup_epochs, c.warmup_epochs) == (4, 256, 0.1, 0, 10)
    for bad in (["--dataset", "imagenet", "--space", "nb201"], ["--dataset", "imagenet", "--single-level"],
                ["--workers", "4"]):
        with pytest.raises(SystemExit):
            gaea_pcdarts.parse_args(bad)
    assert "--dataset imagenet" in capsys.readouterr().err
