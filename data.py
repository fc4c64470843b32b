"""data.py -- what every nasref command line shares and none tunes: the data (Part I) and the running of a job (Part II).

Contents (skip to the part you need):
  Part I -- data
    I.1  conventions and `DataInfo` (below)
    I.2  arrays and validation: CIFAR-10/100, ImageNet16-120, .npz files, synthetic images; `check_arrays`
    I.3  loaders: `ArrayDataset`, the resumable `SeededSampler`, `make_loader`, batch augmentation `Augment`
    I.4  search splits and paired (weight, architecture) batches: NB201 split files, `PairedBatches`, `search_loaders`
    I.5  ImageNet search subsets (PC-DARTS' protocol): per-class subsets, ImageFolder images, `imagenet_search_loaders`
    I.6  benchmark tables and oracle look-ups: `load_table`, `oracle_metrics`
    I.7  NAS-Bench-101 without TensorFlow: TFRecord reader (CRC-32C), ModelMetrics decoder, cache, `nb101_metrics`
    I.8  word-level language-model corpora (PTB, WikiText-2): vocabulary, `batchify`, BPTT windows
    I.9  inpainting (ASNG-NAS): image sets, masks, PSNR / SSIM
  Part II -- running a job
    II.1 command-line types (`type=` helpers) and cross-flag checks, the run flags (`add_run_args`)
    II.2 run directory and logs: one atomic writer, the run directory (created, reused when it holds no result,
         locked against a second process), metrics.jsonl
    II.3 checkpoint / resume: RNG states, capture / restore of live objects, atomic checkpoints, settings check
    II.4 the run object `Run` (every search and train_eval.py): resume, in-epoch progress, TensorBoard, the stop on
         non-finite values, Ctrl-C / SIGTERM with the resume command
    II.5 torchrun helpers: process group, DDP, gradient and metric averaging, cross-rank checks
    II.6 `evaluate`: loss and accuracy of a (super)network over a loader
    II.7 the recurrent-cell search run shared by darts.py and nasp.py (`LMSearch`, the language-model flags)
    II.8 `cli`: a command line's main() with one-line errors

I.1 Conventions. Every dataset is held in memory as uint8 NHWC numpy arrays and served as uint8 NCHW batches;
`Augment` does crop/flip/normalise/cutout on whole batches (on any device), so loading is never the bottleneck.
Sources: NAS-Bench-201 / AutoDL `get_dataset_with_transform.py`, DARTS `utils.py`.
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

import argparse
import contextlib
import csv
import datetime
import gzip
import itertools
import json
import math
import os
import pickle
import random
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

DATASETS = ("cifar10", "cifar100", "imagenet16-120", "synthetic")  # plus any path ending in .npz
CIFAR10_MEAN, CIFAR10_STD = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)
CIFAR100_MEAN, CIFAR100_STD = (129.3, 124.1, 112.4), (68.2, 65.4, 70.4)
IMAGENET16_MEAN, IMAGENET16_STD = (122.68, 116.66, 104.01), (63.22, 61.26, 65.09)
IMAGENET16_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11)) + ("val_data",)


# ======================================== PART I -- DATA ========================================


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
    loader_augments: bool = False  # ImageFolder data: crop and flip happen in the loader, Augment only normalises
    channels: int = 3  # input channels of the images: the stem of every network takes this many


def _info(name: str, num_classes: int, image_size: int, mean255, std255) -> DataInfo:
    return DataInfo(name, num_classes, image_size, tuple(float(m) / 255 for m in mean255),
                    tuple(float(s) / 255 for s in std255), max(1, image_size // 8), channels=len(mean255))


def _channel_stats(x: np.ndarray) -> tuple[tuple, tuple]:
    """Per-channel mean and std of NHWC uint8 images, in 0..255 units."""
    axes = tuple(range(x.ndim - 1))
    return tuple(x.mean(axes, dtype=np.float64).tolist()), tuple(x.std(axes, dtype=np.float64).tolist())


# ---------------------------------------------------------------------------------- I.2 arrays and validation
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
MAX_IMAGE_SIZE = 256  # arrays are held in memory and trained at full size: a 1000 px set would need ~8.5 GB per
# 2,000 images before the first step (ImageNet-size images go through an ImageFolder loader, --dataset imagenet)


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
    0..K-1. K = num_classes when given, else max(y_train) + 1, and at least half of the classes 0..K-1 must occur in
    y_train (a subset may miss a few; a stray label would build a network of thousands of empty classes).
    Returns (arrays, K)."""
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
    if shape[0] != shape[1] or not MIN_IMAGE_SIZE <= shape[0] <= MAX_IMAGE_SIZE:
        raise DataError(f"{where}: images are {shape[0]}x{shape[1]} px; square images of {MIN_IMAGE_SIZE} to "
                        f"{MAX_IMAGE_SIZE} px needed (resize larger ones first)")
    present = np.unique(out["y_train"])
    if len(present) < 2:
        raise DataError(f"{where}: every training label is {present[0]}; classification needs >= 2 classes")
    if num_classes is None:
        # a small subset may miss a class or two; a stray label (100000 among 0..9) leaves most classes empty
        num_classes = int(present[-1]) + 1
        if 2 * len(present) < num_classes:
            raise DataError(f"{where}: labels go up to {num_classes - 1} but only {len(present)} of the classes "
                            f"0..{num_classes - 1} occur; labels must be 0..K-1 with most classes present")
    top = max(int(present[-1]), int(out["y_test"].max()))
    if top >= num_classes:
        raise DataError(f"{where}: label {top} does not exist (the dataset has classes 0..{num_classes - 1})")
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


# ------------------------------------------------------------------------ I.3 loaders, SeededSampler, Augment
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


class SeededSampler(torch.utils.data.Sampler):
    """Shuffled (or ordered) indices from an own generator, resumable mid-pass: `state_dict()` holds the generator
    state at the start of the current pass and how many indices of it were served, so a restored sampler serves the
    rest of that very permutation, then continues as the uninterrupted one would. With `world_size` > 1 each rank
    serves its shard `perm[rank::world_size]` of one permutation shared by all ranks (padded by wrapping around, as
    DistributedSampler, so every rank has the same number of indices)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.n, self.shuffle, self.rank, self.world = n, shuffle, rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self._pass_start, self._served, self._skip = None, 0, 0

    def __len__(self) -> int:
        return -(-self.n // self.world)

    def __iter__(self):
        self._pass_start, skip, self._skip = self.generator.get_state(), self._skip, 0
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        if self.world > 1:
            order = torch.cat([order, order[: len(self) * self.world - self.n]])[self.rank::self.world]
        self._served = skip
        for i in order[skip:].tolist():
            self._served += 1
            yield i
        self._pass_start = None

    def state_dict(self) -> dict:
        if self._pass_start is None:  # between passes
            return {"generator": self.generator.get_state(), "served": 0}
        return {"generator": self._pass_start, "served": self._served}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._pass_start, self._skip = None, int(state["served"])


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, drop_last: bool = False,
                sampler=None, rank: int = 0, world: int = 1) -> DataLoader:
    """Batched loader (batch arrives as (x_uint8 NCHW, y int64)); shuffling by a resumable SeededSampler (this
    rank's shard of it under torchrun)."""
    if sampler is None and shuffle:
        sampler = SeededSampler(len(dataset), seed, rank=rank, world_size=world)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=0,
                      collate_fn=_identity)


class Augment:
    """Batch transform on uint8 NCHW tensors (on any device) -> normalised float32 NCHW. train: random crop with
    zero padding `crop_pad` and horizontal flip (one gather), then cutout if `cutout` > 0. Eval: normalise only.
    `shard=(rank, world)`: the batch is this rank's part of a global batch whose element world*i + rank it holds as
    element i (the interleaving of `SeededSampler`); the random numbers are drawn for the whole global batch from
    a generator seeded alike on every rank and this rank's rows kept, so N ranks augment exactly as one process."""

    def __init__(self, info: DataInfo, train: bool, cutout: int = 0, generator: torch.Generator | None = None,
                 shard: tuple[int, int] = (0, 1)):
        self.train, self.pad, self.cutout, self.generator = train, info.crop_pad, cutout, generator
        self.spatial, (self.rank, self.world) = train and not info.loader_augments, shard
        self.mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)

    def _randint(self, high: int, size: tuple, device, batch_dim: int = 0) -> torch.Tensor:
        """Drawn on CPU so runs are reproducible; under `shard`, for the global batch, this rank's rows kept."""
        if self.world == 1:
            return torch.randint(0, high, size, generator=self.generator).to(device)
        full = tuple(n * self.world if d == batch_dim else n for d, n in enumerate(size))
        draw = torch.randint(0, high, full, generator=self.generator)
        return draw[(slice(None),) * batch_dim + (slice(self.rank, None, self.world),)].to(device)

    def _crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        p = self.pad  # 0: flip only
        padded = F.pad(x, (p, p, p, p)).permute(0, 2, 3, 1)  # N, H+2p, W+2p, C
        off = self._randint(2 * p + 1, (2, n), x.device, batch_dim=1)
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
        x = self._crop_flip(x_uint8) if self.spatial else x_uint8
        x = (x.to(torch.float32) / 255 - self.mean.to(x.device)) / self.std.to(x.device)
        return self._cutout(x) if self.train and self.cutout > 0 else x


