"""Data for nasref: arrays, loaders, GPU-friendly batch augmentation, search splits, benchmark tables, run logs.

Every dataset is held in memory as uint8 NHWC numpy arrays and served as uint8 NCHW batches; `Augment`
does crop/flip/normalise/cutout on whole batches (on any device), so loading is never the bottleneck.

Conventions (NAS-Bench-201 / AutoDL `get_dataset_with_transform.py`, DARTS `utils.py`):
- Means/stds (/255): CIFAR-10 [125.3,123.0,113.9]/[63.0,62.1,66.7]; CIFAR-100 [129.3,124.1,112.4]/[68.2,65.4,70.4];
  ImageNet16 [122.68,116.66,104.01]/[63.22,61.26,65.09].
- Train transform: random crop with zero padding (4 px for 32 px images, 2 px for ImageNet16's 16 px) + horizontal
  flip, then normalise; test: normalise only. Cutout (DeVries & Taylor, as in DARTS): one LxL square per image,
  centre uniform over the image, clipped at the borders, applied after normalisation.
- ImageNet16 (Chrabaszcz et al. 2017, used by NB201): pickles `train_data_batch_1..10` and `val_data` (latin1),
  `data` rows are 3*16*16 channel-major uint8, `labels` are 1-based; ImageNet16-120 keeps labels 1..120
  (target = label - 1): 151,700 train / 6,000 val images.
- NB201 split files (`configs/nas-benchmark/*.txt`): JSON `{name: ["int", ["0", "5", ...]]}`; `cifar-split.txt`
  holds train/valid, 25k + 25k indices into the CIFAR-10 training set; `cifar100-test-split.txt` and
  `imagenet-16-120-test-split.txt` hold xvalid/xtest, 5k + 5k (3k + 3k) indices into the test (validation) set.
- Search data (GAEA `train_utils.py`, DARTS `train_search.py`): single-level (ERM) draws weight and architecture
  batches from the whole training set; bilevel uses the first `train_portion` for weights, the rest for the
  architecture, or an NB201 split file: train/valid halves of the training set (CIFAR-10), or NB201's direct search
  on CIFAR-100 / ImageNet16-120 (AutoDL `get_nas_search_loaders`): weights on the whole training set, architecture
  on the `xvalid` half of the test set, and the supernet's test accuracy on the `xtest` half. All search batches get
  train-time augmentation (the NB201 loaders give the valid images the train transform too).
"""
from __future__ import annotations

import csv
import datetime
import itertools
import gzip
import json
import os
import pickle
import tempfile
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

DATASETS = ("cifar10", "cifar100", "imagenet16-120", "synthetic")  # plus any path ending in .npz
CIFAR10_MEAN, CIFAR10_STD = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)
CIFAR100_MEAN, CIFAR100_STD = (129.3, 124.1, 112.4), (68.2, 65.4, 70.4)
IMAGENET16_MEAN, IMAGENET16_STD = (122.68, 116.66, 104.01), (63.22, 61.26, 65.09)
IMAGENET16_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11)) + ("val_data",)


class DataError(RuntimeError):
    """A dataset, split file or table is missing or malformed (the message is one line saying what to do)."""


@dataclass(frozen=True)
class DataInfo:
    name: str
    num_classes: int
    image_size: int
    mean: tuple  # per channel, [0, 1] units
    std: tuple
    crop_pad: int  # 4 for 32 px data, 2 for 16 px ImageNet16


