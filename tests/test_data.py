"""Tests for data.py: loaders of every dataset kind, augmentation, search splits, paired batches, tables, run logs."""
import argparse
import functools
import gzip
import json
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR10_NPZ = SHARED / "images" / "cifar10_partial.npz"
CIFAR100_NPZ = SHARED / "images" / "cifar100_partial.npz"
CIFAR_SPLIT = SHARED / "nb201" / "splits" / "cifar-split.txt.gz"
ORACLE = SHARED / "nb201" / "nb201_oracle.csv.gz"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


def tiny_info(size: int = 8, pad: int = 1) -> data.DataInfo:
    return data.DataInfo("t", 10, size, (0.5, 0.4, 0.3), (0.2, 0.25, 0.5), pad)


# ---------------------------------------------------------------------------------------------- arrays
def test_synthetic_is_deterministic_and_shaped():
    a1, info = data.load_arrays("synthetic", synthetic_size=(200, 50), image_size=16)
    torch.manual_seed(123), np.random.seed(123)  # the global RNG must not matter
    a2, _ = data.load_arrays("synthetic", synthetic_size=(200, 50), image_size=16)
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert a1[k].tobytes() == a2[k].tobytes()
    assert a1["x_train"].shape == (200, 16, 16, 3) and a1["x_train"].dtype == np.uint8
    assert a1["y_train"].dtype == np.int64 and set(a1["y_train"]) == set(range(10))
    assert info.num_classes == 10 and info.image_size == 16 and info.crop_pad == 2
    assert all(0 < m < 1 for m in info.mean) and all(0 < s < 1 for s in info.std)


def test_synthetic_is_learnable():
    arrays, info = data.load_arrays("synthetic", synthetic_size=(1000, 400), image_size=16)
    norm = data.Augment(info, train=False)
    x = norm(data.ArrayDataset(arrays["x_train"], arrays["y_train"]).x).flatten(1)
    xt = norm(data.ArrayDataset(arrays["x_test"], arrays["y_test"]).x).flatten(1)
    y, yt = torch.from_numpy(arrays["y_train"]), torch.from_numpy(arrays["y_test"])
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    assert accuracy > 0.5  # chance is 0.1


def test_npz_cifar10_partial():
    arrays, info = data.load_arrays(str(need(CIFAR10_NPZ)))
    assert arrays["x_train"].shape == (5170, 32, 32, 3) and arrays["x_test"].shape == (1017, 32, 32, 3)
    assert arrays["y_train"].dtype == np.int64 and arrays["x_train"].dtype == np.uint8
    assert info.num_classes == 10 and info.image_size == 32 and info.crop_pad == 4
    assert info.mean == pytest.approx((125.3 / 255, 123.0 / 255, 113.9 / 255))
    assert info.std == pytest.approx((63.0 / 255, 62.1 / 255, 66.7 / 255))


def test_npz_cifar100_partial_uses_fine_labels():
    arrays, info = data.load_arrays(str(need(CIFAR100_NPZ)))
    assert arrays["x_train"].shape == (486, 32, 32, 3) and len(arrays["y_test"]) == 916
    assert info.num_classes == 100 and arrays["y_train"].max() < 100
    assert info.mean == pytest.approx((129.3 / 255, 124.1 / 255, 112.4 / 255))


def test_npz_custom_stats_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "toy.npz", x_train=x, y_train=np.arange(20) % 3, x_test=x[:4], y_test=np.arange(4) % 3)
    _, info = data.load_arrays(str(tmp_path / "toy.npz"))
    assert info.num_classes == 3 and info.image_size == 8
    assert info.mean == pytest.approx(tuple(x.reshape(-1, 3).mean(0) / 255))
    np.savez(tmp_path / "bad.npz", x_train=x)
    with pytest.raises(data.DataError, match="lacks keys"):
        data.load_arrays(str(tmp_path / "bad.npz"))
    with pytest.raises(data.DataError, match="not found"):
        data.load_arrays(str(tmp_path / "missing.npz"))


def test_unknown_dataset():
    with pytest.raises(data.DataError, match="synthetic"):
        data.load_arrays("mnist")


def test_cifar_missing_without_download(tmp_path):
    with pytest.raises(data.DataError) as err:
        data.load_arrays("cifar10", data_dir=str(tmp_path), download=False)
    message = str(err.value)
    assert ".npz" in message and "synthetic" in message and "\n" not in message