# ----------------------------------------------------------------------- I.4 search splits and paired batches
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


TEST_SPLIT_KEYS = ("xvalid", "xtest")  # NB201's halves of the test (validation) set: direct search on c100 / in16


def _check_indices(idx: np.ndarray, n: int, split_file, what: str) -> np.ndarray:
    if len(idx) == 0:
        raise DataError(f"{split_file}: a split for the {what} is empty")
    if idx.max() >= n or idx.min() < 0:
        raise DataError(f"{split_file} indexes up to {idx.max()} but the {what} has {n} images (the split file needs "
                        f"the full dataset; a partial .npz or --train-subset cannot use it)")
    return idx


def search_split(n_train: int, bilevel: bool, train_portion: float = 0.5, split_file: str | None = None,
                 split_keys=("train", "valid"), splits: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the training set for (weight-step data, architecture-step data). Single-level (ERM): both are all
    indices. Bilevel: NB201's train/valid split file when given, else the first `train_portion` of the training set
    for the weights and the rest for the architecture (DARTS). (xvalid/xtest files: see `test_split`.) `splits`: the
    split file's contents when the caller has read it already."""
    if not bilevel:
        return np.arange(n_train), np.arange(n_train)
    if split_file is not None:
        splits = read_split_file(split_file) if splits is None else splits
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
        for _ in range(3):  # the current pass; a restored pass may hold nothing more; then a fresh pass
            if self._arch_iter is not None:
                try:
                    return next(self._arch_iter)
                except StopIteration:
                    pass
            self._arch_iter = iter(self.arch_loader)
        raise DataError("the architecture split is empty")

    def __iter__(self):
        for weight_batch in self.weight_loader:
            yield weight_batch, self._next_arch()

    def state_dict(self) -> dict:
        """Where both samplers stand (the architecture iterator's position inside its pass included)."""
        return {"weight": self.weight_loader.sampler.state_dict(), "arch": self.arch_loader.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.weight_loader.sampler.load_state_dict(state["weight"])
        self.arch_loader.sampler.load_state_dict(state["arch"])
        self._arch_iter = None  # the next architecture batch comes from the restored pass


def take_subset(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n training images (--train-subset; 0 = all); DataError when n exceeds the data."""
    if n > len(y):
        raise DataError(f"--train-subset {n} is larger than the training set ({len(y)} images)")
    return (x[:n], y[:n]) if n > 0 else (x, y)


def search_loaders(dataset: str, data_dir: str, batch_size: int, bilevel: bool, seed: int,
                   train_portion: float = 0.5, split_file: str | None = None, train_subset: int = 0,
                   rank: int = 0, world: int = 1) -> tuple[PairedBatches, DataLoader, DataInfo]:
    """Paired (weight, arch) batches over the search split, a test loader, and the DataInfo. A split file with
    xvalid/xtest keys selects NB201's direct-search protocol (see the module docstring). Under torchrun (`world` > 1)
    batch_size is per rank and both samplers serve this rank's shard of one shared permutation."""
    arrays, info = load_arrays(dataset, data_dir)
    x, y = take_subset(arrays["x_train"], arrays["y_train"], train_subset)
    x_test, y_test = arrays["x_test"], arrays["y_test"]
    splits = read_split_file(split_file) if bilevel and split_file is not None else {}
    if all(k in splits for k in TEST_SPLIT_KEYS):  # NB201 direct search (CIFAR-100, ImageNet16-120)
        a_idx, t_idx = test_split(splits, len(y_test), split_file)
        weight_ds, arch_ds = ArrayDataset(x, y), ArrayDataset(x_test[a_idx], y_test[a_idx])
        x_test, y_test = x_test[t_idx], y_test[t_idx]
    else:
        w_idx, a_idx = search_split(len(y), bilevel, train_portion, split_file, splits=splits or None)
        weight_ds = ArrayDataset(x[w_idx], y[w_idx])
        arch_ds = ArrayDataset(x[a_idx], y[a_idx]) if bilevel else weight_ds
    weight_loader = make_loader(weight_ds, batch_size, shuffle=True, seed=seed, rank=rank, world=world)
    arch_loader = make_loader(arch_ds, batch_size, shuffle=True, seed=seed + 1, rank=rank, world=world)
    test_loader = make_loader(ArrayDataset(x_test, y_test), batch_size, shuffle=False, seed=seed)
    return PairedBatches(weight_loader, arch_loader), test_loader, info


# -------------------------------------------------------------------------------- I.5 ImageNet search subsets
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_SUBSET_SEED = 0  # the per-class subsets do not change with a search's --seed


def per_class_subsets(targets, fractions=(0.1, 0.025), seed: int = IMAGENET_SUBSET_SEED) -> tuple[np.ndarray, ...]:
    """Disjoint per-class random subsets of a labelled set (PC-DARTS' ImageNet search: 10% of every class for the
    weights, 2.5% for the architecture). For each class in label order, the class's indices are permuted by one
    numpy Generator(seed) and cut into the first max(1, round(f0 * n_c)), the next max(1, round(f1 * n_c)), ...
    Returns sorted int64 index arrays, one per fraction."""
    targets = np.asarray(targets, dtype=np.int64)
    if not fractions or any(f <= 0 for f in fractions) or sum(fractions) > 1:
        raise DataError(f"subset fractions {tuple(fractions)} must be > 0 and sum to at most 1")
    rng = np.random.default_rng(seed)
    order = np.argsort(targets, kind="stable")
    classes, starts, counts = np.unique(targets[order], return_index=True, return_counts=True)
    out = [[] for _ in fractions]
    for c, start, n in zip(classes, starts, counts):
        sizes = [max(1, int(round(f * n))) for f in fractions]
        if sum(sizes) > n:
            raise DataError(f"class {c} has {n} images, too few for one image in each of {len(fractions)} subsets")
        perm = rng.permutation(order[start:start + n])
        cuts = np.cumsum([0, *sizes])
        for k in range(len(fractions)):
            out[k].append(perm[cuts[k]:cuts[k + 1]])
    return tuple(np.sort(np.concatenate(parts)) for parts in out)


def read_subset_file(path, samples: list, root) -> np.ndarray:
    """Indices of the images listed in a text file, one path per line relative to the ImageFolder root (e.g.
    `n01440764/n01440764_10026.JPEG`), into `samples` (ImageFolder.samples)."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    except FileNotFoundError as e:
        raise DataError(f"subset file not found: {path}") from e
    where = {Path(p).relative_to(root).as_posix(): i for i, (p, _) in enumerate(samples)}
    missing = [ln for ln in lines if ln not in where]
    if missing or not lines:
        raise DataError(f"{path}: {len(missing)} of {len(lines)} listed images are not in {root} (first: "
                        f"{missing[0] if missing else 'the file is empty'})")
    return np.asarray(sorted(where[ln] for ln in lines), dtype=np.int64)


class FolderImages(Dataset):
    """Some images of an ImageFolder (`samples`: (path, label) pairs) through a transform; picklable for workers."""

    def __init__(self, samples: list, transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from torchvision.datasets.folder import default_loader  # torchvision: only the ImageFolder path needs it
        path, label = self.samples[i]
        return self.transform(default_loader(path)), label


def imagenet_search_loaders(data_dir: str, batch_size: int, seed: int, workers: int = 8, rank: int = 0,
                            world: int = 1, fractions=(0.1, 0.025), subset_files=None, image_size: int = 224,
                            pin_memory: bool = False) -> tuple[PairedBatches, DataLoader, DataInfo]:
    """PC-DARTS' ImageNet search data, same return shape as `search_loaders`: paired (weight, arch) batches from two
    disjoint per-class subsets of DATA_DIR/train (an ImageFolder; `per_class_subsets`, or two `subset_files`), each
    with RandomResizedCrop(image_size) + horizontal flip, served as uint8 NCHW by `workers` processes per loader
    (Augment normalises them on the device); batch_size is per rank; and a loader over the architecture subset with
    Resize(256/224 x size) + CenterCrop(size) for the supernet's final evaluation."""
    from torchvision import datasets, transforms  # only the ImageFolder path needs it

    root = Path(data_dir) / "train"
    if not root.is_dir():
        raise DataError(f"--dataset imagenet needs an ImageFolder directory {root} (one sub-directory per class)")
    folder = datasets.ImageFolder(root)
    if subset_files is not None:
        w_idx, a_idx = (read_subset_file(f, folder.samples, root) for f in subset_files)
        if np.intersect1d(w_idx, a_idx).size:
            raise DataError(f"subset files {subset_files[0]} and {subset_files[1]} share images")
    else:
        w_idx, a_idx = per_class_subsets(folder.targets, fractions)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                   transforms.PILToTensor()])
    eval_tf = transforms.Compose([transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size),
                                  transforms.PILToTensor()])
    pick = lambda idx: [folder.samples[i] for i in idx]  # noqa: E731

    def loader(ds, sampler, stream):  # workers of each rank and loader get their own seeds for the random crops
        return DataLoader(ds, batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                          persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed + 1000 * stream))

    weights = loader(FolderImages(pick(w_idx), train_tf), SeededSampler(len(w_idx), seed, rank=rank, world_size=world), 2 * rank)
    arch = loader(FolderImages(pick(a_idx), train_tf), SeededSampler(len(a_idx), seed + 1, rank=rank, world_size=world), 2 * rank + 1)
    test = loader(FolderImages(pick(a_idx), eval_tf), None, 2 * world)
    info = DataInfo("imagenet", len(folder.classes), image_size, IMAGENET_MEAN, IMAGENET_STD, 0, loader_augments=True)
    return PairedBatches(weights, arch), test, info


