"""How long data.load_nb101 takes on a TFRecord file of the official layout and size, first read vs cached read.

The official nasbench_only108.tfrecord (~499 MB) holds 423,624 cells x 3 repeats = 1,270,872 records of ~390
bytes. Without it, this writes a file of the same layout (JSON [hash, 108, adjacency, ops, base64 ModelMetrics],
masked CRC-32C framing) with random cells and metrics, then times the first read (CRCs, JSON, protobuf, means,
cache written) and the second (cache only). Also the writer the tests use (write_nb101_tfrecord).

    python benchmarks/nb101_read.py                    # full size, ~1.27 M records (~500 MB in a temp folder)
    python benchmarks/nb101_read.py --cells 20000      # smaller; the script says what it extrapolates to
    python benchmarks/nb101_read.py --file nasbench_only108.tfrecord   # time the real file (its cache is kept)
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402

OFFICIAL_RECORDS = 423_624 * 3


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def model_metrics(evaluations, params: int, total_time: float) -> bytes:
    """ModelMetrics bytes (nasbench lib/model_metrics.proto): evaluations are (epoch, training_time, train_acc,
    valid_acc, test_acc) tuples, fields 1..5 of EvaluationData, all doubles (wire type 1)."""
    msg = b""
    for ev in evaluations:
        sub = b"".join(bytes([(k << 3) | 1]) + struct.pack("<d", v) for k, v in enumerate(ev, 1))
        msg += b"\x0a" + _varint(len(sub)) + sub  # field 1, length-delimited
    return msg + b"\x10" + _varint(params) + b"\x19" + struct.pack("<d", total_time)


def nb101_record(module_hash: str, epochs: int, matrix, ops, metrics: bytes) -> bytes:
    adjacency = "".join(str(int(v)) for row in matrix for v in row)
    return json.dumps([module_hash, epochs, adjacency, ",".join(ops), base64.b64encode(metrics).decode()]).encode()


def write_tfrecord(path, records: list[bytes]) -> None:
    """TFRecord framing: uint64 length, masked CRC-32C of those 8 bytes, data, masked CRC-32C of the data."""
    lengths = np.array([len(r) for r in records], dtype=np.int64)
    heads = np.frombuffer(lengths.astype("<u8").tobytes(), np.uint8)
    body = np.frombuffer(b"".join(records), np.uint8)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    len_crc = data.masked_crc32c(heads, np.arange(len(records), dtype=np.int64) * 8, np.full(len(records), 8))
    data_crc = data.masked_crc32c(body, offsets, lengths)
    with open(path, "wb") as f:
        for i, r in enumerate(records):
            f.write(struct.pack("<QI", len(r), int(len_crc[i])) + r + struct.pack("<I", int(data_crc[i])))


def random_records(cells: int, seed: int = 0) -> list[bytes]:
    """3 repeats of `cells` random 7-vertex cells with the official field layout and realistic values."""
    rng, ops = np.random.default_rng(seed), ["conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3"]
    out = []
    for c in range(cells):
        key = hashlib.md5(str(c).encode()).hexdigest()
        matrix = np.triu(rng.integers(0, 2, (7, 7)), 1)
        cell_ops = ["input", *rng.choice(ops, 5).tolist(), "output"]
        for _ in range(3):
            evs = [(e, t, *rng.uniform(0.8, 0.95, 3)) for e, t in ((0.0, 0.0), (54.0, 800 * rng.random()),
                                                                     (108.0, 1600 * rng.random()))]
            out.append(nb101_record(key, 108, matrix, cell_ops, model_metrics(evs, int(rng.integers(2e5, 5e7)),
                                                                               2000 * rng.random())))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=OFFICIAL_RECORDS // 3, help="cells in the generated file (x3 records)")
    p.add_argument("--file", default=None, help="time this TFRecord file instead of generating one")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.file) if args.file else Path(tmp) / "nb101_like.tfrecord"
        if not args.file:
            t0 = time.perf_counter()
            write_tfrecord(path, random_records(args.cells))
            print(f"wrote {path.name}: {args.cells * 3:,} records, {path.stat().st_size / 1e6:.1f} MB "
                  f"in {time.perf_counter() - t0:.1f} s")
        cache = data._nb101_cache_path(path)
        if cache.exists() and not args.file:
            cache.unlink()
        times = []
        for what in ("first read (CRCs, JSON, protobuf, cache written)", "second read (cache)"):
            t0 = time.perf_counter()
            table = data.load_nb101(str(path))
            times.append(time.perf_counter() - t0)
            print(f"{what}: {times[-1]:.2f} s, {len(table):,} cells")
        print(f"cache {cache}: {cache.stat().st_size / 1e6:.1f} MB")
        records = args.cells * 3
        if not args.file and records < OFFICIAL_RECORDS:
            scale = OFFICIAL_RECORDS / records
            print(f"extrapolated (linear in records, x{scale:.1f}) to the official 1,270,872 records: first read "
                  f"~{times[0] * scale:.0f} s, second ~{times[1] * scale:.1f} s")


if __name__ == "__main__":
    main()