def _info(name: str, num_classes: int, image_size: int, mean255, std255) -> DataInfo:
    return DataInfo(name, num_classes, image_size, tuple(float(m) / 255 for m in mean255),
                    tuple(float(s) / 255 for s in std255), max(1, image_size // 8))


def _channel_stats(x: np.ndarray) -> tuple[tuple, tuple]:
    """Per-channel mean and std of NHWC uint8 images, in 0..255 units."""
    axes = tuple(range(x.ndim - 1))
    return tuple(x.mean(axes, dtype=np.float64).tolist()), tuple(x.std(axes, dtype=np.float64).tolist())


# ----------------------------------------------------------------------------------------------- arrays
def _load_cifar(name: str, data_dir: str, download: bool) -> dict:
    from torchvision import datasets  # imported lazily: only the cifar paths need it

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    out = {}
    for split, train in (("train", True), ("test", False)):
        try:  # URLError (no network) is an OSError; torchvision raises RuntimeError for missing files
            ds = cls(root=data_dir, train=train, download=download)
        except (urllib.error.URLError, OSError, RuntimeError) as e:
            reason = " ".join(str(e).split())  # keep the message on one line
            raise DataError(
                f"{name} not found under --data-dir {data_dir!r} and could not be downloaded ({reason}); put the "
                f"dataset there, or use --dataset path/to/file.npz (e.g. ../shared/data/images/{name}_partial.npz), "
                f"or --dataset synthetic") from e
        out[f"x_{split}"] = np.asarray(ds.data, dtype=np.uint8)
        out[f"y_{split}"] = np.asarray(ds.targets, dtype=np.int64)
    return out


def _load_imagenet16(data_dir: str, num_classes: int = 120) -> dict:
    root = Path(data_dir) / "ImageNet16"
    missing = [f for f in IMAGENET16_FILES if not (root / f).is_file()]
    if missing:
        raise DataError(f"ImageNet16 files missing in {root} ({', '.join(missing)}); download NB201's ImageNet16 "
                        f"(downsampled 16x16 ImageNet) and put train_data_batch_1..10 and val_data in "
                        f"<data_dir>/ImageNet16/")

    def read(files):
        xs, ys = [], []
        for f in files:
            with open(root / f, "rb") as fh:
                d = pickle.load(fh, encoding="latin1")
            labels = np.asarray(d["labels"], dtype=np.int64)
            keep = labels <= num_classes
            xs.append(np.asarray(d["data"], dtype=np.uint8)[keep].reshape(-1, 3, 16, 16).transpose(0, 2, 3, 1))
            ys.append(labels[keep] - 1)
        return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)

    x_train, y_train = read(IMAGENET16_FILES[:-1])
    x_test, y_test = read(IMAGENET16_FILES[-1:])
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _load_npz(path: str) -> tuple[dict, DataInfo]:
    if not Path(path).is_file():
        raise DataError(f"npz file not found: {path}")
    with np.load(path) as d:
        fine = "y_train" not in d.files and "y_train_fine" in d.files
        suffix = "_fine" if fine else ""
        keys = ("x_train", f"y_train{suffix}", "x_test", f"y_test{suffix}")
        absent = [k for k in keys if k not in d.files]
        if absent:
            raise DataError(f"{path} lacks keys {absent}; an npz dataset needs x_train, y_train, x_test, y_test")
        arrays = {k.replace("_fine", ""): d[k] for k in keys}
    for k in ("x_train", "x_test"):
        if arrays[k].dtype != np.uint8 or arrays[k].ndim != 4 or arrays[k].shape[-1] != 3:
            raise DataError(f"{path}: {k} must be uint8 NHWC with 3 channels, got {arrays[k].dtype} {arrays[k].shape}")
    for k in ("y_train", "y_test"):
        arrays[k] = arrays[k].astype(np.int64)
    num_classes = 100 if fine else int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    fname = Path(path).name.lower()
    if "cifar100" in fname:
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    elif "cifar10" in fname:
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        mean, std = _channel_stats(arrays["x_train"])
    return arrays, _info(path, num_classes, arrays["x_train"].shape[1], mean, std)


def make_synthetic(n_train: int, n_test: int, image_size: int = 32, num_classes: int = 10) -> dict:
    """Learnable toy images. Class templates = a shared smooth colour field + a class-specific smooth perturbation
    (bilinear upsampling of 4x4 grids); an image = its template circularly shifted by up to image_size/4 pixels
    + Gaussian noise (std 60). A linear model reaches ~45% (8 px) to ~90% (32 px) test accuracy; chance is 10%."""
    rng = np.random.default_rng(0)  # own generator: independent of (and harmless to) any global seed
    k = 4
    grid = rng.uniform(64, 192, size=(1, k, k, 3)) + rng.uniform(-50, 50, size=(num_classes, k, k, 3))
    pos = np.linspace(0, k - 1, image_size)
    up = np.stack([np.interp(pos, np.arange(k), np.eye(k)[j]) for j in range(k)], axis=1)  # (S, k)
    templates = np.einsum("sa,cabz,tb->cstz", up, grid, up)  # (classes, S, S, 3)
    max_shift = max(1, image_size // 4)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
        dy, dx = rng.integers(-max_shift, max_shift + 1, size=(2, n))
        rows = (np.arange(image_size)[None] - dy[:, None]) % image_size
        cols = (np.arange(image_size)[None] - dx[:, None]) % image_size
        imgs = templates[y[:, None, None], rows[:, :, None], cols[:, None, :]]
        imgs = imgs + rng.normal(0, 60, size=imgs.shape)
        out[f"x_{split}"], out[f"y_{split}"] = np.clip(np.rint(imgs), 0, 255).astype(np.uint8), y
    return out


def load_arrays(dataset: str, data_dir: str = "./data", download: bool = True,
                synthetic_size: tuple = (2048, 512), image_size: int = 32) -> tuple[dict, DataInfo]:
    """Returns ({'x_train','y_train','x_test','y_test'} as numpy uint8 NHWC / int64, DataInfo)."""
    if dataset.endswith(".npz"):
        return _load_npz(dataset)
    if dataset in ("cifar10", "cifar100"):
        arrays = _load_cifar(dataset, data_dir, download)
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if dataset == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
        return arrays, _info(dataset, 10 if dataset == "cifar10" else 100, 32, mean, std)
    if dataset == "imagenet16-120":
        return _load_imagenet16(data_dir), _info(dataset, 120, 16, IMAGENET16_MEAN, IMAGENET16_STD)
    if dataset == "synthetic":
        arrays = make_synthetic(*synthetic_size, image_size=image_size)
        mean, std = _channel_stats(arrays["x_train"])
        return arrays, _info(dataset, 10, image_size, mean, std)
    raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)} or a path ending in .npz")