# ------------------------------------------------------------------- I.6 benchmark tables and oracle look-ups
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



# ------------------------- I.7 NAS-Bench-101 without TensorFlow: TFRecord, ModelMetrics, cache, 1Shot1 regret
# Record layout (google-research/nasbench nasbench/api.py): each TFRecord record is the JSON list [module_hash,
# epochs, adjacency as a 0/1 string, ops joined by ',', base64 ModelMetrics]; one record per training repeat (3 per
# cell and budget); the final evaluation is evaluation_data[2]. ModelMetrics (nasbench/lib/model_metrics.proto):
# 1 evaluation_data (repeated message), 2 trainable_parameters (int32); EvaluationData: 1 current_epoch,
# 2 training_time, 3 train_accuracy, 4 validation_accuracy, 5 test_accuracy (doubles). Decoded by hand (no protobuf).
# TFRecord framing: uint64 length, masked CRC-32C of the length, data, masked CRC-32C of the data (little-endian).
# Best single-run errors per 1Shot1 space, automl/nasbench-1shot1 nasbench_analysis/search_spaces/search_space_{1,2,3}.py
# (test_min_error / valid_min_error); regret there = mean error over the 3 repeats minus these
# (experiments/analysis/experiment_database.py get_key_from_scalar_configs). We log both in percent points.
NB1SHOT1_MIN_ERROR = {1: (0.05448716878890991, 0.049278855323791504), 2: (0.057592153549194336, 0.051582515239715576),
                      3: (0.05338543653488159, 0.04847759008407593)}  # (test, valid)
_CRC32C = np.arange(256, dtype=np.uint32)
for _ in range(8):  # reflected Castagnoli polynomial 0x82F63B78, one table entry per byte value
    _CRC32C = np.where(_CRC32C & 1, (_CRC32C >> 1) ^ np.uint32(0x82F63B78), _CRC32C >> 1).astype(np.uint32)