def test_imagenet16_fake_pickles(tmp_path):
    root = tmp_path / "ImageNet16"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in data.IMAGENET16_FILES:
        labels = [1, 120, 121, 5, 1000]  # 121 and 1000 are outside ImageNet16-120
        rows = rng.integers(0, 256, (len(labels), 3 * 16 * 16), dtype=np.uint8)
        with open(root / name, "wb") as f:
            pickle.dump({"data": rows, "labels": labels}, f)
    arrays, info = data.load_arrays("imagenet16-120", data_dir=str(tmp_path))
    assert arrays["x_train"].shape == (30, 16, 16, 3) and arrays["x_test"].shape == (3, 16, 16, 3)
    assert arrays["y_test"].tolist() == [0, 119, 4]
    assert info.num_classes == 120 and info.crop_pad == 2 and info.image_size == 16
    with open(root / "val_data", "rb") as f:
        first = pickle.load(f)["data"][0]
    np.testing.assert_array_equal(arrays["x_test"][0], first.reshape(3, 16, 16).transpose(1, 2, 0))
    (root / "train_data_batch_3").unlink()
    with pytest.raises(data.DataError, match="train_data_batch_3"):
        data.load_arrays("imagenet16-120", data_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------- augment
def test_augment_eval_normalizes_exactly():
    info = tiny_info()
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    out = data.Augment(info, train=False)(x)
    assert out.dtype == torch.float32 and out.shape == (4, 3, 8, 8)
    mean, std = torch.tensor(info.mean).view(1, 3, 1, 1), torch.tensor(info.std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (x.float() / 255 - mean) / std)


def test_augment_crop_flip_deterministic_and_valid():
    info = tiny_info(pad=2)
    x = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)  # no zero pixels: zeros come from padding
    outs = [data.Augment(info, train=True, generator=torch.Generator().manual_seed(7))(x) for _ in range(2)]
    torch.testing.assert_close(outs[0], outs[1])
    assert outs[0].shape == x.shape
    assert not torch.equal(outs[0], data.Augment(info, train=False)(x))
    # every output image is a padded crop of its input, possibly mirrored
    raw = (outs[0] * torch.tensor(info.std).view(1, 3, 1, 1) + torch.tensor(info.mean).view(1, 3, 1, 1)) * 255
    raw = raw.round().to(torch.uint8)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        candidates = [padded[i, :, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
        candidates += [img.flip(-1) for img in candidates]
        assert any(torch.equal(raw[i], img) for img in candidates)


def test_cutout_zeroes_a_square():
    info = tiny_info(size=16, pad=0)  # no crop (flip of a constant image is a no-op): isolate cutout
    x = torch.full((32, 3, 16, 16), 200, dtype=torch.uint8)
    out = data.Augment(info, train=True, cutout=6, generator=torch.Generator().manual_seed(0))(x)
    holes = (out == 0).all(dim=1)  # N, H, W
    sizes = holes.flatten(1).sum(1)
    assert (sizes > 0).all() and (sizes <= 36).all() and (sizes == 36).any()
    for hole in holes:  # the zeroed region is a rectangle
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert hole[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()


# ----------------------------------------------------------------------------------------------- search
def test_search_split_single_level_and_bilevel():
    w, a = data.search_split(10, bilevel=False)
    assert w.tolist() == list(range(10)) and a.tolist() == list(range(10))
    w, a = data.search_split(10, bilevel=True, train_portion=0.5)
    assert w.tolist() == [0, 1, 2, 3, 4] and a.tolist() == [5, 6, 7, 8, 9]
    with pytest.raises(data.DataError):
        data.search_split(10, bilevel=True, train_portion=1.0)


def test_split_file_plain_and_errors(tmp_path):
    path = tmp_path / "split.txt"
    path.write_text(json.dumps({"train": ["int", ["0", "2"]], "valid": ["int", ["1", "3"]]}))
    w, a = data.search_split(4, bilevel=True, split_file=str(path))
    assert w.tolist() == [0, 2] and a.tolist() == [1, 3]
    with pytest.raises(data.DataError, match="indexes up to 3 but the training set has 3 images"):
        data.search_split(3, bilevel=True, split_file=str(path))
    with pytest.raises(data.DataError):
        data.search_split(4, bilevel=True, split_file=str(path), split_keys=("xvalid", "xtest"))
    with pytest.raises(data.DataError):
        data.read_split_file(tmp_path / "missing.txt")


def test_nb201_cifar_split():
    splits = data.read_split_file(need(CIFAR_SPLIT))
    assert len(splits["train"]) == 25000 and len(splits["valid"]) == 25000
    assert splits["train"][:3].tolist() == [0, 5, 7]
    w, a = data.search_split(50000, bilevel=True, split_file=str(CIFAR_SPLIT))
    assert len(np.intersect1d(w, a)) == 0 and len(np.union1d(w, a)) == 50000


def _indexed_images(n: int) -> np.ndarray:
    """n 8x8 images (the smallest data.load_arrays accepts) whose first pixel encodes the image's index
    (i % 256, i // 256, 0)."""
    x = np.zeros((n, 8, 8, 3), np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return x


def _image_ids(ds) -> list[int]:
    return (ds.x[:, 0, 0, 0].long() + 256 * ds.x[:, 1, 0, 0].long()).tolist()  # NCHW: channel 0 / 1 of pixel (0, 0)


def _write_split(path, **keys):
    path.write_text(json.dumps({k: ["int", [str(i) for i in v]] for k, v in keys.items()}))
    return str(path)


def test_direct_search_split_puts_xvalid_of_the_test_set_into_the_arch_batches(tmp_path):
    """NB201 direct search (CIFAR-100 / ImageNet16-120 layout): weights on every training image, architecture on the
    `xvalid` images of a 10,000-image test set, supernet test on the `xtest` images."""
    rng = np.random.default_rng(0)
    perm = rng.permutation(10000)
    xvalid, xtest = np.sort(perm[:5000]), np.sort(perm[5000:])
    np.savez(tmp_path / "standin.npz", x_train=_indexed_images(300), y_train=np.arange(300) % 10,
             x_test=_indexed_images(10000), y_test=np.arange(10000) % 10)
    split = _write_split(tmp_path / "test-split.txt", xvalid=xvalid, xtest=xtest)
    pairs, test_loader, _ = data.search_loaders(str(tmp_path / "standin.npz"), "./unused", 64, bilevel=True, seed=0,
                                                split_file=split)
    assert _image_ids(pairs.weight_loader.dataset) == list(range(300))
    assert _image_ids(pairs.arch_loader.dataset) == xvalid.tolist()
    assert _image_ids(test_loader.dataset) == xtest.tolist()
    assert torch.equal(pairs.arch_loader.dataset.y, torch.as_tensor(xvalid % 10))  # labels travel with their images
    erm, test_all, _ = data.search_loaders(str(tmp_path / "standin.npz"), "./unused", 64, bilevel=False, seed=0,
                                           split_file=split)  # single-level ignores the split file
    assert len(erm.arch_loader.dataset) == 300 and len(test_all.dataset) == 10000


def test_split_beyond_the_data_is_one_clear_error(tmp_path):
    """A partial test set (e.g. the 916-image CIFAR-100 subset) cannot use NB201's 10,000-index split."""
    np.savez(tmp_path / "partial.npz", x_train=_indexed_images(50), y_train=np.arange(50) % 10,
             x_test=_indexed_images(916), y_test=np.arange(916) % 10)
    split = _write_split(tmp_path / "s.txt", xvalid=[1, 9999], xtest=[0, 9998])
    with pytest.raises(data.DataError) as err:
        data.search_loaders(str(tmp_path / "partial.npz"), "./unused", 8, bilevel=True, seed=0, split_file=split)
    msg = str(err.value)
    assert "indexes up to 9999" in msg and "test set has 916 images" in msg and "\n" not in msg
    train_split = _write_split(tmp_path / "t.txt", train=[0, 1], valid=[2, 60])
    with pytest.raises(data.DataError, match="training set has 50 images"):
        data.search_loaders(str(tmp_path / "partial.npz"), "./unused", 8, bilevel=True, seed=0, split_file=train_split)


def test_nb201_test_split_files(shared_data):
    for name, n in (("cifar100-test-split", 10000), ("imagenet-16-120-test-split", 6000)):
        s = data.read_split_file(shared_data / "nb201" / "splits" / f"{name}.txt.gz")
        xvalid, xtest = data.test_split(s, n, name)
        assert len(xvalid) == len(xtest) == n // 2 and len(np.union1d(xvalid, xtest)) == n


def test_oracle_metrics_searched_dataset_first_and_c10_is_not_c100():
    row = {"c10_valid_200": 1.0, "c10_test_200": 2.0, "c100_valid_200": 3.0, "c100_test_200": 4.0,
           "in16_test_200": 5.0, "nats_c10_test_200": 6.0, "nats_c100_test_200": 7.0, "c10_params_M": 0.5}
    table = {"cell": row}
    c100 = data.oracle_metrics(table, "cell", "../shared/data/images/cifar100_partial.npz")
    assert list(c100)[:3] == ["oracle_c100_valid_200", "oracle_c100_test_200", "oracle_nats_c100_test_200"]
    assert c100["oracle_test"] == 4.0 and c100["oracle_valid"] == 3.0 and c100["oracle_c10_test_200"] == 2.0
    assert "oracle_c10_valid_200" not in c100 and "oracle_c10_params_M" not in c100
    c10 = data.oracle_metrics(table, "cell", "cifar10")
    assert list(c10)[:4] == ["oracle_c10_valid_200", "oracle_c10_test_200", "oracle_nats_c10_test_200", "oracle_c10_params_M"]
    assert c10["oracle_test"] == 2.0 and "oracle_c100_valid_200" not in c10
    assert data.oracle_metrics(table, "cell", "imagenet16-120")["oracle_test"] == 5.0
    assert data.oracle_metrics(None, "cell", "cifar10") == {} and data.oracle_metrics(table, "other", "cifar10") == {}
    assert "oracle_test" not in data.oracle_metrics(table, "cell", "synthetic")


class Scaled(torch.nn.Module):
    """A model called as model(x, arch), like the supernets: a linear map scaled by `arch`."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(12, 3)

    def forward(self, x, scale):
        return self.linear(x.flatten(1)) * scale


def test_evaluate_restores_train_mode_and_averages():
    model = Scaled()
    with torch.no_grad():
        model.linear.weight.zero_(), model.linear.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    ds = data.ArrayDataset(np.zeros((10, 2, 2, 3), np.uint8), np.arange(10) % 3)
    loss, acc = data.evaluate(model, data.make_loader(ds, 4, shuffle=False, seed=0), lambda x: x.float(), "cpu", 2.0)
    assert acc == pytest.approx(4 / 10) and model.training  # labels 0 in 4 of 10; train mode restored
    logits = torch.tensor([[2.0, 0.0, 0.0]]).repeat(10, 1)
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, torch.arange(10) % 3)))


def test_make_loader_batches_and_determinism():
    ds = data.ArrayDataset(np.arange(50 * 12, dtype=np.uint8).reshape(50, 2, 2, 3), np.arange(50))
    x0, y0 = ds[3]
    assert x0.shape == (3, 2, 2) and x0.dtype == torch.uint8 and y0 == 3
    orders = [torch.cat([y for _, y in data.make_loader(ds, 8, shuffle=True, seed=5)]) for _ in range(2)]
    assert torch.equal(orders[0], orders[1]) and sorted(orders[0].tolist()) == list(range(50))
    assert not torch.equal(orders[0], torch.arange(50))
    x, y = next(iter(data.make_loader(ds, 8, shuffle=False, seed=0)))
    assert x.shape == (8, 3, 2, 2) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert y.tolist() == list(range(8))
    sampler = torch.utils.data.distributed.DistributedSampler(ds, num_replicas=2, rank=1, shuffle=False)
    ys = torch.cat([y for _, y in data.make_loader(ds, 8, shuffle=True, seed=0, sampler=sampler)])
    assert ys.tolist() == list(range(1, 50, 2))


class CountingLoader:
    """Wraps a loader and counts how often an iterator is created."""

    def __init__(self, loader):
        self.loader, self.iterators = loader, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.iterators += 1
        return iter(self.loader)


def test_paired_batches_keep_arch_iterator_alive():
    ds_w = data.ArrayDataset(np.zeros((40, 2, 2, 3), np.uint8), np.arange(40))
    ds_a = data.ArrayDataset(np.ones((12, 2, 2, 3), np.uint8), np.arange(100, 112))
    weight = data.make_loader(ds_w, 4, shuffle=True, seed=0)
    arch = CountingLoader(data.make_loader(ds_a, 4, shuffle=True, seed=1))  # 3 batches per pass
    pairs = data.PairedBatches(weight, arch)
    assert len(pairs) == 10
    epoch1 = list(pairs)
    assert len(epoch1) == 10 and arch.iterators == 4  # ceil(10 / 3) passes, not one per step
    arch_labels = torch.cat([ya for _, (_, ya) in epoch1[:9]])
    for k in range(3):  # each full pass over the arch loader is a permutation of its data
        assert sorted(arch_labels[12 * k:12 * (k + 1)].tolist()) == list(range(100, 112))
    (xw, yw), (xa, ya) = epoch1[0]
    assert xw.dtype == torch.uint8 and ya.dtype == torch.int64 and (xa == 1).all()
    list(pairs)  # the second epoch continues the live iterator (1 batch left) instead of starting over
    assert arch.iterators == 7


def test_search_loaders_synthetic(monkeypatch):
    monkeypatch.setattr(data, "load_arrays", functools.partial(data.load_arrays, synthetic_size=(100, 30), image_size=8))
    pairs, test_loader, info = data.search_loaders("synthetic", "./unused", batch_size=16, bilevel=True, seed=0,
                                                   train_subset=64)
    assert len(pairs) == 2 and len(test_loader) == 2 and info.image_size == 8
    (xw, yw), (xa, ya) = next(iter(pairs))
    assert xw.shape == (16, 3, 8, 8) and xa.shape == (16, 3, 8, 8)
    assert len(pairs.weight_loader.dataset) == 32 and len(pairs.arch_loader.dataset) == 32
    erm, _, _ = data.search_loaders("synthetic", "./unused", 16, bilevel=False, seed=0)
    assert len(erm.weight_loader.dataset) == 100 and erm.arch_loader.dataset is erm.weight_loader.dataset


# ------------------------------------------------------------------------------------------ table, logs
def test_load_table_oracle():
    table = data.load_table(str(need(ORACLE)))
    assert len(table) == 15625
    best = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    assert table[best]["c100_test_200"] == pytest.approx(73.513333)
    assert table[best]["index"] == 9930 and "unique_str" not in table[best]


def test_load_table_errors(tmp_path):
    with pytest.raises(data.DataError):
        data.load_table(str(tmp_path / "missing.csv"))
    with gzip.open(tmp_path / "t.csv.gz", "wt") as f:
        f.write("name,acc\na,1.5\n")
    assert data.load_table(str(tmp_path / "t.csv.gz"), key="name") == {"a": {"acc": 1.5}}
    with pytest.raises(data.DataError, match="arch_str"):
        data.load_table(str(tmp_path / "t.csv.gz"))


def _run_args(tmp_path, **kw):
    return argparse.Namespace(**{"epochs": 10, "out_dir": str(tmp_path / "runs"), "run_name": "exp", "resume": False,
                                 "tensorboard": False, "deterministic": False, "log_every": 50, **kw})


def test_run_files_and_progress(tmp_path, capsys):
    run = data.Run(_run_args(tmp_path, lr=0.1, seed=np.int64(3), path=Path("/x")), "unused", argv=[])
    assert run.path == tmp_path / "runs" / "exp"
    saved = json.loads((run.path / "args.json").read_text())
    assert {k: saved[k] for k in ("lr", "seed", "path", "world_size")} == {"lr": 0.1, "seed": 3, "path": "/x", "world_size": 1}
    run.restore({})
    run.end_epoch({}, {"epoch": 1, "train_loss": torch.tensor(1.5).item(), "acc": 0.25, "genotype": {"a": [1]}},
                  show=("train_loss", "acc"))
    line = capsys.readouterr().out.strip()
    assert line.startswith("epoch 1/10 | train_loss 1.5 | acc 0.25 |") and "ETA " in line and "\n" not in line
    lines = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"epoch": 1, "train_loss": 1.5, "acc": 0.25, "genotype": {"a": [1]}}]
    assert (run.path / data.LOCK).is_file()  # held while the run lives
    run.finish({"best": 1}, "g", "digraph {}")
    assert sorted(p.name for p in run.path.iterdir()) == ["args.json", "cell.dot", "checkpoint.pt", "genotype.json",
                                                         "metrics.jsonl"]


def test_run_dir_reuse_suffix_and_lock(tmp_path):
    out = str(tmp_path / "runs")
    first = data.make_run_dir(out, "exp")
    assert first.name == "exp" and data.claim(first) is None  # ours: taken over, not refused
    (first / "args.json").write_text("{}")
    data.release(first)
    assert data.make_run_dir(out, "exp") == first  # only args.json (stopped in epoch 1): started anew in place
    assert not (first / "args.json").exists()
    (first / "metrics.jsonl").write_text("")
    assert data.make_run_dir(out, "exp").name == "exp_1"  # a result: never overwritten
    (first / data.LOCK).write_text(f"{socket.gethostname()} 1")  # pid 1 lives: in use
    assert "process 1" in data.claim(first)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (first / data.LOCK).write_text(f"{socket.gethostname()} {dead.pid}")  # a dead process: stale, taken over
    assert data.claim(first) is None
    with pytest.raises(data.DataError, match="cannot create a run directory"):
        data.make_run_dir("/proc/nasref_runs", "exp")