# ---------------------------------------------------------------------------------------------- loaders
class ArrayDataset(Dataset):
    """In-memory images as a uint8 NCHW tensor + int64 labels; `__getitems__` serves a whole batch at once."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        if x.ndim != 4 or len(x) != len(y):
            raise DataError(f"ArrayDataset needs NHWC images and one label each, got {x.shape} and {y.shape}")
        self.x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.uint8))
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.x[idx], self.y[idx]


def _identity(batch):
    return batch


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, drop_last: bool = False,
                sampler=None) -> DataLoader:
    """Batched loader (batch arrives as (x_uint8 NCHW, y int64)); shuffling from a generator seeded with `seed`."""
    if sampler is None and shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=0,
                      collate_fn=_identity)


class Augment:
    """Batch transform on uint8 NCHW tensors (on any device) -> normalised float32 NCHW. train: random crop with
    zero padding `crop_pad` and horizontal flip (one gather), then cutout if `cutout` > 0. Eval: normalise only."""

    def __init__(self, info: DataInfo, train: bool, cutout: int = 0, generator: torch.Generator | None = None):
        self.train, self.pad, self.cutout, self.generator = train, info.crop_pad, cutout, generator
        self.mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)

    def _randint(self, high: int, size: tuple, device) -> torch.Tensor:  # drawn on CPU so runs are reproducible
        return torch.randint(0, high, size, generator=self.generator).to(device)

    def _crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        p = self.pad  # 0: flip only
        padded = F.pad(x, (p, p, p, p)).permute(0, 2, 3, 1)  # N, H+2p, W+2p, C
        off = self._randint(2 * p + 1, (2, n), x.device)
        flip = self._randint(2, (n,), x.device).bool()
        ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        rows = off[0, :, None] + ar_h
        cols = off[1, :, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)
        batch = torch.arange(n, device=x.device)[:, None, None]
        return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    def _cutout(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        half = self.cutout // 2
        cy, cx = self._randint(h, (n, 1), x.device), self._randint(w, (n, 1), x.device)
        ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        in_rows = (ys >= (cy - half).clamp(0, h)) & (ys < (cy + half).clamp(0, h))
        in_cols = (xs >= (cx - half).clamp(0, w)) & (xs < (cx + half).clamp(0, w))
        hole = in_rows[:, :, None] & in_cols[:, None, :]
        return x.masked_fill(hole[:, None], 0.0)

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = self._crop_flip(x_uint8) if self.train else x_uint8
        x = (x.to(torch.float32) / 255 - self.mean.to(x.device)) / self.std.to(x.device)
        return self._cutout(x) if self.train and self.cutout > 0 else x


# -------------------------------------------------------------------------------------------- arguments
def add_common_args(p) -> None:
    """The flags every search script has and none tunes: data, split, oracle table, seed, device, output."""
    p.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | imagenet16-120 | synthetic | path/to/file.npz")
    p.add_argument("--data-dir", default="./data", help="where datasets are (or are downloaded to)")
    p.add_argument("--train-portion", type=float, default=0.5, help="bilevel: fraction of the training set for the weights")
    p.add_argument("--split-file", default=None, help="bilevel: NB201 split file instead of --train-portion: cifar-split.txt "
                   "(CIFAR-10 train/valid halves) or cifar100- / imagenet-16-120-test-split.txt (direct search: weights on "
                   "the whole training set, architecture on the test set's xvalid half)")
    p.add_argument("--train-subset", type=int, default=0, help="use only the first N training images (0 = all)")
    p.add_argument("--nb201-table", default=None, help="CSV with arch_str + accuracy columns: log the derived cell's benchmark accuracy")
    p.add_argument("--seed", type=int, default=2, help="random seed")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out-dir", default="runs", help="results go to OUT_DIR/RUN_NAME/")


def cli(main) -> None:
    """Run a search script's main(); bad input ends with one `error: ...` line and a non-zero exit."""
    import spaces  # imported here: spaces does not depend on data
    try:
        main()
    except (DataError, spaces.SpaceError, spaces.GenotypeError) as err:
        raise SystemExit(f"error: {err}") from None