def masked_crc32c(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """TFRecord's masked CRC-32C of many byte ranges of `buf` (uint8) at once: one table step per byte position,
    vectorised over the ranges (longest first, so the ranges still running are a prefix)."""
    order = np.argsort(-lengths, kind="stable")
    s, n, crc = starts[order], lengths[order], np.full(len(starts), 0xFFFFFFFF, np.uint32)
    for j in range(int(n.max(initial=0))):
        k = int(np.searchsorted(-n, -j, side="left"))  # ranges longer than j
        crc[:k] = _CRC32C[(crc[:k] ^ buf[s[:k] + j]) & 0xFF] ^ (crc[:k] >> 8)
    crc = (crc ^ np.uint32(0xFFFFFFFF)).astype(np.uint64)
    out = np.empty_like(crc)
    out[order] = ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
    return out


def read_tfrecord(path) -> list[bytes]:
    """The records of a TFRecord file, every length and data CRC checked."""
    buf = np.fromfile(path, dtype=np.uint8)
    starts, pos = [], 0
    while pos < len(buf):
        if pos + 12 > len(buf):
            raise DataError(f"{path}: truncated TFRecord header at byte {pos}")
        n = int(buf[pos:pos + 8].view("<u8")[0])
        starts.append(pos)
        pos += 16 + n
        if pos > len(buf):
            raise DataError(f"{path}: truncated TFRecord at byte {starts[-1]} (record of {n} bytes)")
    starts = np.array(starts, dtype=np.int64)
    lengths = np.array([int(buf[p:p + 8].view("<u8")[0]) for p in starts], dtype=np.int64)
    stored = lambda at: buf[(at[:, None] + np.arange(4)).ravel()].reshape(-1, 4).view("<u4")[:, 0]  # noqa: E731
    for what, s, n, at in (("length", starts, np.full(len(starts), 8), starts + 8),
                           ("data", starts + 12, lengths, starts + 12 + lengths)):
        bad = np.flatnonzero(masked_crc32c(buf, s, n) != stored(at))
        if len(bad):
            raise DataError(f"{path}: {what} CRC mismatch in record {bad[0]} (byte {starts[bad[0]]}): corrupt file")
    return [buf[p + 12:p + 12 + n].tobytes() for p, n in zip(starts.tolist(), lengths.tolist())]


def _pb_fields(msg: bytes) -> dict[int, list]:
    """Protocol-buffer wire format -> {field number: [values]}: varint -> int, 64-bit -> float (double),
    length-delimited -> bytes, 32-bit -> bytes."""
    out, i = {}, 0

    def varint():
        nonlocal i
        v = shift = 0
        while True:
            b = msg[i]
            i += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return v
    try:
        while i < len(msg):
            key = varint()
            field, wire = key >> 3, key & 7
            if wire == 0:
                v = varint()
            elif wire == 1:
                v, i = float(np.frombuffer(msg, "<f8", 1, i)[0]), i + 8
            elif wire in (2, 5):
                n = varint() if wire == 2 else 4
                v, i = msg[i:i + n], i + n
            else:
                raise DataError(f"protobuf: unsupported wire type {wire}")
            out.setdefault(field, []).append(v)
    except (IndexError, ValueError) as err:  # ran past the end of the message
        raise DataError(f"protobuf: truncated message ({err})") from err
    if i != len(msg):
        raise DataError("protobuf: truncated message")
    return out


def nb101_record(record: bytes) -> tuple[str, int, dict]:
    """One NB101 TFRecord record -> (module_hash, epochs, {test, valid, train_time, params}) of its final evaluation."""
    import base64
    import binascii
    try:
        module_hash, epochs, _, _, raw = json.loads(record)
        metrics = _pb_fields(base64.b64decode(raw, validate=True))
        final = _pb_fields(metrics[1][2])
        return str(module_hash), int(epochs), {"test": final[5][-1], "valid": final[4][-1],
                                               "train_time": final[2][-1], "params": float(metrics[2][-1])}
    except (ValueError, TypeError, KeyError, IndexError, binascii.Error) as err:  # JSONDecodeError is a ValueError
        raise DataError(f"not an NB101 record ({type(err).__name__}: {err})") from err


class NB101Table:
    """NB101 at 108 epochs by module hash: mean over the repeats of test / validation accuracy and training time
    (fractions, seconds), parameters, number of repeats; NaN where the source has no such column."""
    COLS = ("test", "valid", "train_time", "params", "repeats")

    def __init__(self, hashes, cols: dict, source: str):
        order = np.argsort(hashes)
        self.hashes, self.source = np.asarray(hashes, dtype="S32")[order], source
        self.cols = {c: np.asarray(cols[c], dtype=np.float64)[order] for c in self.COLS}

    @classmethod
    def from_rows(cls, rows, source: str) -> "NB101Table":
        """rows: (module_hash, {column: value}) pairs, several per hash (the repeats) -> means per hash."""
        sums = {}
        for key, row in rows:
            acc = sums.setdefault(key, {c: [] for c in cls.COLS[:-1]})
            for c in acc:
                acc[c].append(row.get(c, math.nan))
        if not sums:
            raise DataError(f"{source} holds no 108-epoch NB101 rows")
        cols = {c: [float(np.mean(v[c])) for v in sums.values()] for c in cls.COLS[:-1]}
        return cls(list(sums), {**cols, "repeats": [len(v["test"]) for v in sums.values()]}, source)

    def __len__(self):
        return len(self.hashes)

    def get(self, key: str) -> dict | None:
        i = int(np.searchsorted(self.hashes, key.encode()))
        if i == len(self.hashes) or self.hashes[i] != key.encode():
            return None
        return {c: float(v[i]) for c, v in self.cols.items()}


def _nb101_cache_path(path: Path) -> Path:
    """`<file>.nasref.npz` beside the file, or under $XDG_CACHE_HOME/nasref (~/.cache/nasref) if that folder is
    read-only."""
    if os.access(path.parent, os.W_OK):
        return path.with_name(path.name + ".nasref.npz")
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nasref"
    return root / f"{path.name}.{path.stat().st_size}.nasref.npz"


def load_nb101(path: str) -> NB101Table:
    """An NB101 table from the official `nasbench_only108.tfrecord` / `nasbench_full.tfrecord` (108-epoch records
    kept; the first read writes a compact cache, see _nb101_cache_path, that later reads load in about a second),
    or from a CSV (.gz) keyed by `module_hash` or by `matrix` + `ops` columns (e.g. NASLib's sample), with
    accuracy columns `test_accuracy` and `validation_accuracy` / `val_accuracy` (percent values are scaled to
    fractions), and optional `params`, `training_time`."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"NB101 table not found: {path}")
    if ".csv" in p.suffixes:
        return _nb101_from_csv(p)
    cache, stamp = _nb101_cache_path(p), np.array([p.stat().st_size, p.stat().st_mtime_ns])
    if cache.is_file():
        with np.load(cache) as z:
            if np.array_equal(z["stamp"], stamp):
                return NB101Table(z["hashes"], {c: z[c] for c in NB101Table.COLS}, str(p))
    rows = [(h, r) for h, e, r in map(nb101_record, read_tfrecord(p)) if e == 108]
    table = NB101Table.from_rows(rows, str(p))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=f".{cache.name}.", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, stamp=stamp, hashes=table.hashes, **table.cols)
        os.replace(tmp, cache)
    except OSError as err:  # no writable cache folder: the table is still good, the next read is slow again
        warnings.warn(f"could not write the NB101 cache {cache}: {err}")
    return table


def _nb101_from_csv(p: Path) -> NB101Table:
    import spaces  # imported here: spaces does not depend on data
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        head = reader.fieldnames or []
        if "module_hash" not in head and not {"matrix", "ops"} <= set(head):
            raise DataError(f"{p}: an NB101 CSV needs a module_hash column or matrix + ops columns (header: {head})")
        names = {"test": ("test_accuracy",), "valid": ("validation_accuracy", "val_accuracy"),
                 "params": ("trainable_parameters",), "train_time": ("training_time",)}
        cols = {c: next((n for n in ns if n in head), None) for c, ns in names.items()}
        rows = []
        for row in reader:
            if "module_hash" in head:
                key = row["module_hash"]
            else:
                bits = [int(b) for b in row["matrix"].replace(";", "")]
                n = math.isqrt(len(bits))
                try:
                    spec = spaces.NB101Spec(tuple(tuple(bits[i * n:(i + 1) * n]) for i in range(n)),
                                            tuple(row["ops"].split(",")))
                    key = spaces.nb101_hash(spec)
                except spaces.GenotypeError as err:
                    raise DataError(f"{p}: bad cell {row['matrix']} {row['ops']}: {err}") from err
            vals = {c: float(row[n]) for c, n in cols.items() if n and row[n] not in ("", None)}
            for c in ("test", "valid"):
                if c in vals and vals[c] > 1.0:  # percent
                    vals[c] /= 100.0
            rows.append((key, vals))
    return NB101Table.from_rows(rows, str(p))


def nb101_metrics(table: NB101Table | None, genotype, space: str) -> dict:
    """A derived 1Shot1 cell's NB101 numbers for metrics.jsonl: `nb101_test` / `nb101_valid` (percent, mean of the
    repeats), `nb101_test_regret` / `nb101_valid_regret` (percent points above the space's best single run),
    `nb101_params`, `nb101_hash`; null values and `nb101_missing` (the reason) for a cell the table lacks."""
    if table is None:
        return {}
    import spaces  # imported here: spaces does not depend on data
    null = {"nb101_test": None, "nb101_valid": None, "nb101_test_regret": None, "nb101_valid_regret": None}
    try:
        key = spaces.nb101_hash(genotype)
    except (spaces.GenotypeError, AttributeError) as err:
        return {**null, "nb101_missing": f"not an NB101 cell: {err}"}
    row = table.get(key)
    if row is None:
        return {**null, "nb101_hash": key, "nb101_missing": f"hash {key} is not in {table.source}"}
    test_min, valid_min = NB1SHOT1_MIN_ERROR[int(space.rsplit("-", 1)[1])]
    return {"nb101_test": 100 * row["test"], "nb101_valid": 100 * row["valid"],
            "nb101_test_regret": 100 * ((1 - row["test"]) - test_min),
            "nb101_valid_regret": 100 * ((1 - row["valid"]) - valid_min),
            "nb101_params": row["params"], "nb101_hash": key}


# ----------------------------------------------------- I.8 word-level language-model corpora and BPTT windows
LM_DIRS = {"ptb": ("penn", "ptb"), "wt2": ("wikitext-2", "wt2")}
LM_SPLITS = ("train", "valid", "test")


def lm_corpus(dataset: str, data_dir: str) -> dict:
    """{'train' | 'valid' | 'test': 1-D LongTensor of token ids, 'vocab': words} from the three text files
    ({split}.txt, ptb.{split}.txt or wiki.{split}.tokens) in `dataset` (a directory), or for ptb / wt2 in
    --data-dir or --data-dir/{penn, ptb | wikitext-2, wt2}. Words split on whitespace, `<eos>` ends every line;
    the vocabulary is train's words in order of first appearance, and valid / test words outside it become <unk>.
    (DARTS' Corpus builds it over all three files: the same ids on PTB and WT2, whose valid / test words all occur
    in train.)"""
    if Path(dataset).is_dir():
        dirs = [Path(dataset)]
    elif dataset in LM_DIRS:
        dirs = [Path(data_dir)] + [Path(data_dir) / d for d in LM_DIRS[dataset]]
    else:
        raise DataError(f"--dataset {dataset!r}: the rnn space reads ptb | wt2 | a directory with train/valid/test text")
    names = lambda s: (f"{s}.txt", f"ptb.{s}.txt", f"wiki.{s}.tokens")  # noqa: E731
    for d in dirs:
        files = [next((d / n for n in names(s) if (d / n).is_file()), None) for s in LM_SPLITS]
        if all(files):
            break
    else:
        raise DataError(f"--dataset {dataset}: no train/valid/test text ({', '.join(names('train'))}, ...) in "
                        f"{' or '.join(map(str, dirs))}; put the corpus there (PTB: Mikolov's ptb.*.txt, WT2: wiki.*.tokens)")
    vocab, out = {}, {}
    for split, path in zip(LM_SPLITS, files):
        with open(path, encoding="utf-8") as f:
            words = [w for line in f for w in line.split() + ["<eos>"]]
        if split == "train":
            vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
        unk = vocab.get("<unk>")
        if split != "train" and unk is None and any(w not in vocab for w in words):
            raise DataError(f"{path}: words outside the training vocabulary and no <unk> in it")
        out[split] = torch.tensor([vocab.get(w, unk) for w in words], dtype=torch.long)
    return {**out, "vocab": list(vocab)}


def batchify(ids: torch.Tensor, batch_size: int, device=None) -> torch.Tensor:
    """(T, batch_size): the stream cut into batch_size contiguous columns, the remainder dropped."""
    rows = ids.numel() // batch_size
    if rows < 2:
        raise DataError(f"{ids.numel()} tokens make no BPTT window at batch size {batch_size}")
    return ids[:rows * batch_size].view(batch_size, rows).t().contiguous().to(device)


def lm_windows(rows: int, bptt: int, rng=None, jitter: bool = False, max_delta: int = 20) -> list[tuple[int, int]]:
    """(start, length) of the BPTT windows of one epoch over `rows` rows. rng (e.g. np.random): DARTS' random
    lengths, bptt or (probability 0.05) bptt / 2, and with jitter (retraining) then ~ N(that, 5), at least 5 and at
    most bptt + max_delta. Windows are cut at the stream's end."""
    out, i = [], 0
    while i < rows - 2:
        n = bptt
        if rng is not None:
            base = bptt if rng.random() < 0.95 else bptt / 2
            n = min(max(5, int(rng.normal(base, 5))), bptt + max_delta) if jitter else int(base)
        out.append((i, min(n, rows - 1 - i)))
        i += n
    return out


def lm_batch(source: torch.Tensor, i: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(n, source.size(0) - 1 - i)
    return source[i:i + n], source[i + 1:i + 1 + n]


# ------------------------------------------------------------- I.9 inpainting: image sets, masks, PSNR / SSIM
# ASNG-NAS's inpainting task, facts from shirakawas/ASNG-NAS inpainting/common/{utils,eval_test}.py and
# inpainting/main_inpainting_int.py (read, not copied).
INPAINT_MASKS = ("center", "random-pixel", "random-half")


def _image_folder_arrays(dataset: str, data_dir: str, image_size: int) -> dict:
    """celeba: ImageFolder DATA_DIR/celebA/{train,test} (the official layout); svhn: torchvision's SVHN in DATA_DIR.
    Resized (shorter side) and centre-cropped to image_size, as uint8 NHWC arrays."""
    from torchvision import datasets, transforms
    # DEVIATION: centre-cropped to a square (the official transform only resizes the shorter side to 64 px)
    tf = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size)])
    root = Path(data_dir) / "celebA"
    if dataset == "celeba" and not (root / "train").is_dir():
        raise DataError(f"CelebA not found: expected image folders {root}/train/<any>/*.jpg and {root}/test/<any>/")
    out = {}
    for split in ("train", "test"):
        ds = datasets.ImageFolder(root / split, tf) if dataset == "celeba" else datasets.SVHN(data_dir, split, tf, download=True)
        out[f"x_{split}"] = np.stack([np.asarray(img.convert("RGB")) for img, _ in ds])
        out[f"y_{split}"] = np.zeros(len(ds), dtype=np.int64)
    return out


