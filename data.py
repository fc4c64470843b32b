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
  holds train/valid, 25k + 25k indices into the CIFAR-10 training set.
- Search data (GAEA `train_utils.py`, DARTS `train_search.py`): single-level (ERM) draws weight and architecture
  batches from the whole training set; bilevel uses the first `train_portion` for weights, the rest for the
  architecture (or an NB201 split file). Both get train-time augmentation.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import gzip
import json
import math
import os
import pickle
import tempfile
import time
import urllib.error
import zipfile
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
    channels: int = 3  # input channels of the images: the stem of every network takes this many


def _info(name: str, num_classes: int, image_size: int, mean255, std255) -> DataInfo:
    return DataInfo(name, num_classes, image_size, tuple(float(m) / 255 for m in mean255),
                    tuple(float(s) / 255 for s in std255), max(1, image_size // 8), len(mean255))


def _channel_stats(x: np.ndarray) -> tuple[tuple, tuple]:
    """Per-channel mean and std of NHWC uint8 images, in 0..255 units."""
    axes = tuple(range(x.ndim - 1))
    return tuple(x.mean(axes, dtype=np.float64).tolist()), tuple(x.std(axes, dtype=np.float64).tolist())


# -------------------------------------------------------------------------------------- argument types
# argparse `type=` helpers: a bad value stops the parser with its usage and one "argument --x: ..." line.
def _parse_number(text: str, kind, test, need: str):
    try:
        value = kind(text) if text.isascii() else None
    except ValueError:
        value = None
    if value is None or (kind is float and not math.isfinite(value)) or not test(value):
        raise argparse.ArgumentTypeError(f"must be {need}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _parse_number(text, int, lambda v: v > 0, "an integer >= 1")


def int_at_least(low: int):
    """type= for integers >= low, e.g. int_at_least(2)."""
    def check(text: str) -> int:
        return _parse_number(text, int, lambda v: v >= low, f"an integer >= {low}")
    check.__name__ = f"int_at_least_{low}"
    return check


def nonneg_int(text: str) -> int:
    return _parse_number(text, int, lambda v: v >= 0, "an integer >= 0")


def seed(text: str) -> int:
    return _parse_number(text, int, lambda v: 0 <= v < 2 ** 32, "an integer in [0, 2**32)")


def positive_float(text: str) -> float:
    return _parse_number(text, float, lambda v: v > 0, "a finite number > 0")


def nonneg_float(text: str) -> float:
    return _parse_number(text, float, lambda v: v >= 0, "a finite number >= 0")


def unit_interval(text: str) -> float:
    """Open (0, 1), e.g. --train-portion (both sides of the split non-empty)."""
    return _parse_number(text, float, lambda v: 0 < v < 1, "a number in (0, 1)")


def fraction(text: str) -> float:
    """Half-open [0, 1), e.g. Adam betas, momentum, drop-path probability, label smoothing."""
    return _parse_number(text, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def run_name(text: str) -> str:
    """One directory name under --out-dir: no path separators, not empty, not '.' or '..'."""
    if text in ("", ".", "..") or any(c in text for c in "/\\\0"):
        raise argparse.ArgumentTypeError(f"must be a plain directory name (no '/', not '.' or '..'), got {text!r}")
    return text


def out_dir(text: str) -> str:
    """A directory that exists or can be created: no existing file on the path, and writable."""
    path = Path(text or ".").absolute()
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text!r}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise argparse.ArgumentTypeError(f"{text!r}: {parent} is not writable")
            break
    return text


def resolve_device(name: str) -> torch.device:
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:N' or 'mps' -> a torch.device that exists here;
    DataError (one line) otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as err:
        raise DataError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise DataError(f"device {name!r}: no CUDA device is available here; use --device cpu (or auto)")
        if device.index is not None and device.index >= n:
            raise DataError(f"device {name!r}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
        return device
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    raise DataError(f"device {name!r} is not available here; use auto, cpu, cuda or cuda:N")


def device_name(text: str) -> str:
    """argparse type for --device: the name, checked with resolve_device (resolved again in main)."""
    try:
        resolve_device(text)
    except DataError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return text


def check_search_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Cross-flag checks every search command line shares; parser.error prints usage + one line (exit 2)."""
    if args.nb201_table and args.space != "nb201":
        parser.error("--nb201-table needs --space nb201")
    if args.space == "darts" and args.layers is not None and args.layers < 3:
        parser.error(f"--layers {args.layers}: the DARTS space needs >= 3 cells (reduction cells sit at layers//3 "
                     f"and 2*layers//3, so fewer leave no normal cell to search)")
    bilevel = args.bilevel if hasattr(args, "bilevel") else not args.single_level
    if not bilevel and (args.split_file or args.train_portion != 0.5):
        how = "need --bilevel" if hasattr(args, "bilevel") else "do nothing with --single-level"
        parser.error(f"--split-file / --train-portion choose the bilevel split: they {how}")


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


CHANNELS = (1, 3)  # recognised image channels: grayscale and RGB
MIN_IMAGE_SIZE = 8  # smaller images leave 1x1 maps after two reductions, where batch norm breaks


def _to_nhwc(x: np.ndarray, where: str) -> np.ndarray:
    """(N, H, W) grayscale, (N, H, W, C) or (N, C, H, W) with C in CHANNELS -> (N, H, W, C). A 4-D shape that reads
    both ways (e.g. (N, 3, 3, 3)) is channel-last, unless only the channel-first reading gives square images."""
    if x.ndim == 3:
        return x[..., None]
    if x.ndim == 4:
        last, first = x.shape[3] in CHANNELS, x.shape[1] in CHANNELS
        if first and (not last or (x.shape[2] == x.shape[3] and x.shape[1] != x.shape[2])):
            return x.transpose(0, 2, 3, 1)
        if last:
            return x
    raise DataError(f"{where} has shape {x.shape}; recognised image layouts: (N, H, W) grayscale, (N, H, W, C) or "
                    f"(N, C, H, W) with C = 1 or 3")


def _to_uint8(xs: list, where: str) -> list:
    """Pixels as uint8: integers must lie in 0..255; floats in [0, 1] are scaled by 255 (both arrays decide
    together), floats in [0, 255] are rounded; anything else (NaN, normalised data) is refused."""
    kinds = {x.dtype.kind for x in xs}
    if kinds <= {"u", "i", "f"} and not (kinds == {"u"} and all(x.dtype == np.uint8 for x in xs)):
        if "f" in kinds and not all(np.isfinite(x).all() for x in xs):
            raise DataError(f"{where}: images contain NaN or infinite pixels")
        lo, hi = min(float(x.min()) for x in xs), max(float(x.max()) for x in xs)
        if lo < 0 or hi > 255:
            raise DataError(f"{where}: pixel values span [{lo:.4g}, {hi:.4g}]; store raw pixels (uint8 0..255, or "
                            f"floats in [0, 1] or [0, 255]), not normalised ones")
        scale = 255.0 if "f" in kinds and hi <= 1.0 else 1.0
        return [np.rint(x * scale).astype(np.uint8) if x.dtype.kind == "f" else x.astype(np.uint8) for x in xs]
    if kinds - {"u", "i", "f"}:
        raise DataError(f"{where}: pixels must be numbers (uint8, integers 0..255, floats), got "
                        f"{', '.join(sorted(str(x.dtype) for x in xs))}")
    return xs


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    """One non-negative integer label per image: shape (N,) or (N, 1); integer dtype, or floats with integer values."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = " (one-hot? store the argmax)" if y.ndim == 2 else ""
        raise DataError(f"{where} must hold one integer label per image, shape (N,), got {y.shape}{hint}")
    if len(y) != n:
        raise DataError(f"{where} has {len(y)} labels for {n} images")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise DataError(f"{where} has non-integer labels (e.g. {y[np.isfinite(y) & (y != np.round(y))][:1].tolist() or 'NaN'})")
    if y.dtype.kind not in "uif":
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= 2 ** 31):
        raise DataError(f"{where}: labels must be integers in 0..K-1, got values from {y.min()} to {y.max()}")
    return y.astype(np.int64)


def check_arrays(arrays: dict, where: str, num_classes: int | None = None) -> tuple[dict, int]:
    """Validates and normalises {'x_train','y_train','x_test','y_test'} for every dataset: uint8 NHWC images of one
    square size >= MIN_IMAGE_SIZE (layouts and dtypes as _to_nhwc / _to_uint8 accept), one label each, labels
    0..K-1. K = num_classes when given, else max(y_train) + 1 with every class present in y_train (a stray label
    would otherwise build a network with thousands of empty classes). Returns (arrays, K)."""
    out = {}
    for split in ("train", "test"):
        x, y = np.asarray(arrays[f"x_{split}"]), np.asarray(arrays[f"y_{split}"])
        if x.size == 0:
            raise DataError(f"{where}: x_{split} is empty (shape {x.shape})")
        out[f"x_{split}"] = _to_nhwc(x, f"{where}: x_{split}")
        out[f"y_{split}"] = _labels(y, len(x), f"{where}: y_{split}")
    out["x_train"], out["x_test"] = _to_uint8([out["x_train"], out["x_test"]], where)
    shape, test_shape = out["x_train"].shape[1:], out["x_test"].shape[1:]
    if shape != test_shape:
        raise DataError(f"{where}: train images are {shape} (H, W, C), test images {test_shape}; they must match")
    if shape[0] != shape[1] or shape[0] < MIN_IMAGE_SIZE:
        raise DataError(f"{where}: images are {shape[0]}x{shape[1]} px; square images of >= {MIN_IMAGE_SIZE} px needed")
    present = np.unique(out["y_train"])
    if num_classes is None:
        num_classes = int(present[-1]) + 1
        if len(present) != num_classes:
            raise DataError(f"{where}: y_train labels go up to {num_classes - 1} but only {len(present)} of the "
                            f"classes 0..{num_classes - 1} occur; labels must be 0..K-1 with every class present")
    top = max(int(present[-1]), int(out["y_test"].max()))
    if top >= num_classes:
        raise DataError(f"{where}: label {top} does not exist (y_train has classes 0..{num_classes - 1})")
    if out["x_train"].min() == out["x_train"].max():
        raise DataError(f"{where}: every training pixel is {out['x_train'].flat[0]}; there is nothing to learn")
    return out, num_classes


def _load_npz(path: str) -> tuple[dict, DataInfo]:
    if not Path(path).is_file():
        raise DataError(f"npz file not found: {path}" + (" is a directory" if Path(path).is_dir() else ""))
    try:
        d = np.load(path)
        if not isinstance(d, np.lib.npyio.NpzFile):  # a .npy array saved under an .npz name
            raise DataError(f"{path} is a single .npy array, not an .npz with x_train, y_train, x_test, y_test")
        with d:
            fine = "y_train" not in d.files and "y_train_fine" in d.files
            suffix = "_fine" if fine else ""
            keys = ("x_train", f"y_train{suffix}", "x_test", f"y_test{suffix}")
            absent = [k for k in keys if k not in d.files]
            if absent:
                raise DataError(f"{path} lacks keys {absent}; an npz dataset needs x_train, y_train, x_test, y_test")
            arrays = {k.replace("_fine", ""): d[k] for k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        raise DataError(f"{path} is not a readable .npz of numeric arrays ({type(err).__name__}: "
                        f"{' '.join(str(err).split())[:120]})") from err
    arrays, num_classes = check_arrays(arrays, path, 100 if fine else None)
    fname, channels = Path(path).name.lower(), arrays["x_train"].shape[-1]
    if "cifar100" in fname and channels == 3:
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    elif "cifar10" in fname and channels == 3:
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        mean, std = _channel_stats(arrays["x_train"])
        std = tuple(max(s, 1.0) for s in std)  # a constant channel: no division by zero
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
        arrays, k = check_arrays(_load_cifar(dataset, data_dir, download), dataset, 10 if dataset == "cifar10" else 100)
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if dataset == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
        return arrays, _info(dataset, k, 32, mean, std)
    if dataset == "imagenet16-120":
        arrays, k = check_arrays(_load_imagenet16(data_dir), dataset, 120)
        return arrays, _info(dataset, k, 16, IMAGENET16_MEAN, IMAGENET16_STD)
    if dataset == "synthetic":
        arrays, _ = check_arrays(make_synthetic(*synthetic_size, image_size=image_size), dataset, 10)
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
        # a plain NCHW copy: the channels-last view (also with 1 channel, where .contiguous() keeps its strides) made
        # CPU conv backward corrupt memory at 64 px (torch 2.x, FactorizedReduce's strided 1x1 convs)
        out = padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        return out.clone(memory_format=torch.contiguous_format)

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


# ----------------------------------------------------------------------------------------------- search
def _split_index(i) -> int:
    if isinstance(i, bool) or not (isinstance(i, int) or (isinstance(i, str) and i.isascii() and i.isdigit())):
        raise ValueError(f"index {i!r} is not a non-negative integer")
    return int(i)


def read_split_file(path) -> dict[str, np.ndarray]:
    """Reads an NB201 split file (`{name: ["int", ["0", "5", ...]]}`, plain or .gz) into {name: int64 indices}."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt") as f:
            raw = json.load(f)
        return {k: np.asarray([_split_index(i) for i in v[1]], dtype=np.int64) for k, v in raw.items()}
    except FileNotFoundError as e:
        raise DataError(f"split file not found: {path}") from e
    except (json.JSONDecodeError, AttributeError, IndexError, KeyError, TypeError, ValueError, OSError, EOFError) as e:
        raise DataError(f"{path} is not an NB201 split file ({{name: ['int', [indices]]}}): {e}") from e


def search_split(n_train: int, bilevel: bool, train_portion: float = 0.5, split_file: str | None = None,
                 split_keys=("train", "valid")) -> tuple[np.ndarray, np.ndarray]:
    """Indices for (weight-step data, architecture-step data). Single-level (ERM): both are all indices.
    Bilevel: NB201's split file when given (indices into the full training set), else the first `train_portion`
    of the training set for the weights and the rest for the architecture (DARTS)."""
    if not bilevel:
        return np.arange(n_train), np.arange(n_train)
    if split_file is not None:
        splits = read_split_file(split_file)
        if any(k not in splits for k in split_keys):
            raise DataError(f"{split_file} has keys {sorted(splits)}, not {list(split_keys)}")
        w_idx, a_idx = splits[split_keys[0]], splits[split_keys[1]]
        if min(w_idx.size, a_idx.size) == 0 or min(w_idx.min(), a_idx.min()) < 0:
            raise DataError(f"{split_file}: split {list(split_keys)} must be non-empty lists of indices >= 0")
        if max(w_idx.max(), a_idx.max()) >= n_train:
            raise DataError(f"{split_file} indexes up to {max(w_idx.max(), a_idx.max())} but the training set has "
                            f"{n_train} images (it needs the full dataset, without --train-subset)")
        return w_idx, a_idx
    split = int(np.floor(train_portion * n_train))
    if not 0 < split < n_train:
        raise DataError(f"train_portion {train_portion} of {n_train} images leaves one side of the split empty")
    return np.arange(split), np.arange(split, n_train)


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


def take_subset(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n training images (--train-subset; 0 = all); DataError when n exceeds the data."""
    if n > len(y):
        raise DataError(f"--train-subset {n} is larger than the training set ({len(y)} images)")
    return (x[:n], y[:n]) if n > 0 else (x, y)


def search_loaders(dataset: str, data_dir: str, batch_size: int, bilevel: bool, seed: int,
                   train_portion: float = 0.5, split_file: str | None = None, train_subset: int = 0,
                   synthetic_size: tuple = (2048, 512), image_size: int = 32,
                   arch_batch_size: int | None = None) -> tuple[PairedBatches, DataLoader, DataInfo]:
    """Paired (weight, arch) batches over the search split, a test loader, and the DataInfo."""
    arrays, info = load_arrays(dataset, data_dir, synthetic_size=synthetic_size, image_size=image_size)
    x, y = take_subset(arrays["x_train"], arrays["y_train"], train_subset)
    w_idx, a_idx = search_split(len(y), bilevel, train_portion, split_file)
    weight_ds = ArrayDataset(x[w_idx], y[w_idx])
    arch_ds = ArrayDataset(x[a_idx], y[a_idx]) if bilevel else weight_ds
    weight_loader = make_loader(weight_ds, batch_size, shuffle=True, seed=seed)
    arch_loader = make_loader(arch_ds, arch_batch_size or batch_size, shuffle=True, seed=seed + 1)
    test_loader = make_loader(ArrayDataset(arrays["x_test"], arrays["y_test"]), batch_size, shuffle=False, seed=seed)
    return PairedBatches(weight_loader, arch_loader), test_loader, info


def load_table(path: str, key: str = "arch_str") -> dict[str, dict[str, float]]:
    """Reads a CSV (optionally .gz), e.g. nb201_oracle.csv.gz, into {row[key]: {numeric column: float}}."""
    if not Path(path).is_file():
        raise DataError(f"table not found: {path}")
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if key not in (reader.fieldnames or []):
                raise DataError(f"{path} is not a CSV with a column {key!r} (header: {reader.fieldnames})")
            table = {}
            for row in reader:
                values = {}
                for col, v in row.items():
                    try:
                        values[col] = float(v)
                    except (TypeError, ValueError):  # text columns (arch strings) and empty cells
                        pass
                table[row[key]] = values
    except (UnicodeDecodeError, csv.Error, OSError, EOFError) as err:  # binary, not UTF-8, bad gzip, NUL bytes
        raise DataError(f"{path} is not a readable UTF-8 CSV ({type(err).__name__}: {' '.join(str(err).split())})") from err
    if not table:
        raise DataError(f"{path} has a header but no rows")
    if key == "arch_str" and not all(isinstance(k, str) and k.startswith("|") and "~" in k for k in table):
        raise DataError(f"{path}: column arch_str must hold NB201 arch strings ('|op~0|+|op~0|op~1|+...')")
    return table


# ---------------------------------------------------------------------------------------------- logging
def _jsonable(obj):
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    return str(obj)  # paths, dtypes, devices, ...


def _fmt(value) -> str:
    if isinstance(value, (str, dict, list, tuple)):
        return str(value)
    return f"{float(value):.4g}"  # python, numpy and torch scalars


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _atomic_write(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file. mkstemp creates it with
    mode 0600; it gets the mode a plain open() would give (0666 minus the umask, usually 0644)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        os.fchmod(f.fileno(), 0o666 & ~_umask())
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