# ----------------------------------------------------------------------------------------------- search
def read_split_file(path) -> dict[str, np.ndarray]:
    """Reads an NB201 split file (`{name: ["int", ["0", "5", ...]]}`, plain or .gz) into {name: int64 indices}."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt") as f:
            raw = json.load(f)
        return {k: np.asarray(v[1], dtype=np.int64) for k, v in raw.items()}
    except FileNotFoundError as e:
        raise DataError(f"split file not found: {path}") from e
    except (json.JSONDecodeError, AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path} is not an NB201 split file ({{name: ['int', [indices]]}}): {e}") from e


TEST_SPLIT_KEYS = ("xvalid", "xtest")  # NB201's halves of the test (validation) set: direct search on c100 / in16


def _check_indices(idx: np.ndarray, n: int, split_file, what: str) -> np.ndarray:
    if len(idx) and (idx.max() >= n or idx.min() < 0):
        raise DataError(f"{split_file} indexes up to {idx.max()} but the {what} has {n} images (the split file needs "
                        f"the full dataset; a partial .npz or --train-subset cannot use it)")
    return idx


def search_split(n_train: int, bilevel: bool, train_portion: float = 0.5, split_file: str | None = None,
                 split_keys=("train", "valid")) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the training set for (weight-step data, architecture-step data). Single-level (ERM): both are all
    indices. Bilevel: NB201's train/valid split file when given, else the first `train_portion` of the training set
    for the weights and the rest for the architecture (DARTS). (xvalid/xtest files: see `test_split`.)"""
    if not bilevel:
        return np.arange(n_train), np.arange(n_train)
    if split_file is not None:
        splits = read_split_file(split_file)
        if any(k not in splits for k in split_keys):
            raise DataError(f"{split_file} has keys {sorted(splits)}, not {list(split_keys)}")
        return tuple(_check_indices(splits[k], n_train, split_file, "training set") for k in split_keys[:2])
    split = int(np.floor(train_portion * n_train))
    if not 0 < split < n_train:
        raise DataError(f"train_portion {train_portion} of {n_train} images leaves one side of the split empty")
    return np.arange(split), np.arange(split, n_train)