def inpainting_loaders(dataset: str, data_dir: str, batch_size: int, seed: int, image_size: int = 64,
                       train_subset: int = 0, split: bool = True):
    """(batches, test loader, channels). Images: celeba / svhn (see above) or whatever load_arrays reads, resized to
    image_size; labels unused. split: PairedBatches over the two halves of the training images (weights, architecture;
    the official valid_rate 0.5), else one shuffled loader over all of them."""
    if dataset in ("celeba", "svhn"):
        arrays = _image_folder_arrays(dataset, data_dir, image_size)
    else:
        arrays, _ = load_arrays(dataset, data_dir, synthetic_size=(256, 64), image_size=image_size)
    resize = lambda x: x if x.shape[1] == image_size else F.interpolate(  # NHWC uint8 -> resized NHWC uint8
        torch.from_numpy(x).permute(0, 3, 1, 2).float(), size=(image_size, image_size), mode="bilinear",
        antialias=True).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    x, y = take_subset(resize(arrays["x_train"]), arrays["y_train"], train_subset)
    test = make_loader(ArrayDataset(resize(arrays["x_test"]), arrays["y_test"]), batch_size, shuffle=False, seed=seed)
    if not split:
        return make_loader(ArrayDataset(x, y), batch_size, shuffle=True, seed=seed), test, x.shape[-1]
    w, a = search_split(len(y), True, 0.5)
    return PairedBatches(make_loader(ArrayDataset(x[w], y[w]), batch_size, True, seed),
                         make_loader(ArrayDataset(x[a], y[a]), batch_size, True, seed + 1)), test, x.shape[-1]


def mask_images(x: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """x (B, C, H, W) with the hidden pixels set to 0. center: the middle of each side (margins int(0.25 H), as the
    official CenterMasking); random-pixel: every pixel (all channels) hidden with probability 0.8; random-half: one of
    the left / top / right / bottom halves per image."""
    B, _, H, W = x.shape
    rows, cols = torch.arange(H)[:, None], torch.arange(W)[None]
    if kind == "center":
        keep = ~((rows >= int(H * 0.25)) & (rows < int(H * 0.75)) & (cols >= int(W * 0.25)) & (cols < int(W * 0.75)))
        keep = keep.expand(B, 1, H, W)
    elif kind == "random-pixel":
        keep = torch.rand(B, 1, H, W, generator=generator) >= 0.8
    elif kind == "random-half":
        halves = torch.stack([h.expand(H, W) for h in (cols < W // 2, rows < H // 2, cols >= W // 2, rows >= H // 2)])
        keep = ~halves[torch.randint(4, (B,), generator=generator)][:, None]
    else:
        raise DataError(f"unknown mask {kind!r}; choose one of {', '.join(INPAINT_MASKS)}")
    return x * keep.to(x.device, x.dtype)


def psnr(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image, both clipped to [0, 1]: 10 log10(1 / MSE) (dB)."""
    mse = (out.clamp(0, 1) - target.clamp(0, 1)).double().square().mean((1, 2, 3))
    return -10 * torch.log10(mse)


def ssim(out: torch.Tensor, target: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Per image, both clipped to [0, 1]: SSIM as skimage computes it for the official code (Gaussian window
    sigma 1.5 truncated at 3.5 sigma, population covariances, data range 1, K1 0.01, K2 0.03, mean over channels of
    the map without its border): valid convolutions give exactly the pixels skimage keeps."""
    x, y = out.clamp(0, 1).double(), target.clamp(0, 1).double()
    # DEVIATION: skimage needs images larger than its 11-px window; smaller ones get a window cut to fit
    r = min(int(3.5 * sigma + 0.5), (min(x.shape[-2:]) - 1) // 2)
    g = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64, device=x.device) / sigma) ** 2)
    C = x.shape[1]
    k = (g[:, None] * g[None] / g.sum() ** 2).expand(C, 1, 2 * r + 1, 2 * r + 1)
    f = lambda t: F.conv2d(t, k, groups=C)
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean((1, 2, 3))


@torch.no_grad()
def evaluate_inpainting(forward, loader, mask: str, device, seed: int = 0) -> dict:
    """Mean test MSE, PSNR and SSIM over the test images of forward(masked images) (eval mode around the call is
    the caller's); random masks come from a generator seeded with `seed`, so every evaluation sees the same ones."""
    gen, sums, n = torch.Generator().manual_seed(seed), torch.zeros(3, dtype=torch.float64), 0
    for x, _ in loader:
        x = x.to(device).float() / 255
        y = forward(mask_images(x, mask, gen))
        mse = (y - x).double().square().mean((1, 2, 3))  # the loss, unclipped
        sums += torch.stack([mse.sum(), psnr(y, x).sum(), ssim(y, x).sum()]).cpu()
        n += len(x)
    return dict(zip(("test_mse", "test_psnr", "test_ssim"), (sums / n).tolist()))


def inpainting_batch(x: torch.Tensor, mask: str, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 batch -> (masked input, clean target) in [0, 1], each image flipped horizontally with probability 1/2
    (the official training transform)."""
    x = x.to(device).float() / 255
    x = torch.where(torch.rand(len(x), 1, 1, 1, generator=generator).to(device) < 0.5, x.flip(-1), x)
    return mask_images(x, mask, generator), x


# ===================================== PART II -- RUNNING A JOB =====================================
# ------------------------------------------------------------------------- II.1 command-line types and checks
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
    if len(text.encode()) > 200:  # file systems allow 255 bytes; a suffix _N may be added
        raise argparse.ArgumentTypeError(f"must be at most 200 bytes long, got {len(text.encode())}")
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
    if getattr(args, "nb101_table", None) and not args.space.startswith("nb1shot1"):
        parser.error("--nb101-table needs --space nb1shot1-1, nb1shot1-2 or nb1shot1-3")
    if args.space == "darts" and args.layers is not None and args.layers < 3:
        parser.error(f"--layers {args.layers}: the DARTS space needs >= 3 cells (reduction cells sit at layers//3 "
                     f"and 2*layers//3, so fewer leave no normal cell to search)")
    bilevel = args.bilevel if hasattr(args, "bilevel") else not args.single_level
    if not bilevel and (args.split_file or args.train_portion != 0.5):
        how = "need --bilevel" if hasattr(args, "bilevel") else "do nothing with --single-level"
        parser.error(f"--split-file / --train-portion choose the bilevel split: they {how}")


def add_run_args(p) -> None:
    """The flags every search shares and none tunes: resumption, TensorBoard, determinism."""
    p.add_argument("--resume", action="store_true", help="continue the run OUT_DIR/RUN_NAME from its checkpoint.pt "
                   "(same settings; the default run name is used when --run-name is not given)")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events to OUT_DIR/RUN_NAME/tb/ "
                   "(needs `pip install tensorboard`)")
    p.add_argument("--log-every", type=positive_int, default=50, help="TensorBoard: log the running training losses every N steps")
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True), cuDNN "
                   "benchmark off, CUBLAS_WORKSPACE_CONFIG set: bit-reproducible GPU runs, somewhat slower")


# -------------------------------------------------------------------------------- II.2 run directory and logs
CHECKPOINT = "checkpoint.pt"
RESULT_FILES = (CHECKPOINT, "metrics.jsonl", "genotype.json", "summary.json")  # a directory with none is unused
LOCK = ".lock"  # "<host> <pid>" of the process that owns a run directory


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


def atomic_write(path: Path, content) -> None:
    """The one writer of result files: `content` (str, bytes, or a function that writes to a binary file) goes to a
    temporary file beside `path`, flushed to disk, then renamed over `path`, so a reader or a run killed at any moment
    sees the old file or the new one, never half of one. The file gets a plain open()'s mode (0666 minus the umask)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:  # interrupted (Ctrl-C, SIGTERM, an error) before the rename: no half-written file is left
        Path(tmp).unlink(missing_ok=True)


def _finite_or_none(obj):
    """NaN and infinities are not JSON: they are logged as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def claim(path: Path) -> str | None:
    """Lock run directory `path` for this process (path/.lock, created exclusively, holding "<host> <pid>"). Returns
    None when claimed, else who holds it. A lock left by a dead process on this host, or by this very process (an
    earlier run object that stopped with an error), is taken over; one from another host is respected."""
    lock, me = path / LOCK, f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                host, pid = lock.read_text().split()
                pid = int(pid)
            except (OSError, ValueError):  # being written right now, or vanished: treat as held
                return f"another process (see {lock})"
            if host != socket.gethostname() or (pid != os.getpid() and _alive(pid)):
                return f"process {pid} on {host}"
            lock.unlink(missing_ok=True)  # stale: its process is gone (or it is ours)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return None
    return f"another process (see {lock})"


def release(path: Path) -> None:
    """Remove path/.lock if this process holds it."""
    lock = path / LOCK
    with contextlib.suppress(OSError, ValueError):
        if lock.read_text().split() == [socket.gethostname(), str(os.getpid())]:
            lock.unlink()


def make_run_dir(out_dir: str, name: str) -> Path:
    """OUT_DIR/NAME for a new run, claimed by this process: created, or reused when it exists but holds no result (a
    run stopped in its first epoch leaves only args.json) and no live process owns it; otherwise NAME_1, NAME_2, ...:
    a finished or resumable run is never overwritten. An uncreatable OUT_DIR is a DataError (one line)."""
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for i in itertools.count():
            path = Path(out_dir) / (name if i == 0 else f"{name}_{i}")
            try:
                path.mkdir()
            except FileExistsError:
                if not path.is_dir() or any((path / f).exists() for f in RESULT_FILES) or claim(path) is not None:
                    continue
                for p in path.iterdir():  # an unused directory: start anew in it
                    if p.name != LOCK:
                        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                return path
            if claim(path) is None:
                return path
    except OSError as err:
        raise DataError(f"cannot create a run directory under --out-dir {out_dir!r}: "
                        f"{err.strerror or err} ({err.filename or out_dir})") from err


# ------------------------------------------------------------------------------------ II.3 checkpoint / resume
CHECKPOINT_FORMAT = "nasref-checkpoint-1"  # the key that tells a nasref checkpoint from any other file
# flags that may differ between a run and its resumption (they change where or how it is watched, not what it computes)
RESUMABLE_FLAGS = frozenset({"resume", "device", "data_dir", "out_dir", "run_name", "tensorboard", "log_every", "workers"})


class ResumeError(DataError):
    """A run cannot be resumed: no checkpoint, a corrupt one, one written with other settings, or a run in use."""


class NonFiniteLoss(DataError):
    """A loss, metric or architecture parameter became NaN or infinite: the run stops, nothing non-finite is written
    and no result is derived (the last complete epoch's checkpoint stays on disk)."""


def rng_state() -> dict:
    """The global generators: torch (CPU and every visible GPU), numpy, python."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]], "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state((state["numpy"][0], np.asarray(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))


def capture(state):
    """A copy of `state` that torch.save can write: modules, optimizers, schedulers and samplers by their
    state_dict(), generators by their state, tensors cloned to the CPU, dicts recursively, anything else as it is.
    A DistributedDataParallel model is saved as the model it wraps (the same checkpoint keys as in one process)."""
    if isinstance(state, nn.parallel.DistributedDataParallel):
        state = state.module
    if hasattr(state, "state_dict"):
        return state.state_dict()
    if isinstance(state, torch.Generator):
        return state.get_state()
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: capture(v) for k, v in state.items()}
    return state


def restore(state: dict, saved: dict) -> None:
    """Undo `capture` in place: load_state_dict / set_state / copy_ into the live objects; plain values (numbers,
    lists) are put back into the dict that holds them (so `vars(obj)` restores an object's attributes)."""
    if set(state) != set(saved):
        raise ResumeError(f"the checkpoint holds {sorted(saved)}, this run needs {sorted(state)}")
    for k, v in state.items():
        v = v.module if isinstance(v, nn.parallel.DistributedDataParallel) else v
        if hasattr(v, "load_state_dict"):
            v.load_state_dict(saved[k])
        elif isinstance(v, torch.Generator):
            v.set_state(saved[k])
        elif isinstance(v, torch.Tensor):
            if v.shape != saved[k].shape:
                raise ResumeError(f"checkpoint entry {k!r} has shape {tuple(saved[k].shape)}, not {tuple(v.shape)}")
            with torch.no_grad():
                v.copy_(saved[k])
        elif isinstance(v, dict):
            restore(v, saved[k])
        else:
            state[k] = saved[k]


def save_checkpoint(path: Path, obj: dict) -> None:
    """torch.save through `atomic_write`: a run killed at any moment leaves the previous checkpoint or the new one."""
    atomic_write(path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **obj}, f))


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by `save_checkpoint`; ResumeError (one line) for a missing file or any other file."""
    if not path.is_file():
        raise ResumeError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # a foreign pickle also warns about its protocol: keep the error one line
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise ResumeError(f"{path} is not a nasref checkpoint (unreadable: {type(err).__name__})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ResumeError(f"{path} is not a nasref checkpoint (no {CHECKPOINT_FORMAT!r} format key)")
    return ckpt


def check_settings(saved: dict, now: dict, where) -> None:
    """A checkpoint resumes only the run it came from: every flag except RESUMABLE_FLAGS must be the same."""
    keys = (set(saved) | set(now)) - RESUMABLE_FLAGS
    clashes = [f"--{k.replace('_', '-')} {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(keys)
               if saved.get(k) != now.get(k)]
    if clashes:
        raise ResumeError(f"refusing to resume {where} with other settings: {', '.join(clashes)}")


# ----------------------------------------- II.4 the run object: progress, TensorBoard, non-finite stop, signals
def set_deterministic(on: bool) -> None:
    """Deterministic kernels (GPU runs are otherwise reproducible only up to atomics in cuDNN/cuBLAS reductions)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts; needed by CUDA >= 10.2
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True


def summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch's writer needs the optional `tensorboard` package
        raise DataError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
    return SummaryWriter


def heatmap(matrix: torch.Tensor, cell: int = 12) -> np.ndarray:
    """An edges x ops weight matrix as a uint8 HWC image: each entry a cell x cell square, dark (0) to bright
    yellow (row maximum 1) on a blue-green-yellow ramp."""
    m = matrix.detach().float().cpu().reshape(matrix.shape[0], -1).clamp(0, 1).numpy()
    ramp = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
    pos = m * (len(ramp) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(ramp) - 2)
    rgb = ramp[lo] + (pos - lo)[..., None] * (ramp[lo + 1] - ramp[lo])
    return np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1).astype(np.uint8)


def _non_finite(values: dict) -> list[str]:
    return [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]


class Run:
    """runs/{run_name}/ of one job -- a search (algos/*.py) or a retraining (train_eval.py) -- and its lifecycle:
    args.json, metrics.jsonl, an atomic checkpoint per epoch and exact resumption (`--resume`, same settings), a lock
    against a second process on the directory, in-epoch progress with ETAs, TensorBoard (`--tensorboard`), a stop on
    NaN / infinite losses, metrics or architecture parameters (one line; nothing non-finite written, no result), and
    Ctrl-C / SIGTERM (preemption) ending with exit 130 / 143 and the exact resume command, the last checkpoint kept.

    Use: build every object first (bad input fails before anything is written), then `run = Run(args, name)`,
    `state = {...}` (what the next epoch depends on), `for epoch in range(run.restore(state), epochs + 1)`, iterate
    `run.steps(batches, epoch, sums)`, end each epoch with `run.end_epoch(state, metrics, arch_weights, show)`, and
    the job with `run.finish(result, genotype, dot)`. Under torchrun (after `init_distributed`) every rank restores
    the same checkpoint (with its own RNG state) and checks that its architecture equals every other rank's at each
    epoch end; rank 0 alone writes and prints; `finish` leaves the process group."""

    def __init__(self, args, default_name: str, argv=None):
        self.args, self.epochs = args, args.epochs
        self.settings = {**vars(args), "world_size": world_size()}  # a run resumes on as many processes
        self.main, self.created, self.locked, self.closed = is_main(), False, False, False
        self.tb = summary_writer_class() if args.tensorboard and self.main else None  # fails before anything is written
        self.writer, self._ckpt, self.history, self.global_step = None, None, [], 0
        self.argv = list(sys.argv[1:] if argv is None else argv)
        set_deterministic(args.deterministic)
        self.path, self.start = Path(args.out_dir) / (args.run_name or default_name), time.time()
        try:
            if args.resume:
                self._open_for_resume()
            elif self.main:
                self.path, self.created, self.locked = make_run_dir(args.out_dir, self.path.name), True, True
                self.write_json("args.json", self.settings)
        except DataError:
            self._close()
            raise
        self._handlers = {s: signal.signal(s, self._interrupt) for s in (signal.SIGINT, signal.SIGTERM)}

    def _open_for_resume(self) -> None:
        if self.main:
            if not self.path.is_dir():
                raise ResumeError(f"no run to resume at {self.path} (check --out-dir and --run-name)")
            holder = claim(self.path)
            if holder is not None:
                raise ResumeError(f"{self.path} is in use by {holder} (a second process on one run); wait for it to "
                                  f"end, or delete {self.path / LOCK} if that process is gone")
            self.locked = True
            for tmp in self.path.glob(f".{CHECKPOINT}.*tmp"):  # left by a kill during a checkpoint write
                tmp.unlink()
            if not (self.path / CHECKPOINT).is_file():
                raise ResumeError(f"{self.path} holds no checkpoint: the run never finished an epoch; run the same "
                                  f"command without --resume to start it anew in that directory")
        self._ckpt = load_checkpoint(self.path / CHECKPOINT)
        check_settings(self._ckpt.get("settings", {}), self.settings, self.path)

    # -- files
    def write_json(self, name: str, obj) -> None:
        atomic_write(self.path / name, json.dumps(_finite_or_none(obj), indent=2, default=_jsonable) + "\n")

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.path / name, text)

    def log(self, metrics: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_finite_or_none(metrics), default=_jsonable, allow_nan=False) + "\n")

    # -- resumption
    def restore(self, state: dict) -> int:
        """Puts the checkpoint (if resuming) into the live objects; returns the first epoch still to run."""
        if self._ckpt is None:
            self._open_tb()
            return 1
        ckpt, self._ckpt = self._ckpt, None
        try:
            restore(state, ckpt["state"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:  # load_state_dict on a different network
            self._close()
            raise ResumeError(f"{self.path / CHECKPOINT} does not fit this run: {' '.join(str(e).split())[:200]}") from e
        set_rng_state(ckpt["rng"][rank()])
        self.history, self.global_step = ckpt["history"], ckpt["global_step"]
        self.start = time.time() - ckpt["elapsed"]
        if self.main:  # metrics.jsonl ends with the checkpoint's epoch: lines of an unfinished epoch are dropped
            self.write_text("metrics.jsonl", "".join(json.dumps(m, allow_nan=False) + "\n" for m in self.history))
            print(f"resuming {self.path} after epoch {ckpt['epoch']}/{self.epochs}", flush=True)
        self._open_tb()
        return ckpt["epoch"] + 1

    def resume_command(self) -> str:
        argv, skip = [], False
        for a in self.argv:  # drop an earlier --resume / --run-name / --out-dir, then name this run exactly
            if skip:
                skip = False
                continue
            if a in ("--run-name", "--out-dir"):
                skip = True
                continue
            if a == "--resume" or a.startswith(("--run-name=", "--out-dir=")):
                continue
            argv.append(a)
        argv += ["--out-dir", str(self.path.parent), "--run-name", self.path.name, "--resume"]
        return shlex.join(["python", sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "ALGO.py", *argv])

    # -- stopping
    def _interrupt(self, signum, frame):
        """SIGINT (Ctrl-C) and SIGTERM (what SLURM and Kubernetes send on preemption): keep the last checkpoint, say
        how to resume, exit 128 + signal (130 / 143)."""
        code, what = 128 + signum, "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
        if self.closed:  # a run object that already ended: behave as without one
            raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(code)
        discarded = self._discard_if_nothing_saved()
        self._close()
        if self.main:
            print(f"\n{what} before the first epoch finished; nothing was kept" if discarded else
                  f"\n{what}; epoch {len(self.history)} is saved. Resume with: {self.resume_command()}",
                  file=sys.stderr, flush=True)
        raise SystemExit(code)

    def _discard_if_nothing_saved(self) -> str:
        """A new run stopped before its first checkpoint leaves no half-made directory behind."""
        if (self.path / CHECKPOINT).is_file():
            return ""
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            self.locked = False
        return "nothing was kept"

    def _stop_non_finite(self, what: str, flag: str):
        kept = self._discard_if_nothing_saved() or f"{self.path} holds epoch {len(self.history)} intact"
        self._close()
        raise NonFiniteLoss(f"non-finite {what}; lower the learning rate ({flag}); {kept}")

    def _close(self) -> None:
        """Ends this object's hold: signal handlers back, TensorBoard closed, the directory's lock released."""
        if self.closed:
            return
        self.closed = True
        for sig, handler in getattr(self, "_handlers", {}).items():
            if signal.getsignal(sig) == self._interrupt:
                signal.signal(sig, handler)
        if self.writer is not None:
            self.writer.close()
        if self.locked:
            release(self.path)

    # -- during an epoch
    def steps(self, batches, epoch: int, sums: dict):
        """Iterates `batches`; after each step checks that the running sums (losses, accuracies) are finite, shows
        step i/n, steps/s, the ETA of the epoch and of the run and the running means (one line kept up to date on a
        terminal, else a line every ~10% of the epoch), and logs the running losses to TensorBoard."""
        n, t0, tty = len(batches), time.time(), sys.stdout.isatty()
        every = max(1, math.ceil(n / 10))
        for i, batch in enumerate(batches, 1):
            yield batch
            bad = [k for k, v in sums.items() if not math.isfinite(v)]
            if bad:
                self._stop_non_finite(f"{bad[0]} at epoch {epoch} step {i}/{n}",
                                      "--arch-lr" if bad[0].startswith("arch") else "--lr")
            self.global_step += 1
            if self.writer is not None and self.global_step % self.args.log_every == 0:
                for k, v in sums.items():
                    if "loss" in k:
                        self.writer.add_scalar(f"step/{k}", v / i, self.global_step)
            if self.main and (tty or i % every == 0 or i == n):
                rate = i / max(time.time() - t0, 1e-9)
                eta_epoch = (n - i) / rate
                eta_run = eta_epoch + (self.epochs - epoch) * n / rate
                shown = " ".join(f"{k} {v / i:.4g}" for k, v in sums.items() if v)
                line = (f"epoch {epoch}/{self.epochs} step {i}/{n} | {rate:.2f} steps/s | ETA epoch "
                        f"{datetime.timedelta(seconds=round(eta_epoch))} run {datetime.timedelta(seconds=round(eta_run))}"
                        f" | {shown}")
                if tty:  # one line, rewritten in place, cleared at the end of the epoch
                    print("\r" + (line[:150] if i < n else "").ljust(150), end="\r" if i == n else "", flush=True)
                elif i < n:
                    print(line, flush=True)

    # -- end of an epoch / the job
    def end_epoch(self, state: dict, metrics: dict, arch_weights: dict | None = None, show=()) -> None:
        """Checkpoint (state, every rank's RNGs, metrics so far), metrics.jsonl line, TensorBoard, and a progress line
        with the metrics named in `show`. Stops (NonFiniteLoss) on a non-finite float metric or architecture weight.
        Under torchrun: raises unless `arch_weights` are the same on every rank; float metrics are averaged."""
        check_same_across_ranks(list((arch_weights or {}).values()), "the architecture")
        metrics, epoch = mean_over_ranks(metrics), metrics["epoch"]
        bad = _non_finite(metrics) or [f"architecture weights ({g})" for g, w in (arch_weights or {}).items()
                                       if not torch.isfinite(w).all()]
        if bad:
            self._stop_non_finite(f"{bad[0]} at the end of epoch {epoch}", "--arch-lr" if "arch" in bad[0] else "--lr")
        rngs = gather_objects(rng_state())
        if not self.main:
            return
        self.history.append(metrics)
        save_checkpoint(self.path / CHECKPOINT, {
            "epoch": epoch, "state": capture(state), "rng": rngs, "history": self.history,
            "global_step": self.global_step, "elapsed": time.time() - self.start, "settings": self.settings})
        self.log(metrics)
        if self.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                    self.writer.add_scalar(f"epoch/{k}", v, epoch)
            for g, w in (arch_weights or {}).items():
                self.writer.add_image(f"arch/{g}", heatmap(w), epoch, dataformats="HWC")
            if "genotype" in metrics:
                self.writer.add_text("genotype", str(metrics["genotype"]), epoch)
            self.writer.flush()
        per_epoch = (time.time() - self.start) / max(epoch, 1)
        eta = datetime.timedelta(seconds=round(per_epoch * max(self.epochs - epoch, 0)))
        shown = [f"{k} {_fmt(metrics[k])}" for k in show if metrics.get(k) is not None]
        print(" | ".join([f"epoch {epoch}/{self.epochs}", *shown, f"{per_epoch:.1f}s/epoch", f"ETA {eta}"]), flush=True)

    def finish(self, result: dict, genotype, dot: str | None, result_file: str = "genotype.json") -> dict:
        """Writes `result` (genotype.json for a search, summary.json for a retraining) and the cell picture; stops
        instead (NonFiniteLoss) when a float of `result` is not finite."""
        barrier_and_destroy()  # torchrun: the ranks leave together; only rank 0 goes on to write
        bad = _non_finite(result)
        if bad:
            self._stop_non_finite(f"{bad[0]} after the last epoch", "--lr")
        if not self.main:
            self._close()
            return result
        self.write_json(result_file, result)
        if dot is not None:
            self.write_text("cell.dot", dot)
        if self.writer is not None:
            self.writer.add_text("final_genotype", str(genotype))
        self._close()
        print(f"genotype: {genotype}\nresults in {self.path}", flush=True)
        return {**result, "run_dir": str(self.path)}

    def _open_tb(self) -> None:
        self.writer = self.tb(str(self.path / "tb")) if self.tb is not None else None

# ------------------------------------------------------------------------------------- II.5 torchrun helpers
class DistributedError(DataError):
    """torchrun is not supported by a script, or ranks that must agree do not (a DataError: every script's error
    handler prints it as one line)."""


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True in the process that prints and writes runs/<run>/ (rank 0, or the only process)."""
    return rank() == 0


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """(rank, world size, this process's device). Under torchrun (WORLD_SIZE > 1) joins the process group: NCCL when
    the ranks use GPUs (device `auto` with CUDA present, or `cuda...`: rank r gets cuda:LOCAL_RANK), else gloo on CPU.
    One process: (0, 1, resolve_device(device): `auto` = cuda if available; a device that is not here is refused)."""
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not under_torchrun():
        return 0, 1, resolve_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if want_cuda else "cpu")
    if want_cuda:
        torch.cuda.set_device(dev)
    return dist.get_rank(), dist.get_world_size(), dev


def barrier_and_destroy() -> None:
    """Leave the process group together: a rank that exits while its peer still talks aborts the peer's gloo
    thread. Call it at the end of a successful run (torchrun stops all ranks when one fails)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def refuse_torchrun(reason: str) -> None:
    """For scripts that cannot run as one search over several processes: under torchrun, rank 0 raises
    DistributedError(reason) (one line) and the other ranks exit with status 1 without a word."""
    if under_torchrun():
        if int(os.environ.get("RANK", "0")) != 0:
            raise SystemExit(1)
        raise DistributedError(reason)


def per_rank_batch(batch_size: int, world: int) -> int:
    """--batch-size is the global batch: each of `world` ranks gets batch_size / world."""
    if batch_size % world:
        raise DistributedError(f"--batch-size {batch_size} (the global batch) does not split over {world} processes")
    return batch_size // world


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel around `model` under torchrun (its weight gradients are averaged over the ranks in
    every backward outside `local_grads`); the model itself in one process."""
    if world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def local_grads(model: nn.Module):
    """Context: a backward inside it leaves the weight gradients local (DDP's no_sync). For the architecture step,
    whose weight gradients are thrown away: it saves an all-reduce of every weight gradient."""
    return model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) else contextlib.nullcontext()


def all_reduce_mean_(tensors) -> None:
    """Average tensors (same dtype and device) in place over the ranks, in one all-reduce; no-op in one process."""
    tensors = [t for t in tensors if t is not None]
    if world_size() == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size()
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


def average_grads_before_step(optimizer: torch.optim.Optimizer) -> None:
    """Under torchrun: before every step of `optimizer`, average its parameters' gradients over the ranks, so that
    each rank steps with the global-batch gradient and the parameters stay identical everywhere."""
    if world_size() > 1:
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: all_reduce_mean_(
            [p.grad for group in opt.param_groups for p in group["params"]]))


def mean_over_ranks(metrics: dict) -> dict:
    """The float entries of `metrics` averaged over the ranks (per-rank means of equal shards -> global means)."""
    keys = [k for k, v in metrics.items() if isinstance(v, float)]
    if world_size() == 1 or not keys:
        return metrics
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)
    all_reduce_mean_([t])
    return {**metrics, **dict(zip(keys, t.tolist()))}


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] (all_gather_object); [obj] in one process."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def check_same_across_ranks(tensors, what: str) -> None:
    """Raise DistributedError unless every rank holds the same values. Compares a float64 checksum (sum, position-
    weighted sum, count of non-finite entries) by one all-reduce of its max and -min; no-op in one process."""
    tensors = list(tensors)
    if world_size() == 1 or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    finite = torch.isfinite(flat)
    x = torch.where(finite, flat, torch.zeros_like(flat))
    pos = torch.arange(1, len(x) + 1, dtype=torch.float64, device=x.device)
    s = torch.stack([x.sum(), (x * pos).sum(), (~finite).sum().double()])
    both = torch.cat([s, -s])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    spread = (both[:3] + both[3:]).abs().max().item()  # max - min per checksum entry
    if spread != 0:
        raise DistributedError(f"{what} differs across the {world_size()} ranks (checksum spread {spread:.3g}); "
                               f"the ranks no longer run one search")

# -------------------------------------------------------------------------------------------- II.6 evaluation
@torch.no_grad()
def evaluate(model, loader, augment, device, *arch) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model(x, *arch)` over `loader` in eval mode (train mode afterwards).
    Tensors in weight dicts of `arch` are detached, so the supernet skips their zero entries as in a weight step."""
    model.eval()
    arch = tuple({g: w.detach() if torch.is_tensor(w) else w for g, w in a.items()} if isinstance(a, dict) else a
                 for a in arch)
    loss, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = augment(x.to(device)), y.to(device)
        logits = model(x, *arch)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    model.train()
    return loss / n, correct / n


# ---------------------------------------- II.7 the recurrent-cell search run (darts.py / nasp.py --space rnn)
def add_lm_args(p, **defaults) -> None:
    """The language model's flags (rnn/train_search.py defaults unless given)."""
    d = {"emsize": 300, "nhid": 300, "bptt": 35, "dropout": 0.75, "dropouth": 0.25, "dropoutx": 0.75, "dropouti": 0.2,
         "dropoute": 0.0, "ar": 0.0, "tar": 1e-3, **defaults}
    p.add_argument("--emsize", type=positive_int, default=d["emsize"], help="rnn: embedding size (= --nhid: tied decoder)")
    p.add_argument("--nhid", type=positive_int, default=d["nhid"], help="rnn: hidden size of the cell")
    p.add_argument("--bptt", type=int_at_least(2), default=d["bptt"], help="rnn: BPTT window length")
    for k, what in (("dropout", "the cell's output"), ("dropouth", "the hidden states"), ("dropoutx", "the cell's "
                    "input"), ("dropouti", "the embedded input"), ("dropoute", "whole words of the embedding")):
        p.add_argument(f"--{k}", type=fraction, default=d[k], help=f"rnn: dropout on {what}")
    p.add_argument("--ar", type=nonneg_float, default=d["ar"], help="rnn: activation regularisation weight (DARTS --alpha)")
    p.add_argument("--tar", type=nonneg_float, default=d["tar"], help="rnn: temporal activation regularisation weight (DARTS --beta)")


def lm_model_args(args) -> dict:
    return {"ninp": args.emsize, "nhid": args.nhid, **{k: getattr(args, k) for k in
                                                       ("dropout", "dropouth", "dropoutx", "dropouti", "dropoute")}}


class LMSearch:
    """What darts.py and nasp.py share on the recurrent cell space (rnn/train_search.py): the weights train on the
    training stream and the architecture on the validation stream, both batchified at --batch-size, windows from
    lm_windows(np.random) (checkpointed with the run), the architecture window at the same offset (wrapped) and of
    length bptt; plain SGD (no momentum) on the weights with its lr scaled by seq_len / bptt during each step; the
    supernet's validation perplexity at batch 10 at every epoch end. Seeds torch and numpy; `run` (the data.Run)
    is made last."""

    def __init__(self, args, space, run_name: str, argv=None):
        self.args, self.device = args, resolve_device(args.device)
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)  # lm_windows' random lengths
        corpus = lm_corpus(args.dataset, args.data_dir)
        self.train, self.arch = (batchify(corpus[s], args.batch_size, self.device) for s in ("train", "valid"))
        self.valid = batchify(corpus["valid"], 10, self.device)
        self.model = space.supernet(len(corpus["vocab"]), **lm_model_args(args)).to(self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), args.lr, weight_decay=args.wd)
        self.run, self.n_steps = Run(args, run_name, argv), 0

    def steps(self, epoch: int, sums: dict):
        lr, bptt, self.n_steps = self.opt.param_groups[0]["lr"], self.args.bptt, 0
        self.model.train()  # end_epoch's evaluation left it in eval mode
        for i, n in self.run.steps(lm_windows(self.train.size(0), bptt, np.random), epoch, sums):
            self.opt.param_groups[0]["lr"] = lr * n / bptt
            yield lm_batch(self.train, i, n), lm_batch(self.arch, i % (self.arch.size(0) - 1), bptt)
            self.opt.param_groups[0]["lr"], self.n_steps = lr, self.n_steps + 1

    def end_epoch(self, state: dict, metrics: dict, sums: dict, eval_arch, arch_weights: dict) -> float:
        """Mean losses, validation perplexity of the supernet with `eval_arch`, checkpoint; returns the perplexity."""
        import spaces
        nll = spaces.evaluate_lm(self.model, self.valid, self.args.bptt, eval_arch)
        # the search cell's batch norm runs on its running statistics here (as rnn/train_search.py evaluates): its
        # states can grow without bound along the stream, so the perplexity may overflow (logged as null)
        ppl = math.exp(nll) if nll < 700 else None  # null in metrics.jsonl; not a non-finite stop
        self.run.end_epoch(state, {**metrics, **{k: v / max(self.n_steps, 1) for k, v in sums.items()},
                                   "valid_ppl": ppl}, arch_weights, show=("train_loss", "arch_loss", "valid_ppl"))
        return ppl

    def finish(self, algorithm: str, genotype, arch: dict) -> dict:
        import spaces
        result = {"algorithm": algorithm, "search_space": "rnn", "genotype": genotype.to_json(), "genotype_str": str(genotype),
                  "supernet_valid_ppl": self.run.history[-1]["valid_ppl"] if self.run.history else None,
                  "search_time_s": time.time() - self.run.start,
                  "alphas": {g: a.detach().cpu().tolist() for g, a in arch.items()}}
        return self.run.finish(result, genotype, spaces.genotype_to_dot(genotype))


# -------------------------------------------------------------------------------- II.8 the command-line entry
def cli(main) -> None:
    """Run a search script's main(); bad input ends with one `error: ...` line and a non-zero exit."""
    import spaces  # imported here: spaces does not depend on data
    try:
        main()
    except (DataError, spaces.SpaceError, spaces.GenotypeError) as err:
        raise SystemExit(f"error: {err}") from None