def test_split(splits: dict, n_test: int, split_file) -> tuple[np.ndarray, np.ndarray]:
    """NB201 direct search: (architecture-step indices = `xvalid`, supernet-test indices = `xtest`) into the test set."""
    return tuple(_check_indices(splits[k], n_test, split_file, "test set") for k in TEST_SPLIT_KEYS)


class PairedBatches:
    """One epoch of (weight batch, architecture batch) pairs: iterates the weight loader once; the architecture
    loader's iterator lives across steps and epochs and is restarted only when exhausted."""

    # DEVIATION: DARTS, PC-DARTS, GAEA and NASP draw each architecture batch from a fresh iterator of a shuffled
    # loader (a random batch every step, with replacement across steps); one long-lived shuffled iterator gives
    # random batches too, without rebuilding the loader every step, and sweeps the data once per pass.

    def __init__(self, weight_loader, arch_loader):
        self.weight_loader, self.arch_loader = weight_loader, arch_loader
        self._arch_iter = None

    def __len__(self) -> int:
        return len(self.weight_loader)

    def _next_arch(self):
        if self._arch_iter is not None:
            try:
                return next(self._arch_iter)
            except StopIteration:
                pass
        self._arch_iter = iter(self.arch_loader)
        return next(self._arch_iter)

    def __iter__(self):
        for weight_batch in self.weight_loader:
            yield weight_batch, self._next_arch()


def search_loaders(dataset: str, data_dir: str, batch_size: int, bilevel: bool, seed: int,
                   train_portion: float = 0.5, split_file: str | None = None, train_subset: int = 0,
                   synthetic_size: tuple = (2048, 512), image_size: int = 32,
                   arch_batch_size: int | None = None) -> tuple[PairedBatches, DataLoader, DataInfo]:
    """Paired (weight, arch) batches over the search split, a test loader, and the DataInfo. A split file with
    xvalid/xtest keys selects NB201's direct-search protocol (see the module docstring)."""
    arrays, info = load_arrays(dataset, data_dir, synthetic_size=synthetic_size, image_size=image_size)
    x, y = arrays["x_train"], arrays["y_train"]
    x_test, y_test = arrays["x_test"], arrays["y_test"]
    if train_subset > 0:
        x, y = x[:train_subset], y[:train_subset]
    splits = read_split_file(split_file) if bilevel and split_file is not None else {}
    if all(k in splits for k in TEST_SPLIT_KEYS):  # NB201 direct search (CIFAR-100, ImageNet16-120)
        a_idx, t_idx = test_split(splits, len(y_test), split_file)
        weight_ds, arch_ds = ArrayDataset(x, y), ArrayDataset(x_test[a_idx], y_test[a_idx])
        x_test, y_test = x_test[t_idx], y_test[t_idx]
    else:
        w_idx, a_idx = search_split(len(y), bilevel, train_portion, split_file)
        weight_ds = ArrayDataset(x[w_idx], y[w_idx])
        arch_ds = ArrayDataset(x[a_idx], y[a_idx]) if bilevel else weight_ds
    weight_loader = make_loader(weight_ds, batch_size, shuffle=True, seed=seed)
    arch_loader = make_loader(arch_ds, arch_batch_size or batch_size, shuffle=True, seed=seed + 1)
    test_loader = make_loader(ArrayDataset(x_test, y_test), batch_size, shuffle=False, seed=seed)
    return PairedBatches(weight_loader, arch_loader), test_loader, info


def load_table(path: str, key: str = "arch_str") -> dict[str, dict[str, float]]:
    """Reads a CSV (optionally .gz), e.g. nb201_oracle.csv.gz, into {row[key]: {numeric column: float}}."""
    if not Path(path).is_file():
        raise DataError(f"table not found: {path}")
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        reader = csv.DictReader(f)
        if key not in (reader.fieldnames or []):
            raise DataError(f"{path} has no column {key!r} (columns: {reader.fieldnames})")
        table = {}
        for row in reader:
            values = {}
            for col, v in row.items():
                try:
                    values[col] = float(v)
                except (TypeError, ValueError):  # text columns (arch strings) and empty cells
                    pass
            table[row[key]] = values
    return table


ORACLE_PREFIXES = (("cifar100", "c100"), ("cifar10", "c10"), ("imagenet16", "in16"))  # cifar100 tested first


def oracle_prefix(dataset: str) -> str | None:
    """The oracle table's column prefix for a dataset name or .npz path (c10 / c100 / in16), None if unknown."""
    name = Path(dataset).name.lower()
    return next((prefix for key, prefix in ORACLE_PREFIXES if key in name), None)


def oracle_metrics(table: dict | None, genotype, dataset: str) -> dict[str, float]:
    """The benchmark's numbers of a derived cell as `oracle_{column}`: first every column of the searched dataset
    (matched by whole `_` tokens, so c10 never matches c100), then the test columns of the others; `oracle_test` /
    `oracle_valid` repeat the searched dataset's 200-epoch accuracies. Empty without a table or for unknown cells."""
    row = (table or {}).get(str(genotype), {})
    prefix = oracle_prefix(dataset)
    mine = {k: v for k, v in row.items() if prefix in k.split("_")}
    out = {f"oracle_{k}": v for k, v in mine.items()}
    out.update({f"oracle_{k}": v for k, v in row.items() if "test" in k and k not in mine})
    for split in ("test", "valid"):
        if f"{prefix}_{split}_200" in row:
            out[f"oracle_{split}"] = row[f"{prefix}_{split}_200"]
    return out


@torch.no_grad()
def evaluate(model, loader, augment, device, *arch) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model(x, *arch)` over `loader` in eval mode (train mode afterwards)."""
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = augment(x.to(device)), y.to(device)
        logits = model(x, *arch)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    model.train()
    return loss / n, correct / n


# ---------------------------------------------------------------------------------------------- logging
def _jsonable(obj):
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    return str(obj)  # paths, dtypes, devices, ...


def _fmt(value) -> str:
    if isinstance(value, (str, dict, list, tuple)):
        return str(value)
    return f"{float(value):.4g}"  # python, numpy and torch scalars


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class RunLogger:
    """runs/{run_name}/: args.json at creation, metrics.jsonl (one JSON object per line, flushed), and a one-line
    progress print per epoch with ETA. An existing run directory is never reused: a suffix _1, _2, ... is added."""

    def __init__(self, out_dir: str, run_name: str, args: dict):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for i in itertools.count():
            self.path = Path(out_dir) / (run_name if i == 0 else f"{run_name}_{i}")
            try:
                self.path.mkdir()
                break
            except FileExistsError:
                pass
        self.start = time.time()
        self.write_json("args.json", args)

    def log(self, metrics: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics, default=_jsonable) + "\n")
            f.flush()

    def progress(self, epoch: int, epochs: int, metrics: dict, keys: tuple) -> None:
        per_epoch = (time.time() - self.start) / max(epoch, 1)
        eta = datetime.timedelta(seconds=round(per_epoch * max(epochs - epoch, 0)))
        shown = [f"{k} {_fmt(metrics[k])}" for k in keys if k in metrics]
        print(" | ".join([f"epoch {epoch}/{epochs}", *shown, f"{per_epoch:.1f}s/epoch", f"ETA {eta}"]), flush=True)

    def write_json(self, name: str, obj) -> None:
        _atomic_write(self.path / name, json.dumps(obj, indent=2, default=_jsonable) + "\n")

    def write_text(self, name: str, text: str) -> None:
        _atomic_write(self.path / name, text)
