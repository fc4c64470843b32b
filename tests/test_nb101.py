"""NAS-Bench-101 without TensorFlow: TFRecord framing and CRCs, ModelMetrics decoding, the cache, the module hash,
and --nb101-table in a 1Shot1 search (per-epoch NB101 accuracy and test regret)."""
import importlib
import importlib.util
import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest

import data
import gaea_pcdarts as gp
import spaces

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("nb101_read", ROOT / "benchmarks" / "nb101_read.py")
nb101_read = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nb101_read)


def _spec_of(rows: str, ops: str) -> spaces.NB101Spec:
    return spaces.NB101Spec(tuple(tuple(int(c) for c in r) for r in rows.split(";")), tuple(ops.split(",")))


# Published hashes: the `key` column of tiga1231/nasbench-vis static/data/data-20k.json (commit 7aec0e76, hashes
# exported from the official NB101 file), matched to cells of NASLib's zc_nasbench101.json (../shared/data/nb101)
# with the same trainable_parameters and 108-epoch validation accuracy.
PUBLISHED = [
    ("01;00", "input,output", "043721b9c7fe8c5fad811d47d83132ec"),
    ("011;001;000", "input,conv1x1-bn-relu,output", "09fc2d10bdd6225e167a6f81a22a3f06"),
    ("0101;0011;0001;0000", "input,maxpool3x3,conv3x3-bn-relu,output", "0922ee996ecffb2c0c5f16d1261f6dfa"),
    ("011001;000110;000101;000001;000001;000000",
     "input,conv1x1-bn-relu,conv3x3-bn-relu,conv3x3-bn-relu,conv1x1-bn-relu,output", "052823d7594410408c8ed490f7a79608"),
    ("010100;001001;000011;000010;000001;000000",
     "input,conv1x1-bn-relu,conv1x1-bn-relu,maxpool3x3,maxpool3x3,output", "0011a6a4e759f16e635a3bb83566c2d1"),
]


def _relabel(spec: spaces.NB101Spec, rng: random.Random) -> spaces.NB101Spec:
    """The same cell with its vertices renumbered in another random topological order."""
    m, n = spec.matrix, len(spec.matrix)
    order, ready = [], [0]
    while ready:
        v = ready.pop(rng.randrange(len(ready)))
        order.append(v)
        ready += [w for w in range(n) if m[v][w] and all(u in order for u in range(n) if m[u][w])]
    pos = {v: i for i, v in enumerate(order)}
    new = [[0] * n for _ in range(n)]
    for u in range(n):
        for w in range(n):
            if m[u][w]:
                new[pos[u]][pos[w]] = 1
    return spaces.NB101Spec(tuple(map(tuple, new)), tuple(spec.ops[v] for v in order))


# ------------------------------------------------------------------------------------------ the hash
@pytest.mark.parametrize("rows,ops,published", PUBLISHED)
def test_hash_equals_published_values(rows, ops, published):
    assert spaces.nb101_hash(_spec_of(rows, ops)) == published


def test_hash_is_invariant_under_relabelling_and_pruning_and_tells_cells_apart():
    rng = random.Random(0)
    for rows, ops, published in PUBLISHED:
        spec = _spec_of(rows, ops)
        relabelled = {_relabel(spec, rng).matrix for _ in range(20)}
        assert len(relabelled) > 1 or len(spec.matrix) < 6  # really renumbered (the small ones are chains)
        assert all(spaces.nb101_hash(_relabel(spec, rng)) == published for _ in range(20))
    # a dangling vertex (1Shot1's unconnected dummy) is pruned away first
    padded = _spec_of("0100001;0010001;0000001;0000100;0000000;0000000;0000000",
                      "input,maxpool3x3,conv3x3-bn-relu,conv1x1-bn-relu,conv3x3-bn-relu,conv1x1-bn-relu,output")
    assert spaces.nb101_hash(padded) == PUBLISHED[2][2]
    # not isomorphic: another op, another edge, the two ops of a branch cell swapped onto a chain
    base = _spec_of("0101;0011;0001;0000", "input,maxpool3x3,conv3x3-bn-relu,output")
    others = [_spec_of("0101;0011;0001;0000", "input,conv1x1-bn-relu,conv3x3-bn-relu,output"),
              _spec_of("0111;0011;0001;0000", "input,maxpool3x3,conv3x3-bn-relu,output"),
              _spec_of("0100;0010;0001;0000", "input,maxpool3x3,conv3x3-bn-relu,output"),
              _spec_of("0101;0011;0001;0000", "input,conv3x3-bn-relu,maxpool3x3,output")]
    hashes = {spaces.nb101_hash(s) for s in [base, *others]}
    assert len(hashes) == 5


def test_naslib_sample_hashes_pruned_and_unpruned_alike(shared_data):
    import csv
    import gzip
    with gzip.open(shared_data / "nb101" / "naslib_nb101_500.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))
    for r in rows[:60]:
        bits = [int(b) for b in r["matrix"]]
        full = spaces.NB101Spec(tuple(tuple(bits[i * 7:i * 7 + 7]) for i in range(7)), tuple(r["ops"].split(",")))
        assert spaces.nb101_hash(full) == spaces.nb101_hash(_spec_of(r["pruned_matrix"], r["pruned_ops"]))
    table = data.load_nb101(str(shared_data / "nb101" / "naslib_nb101_500.csv.gz"))
    assert len(table) <= 301  # 301 distinct pruned cells; isomorphic ones share a hash
    row = table.get(PUBLISHED[0][2])  # the input->output cell: 55 rows, val_accuracy in percent -> fractions
    assert row["repeats"] == 55 and 0.8 < row["valid"] < 0.9 and np.isnan(row["test"])


# ------------------------------------------------------------------------------ TFRecord + ModelMetrics
def test_crc32c_check_value_and_tensorboard_framing(tmp_path):
    masked = int(data.masked_crc32c(np.frombuffer(b"123456789", np.uint8), np.array([0]), np.array([9]))[0])
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    assert ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF == 0xE3069283  # the CRC-32C check value
    writer = pytest.importorskip("tensorboard.summary.writer.record_writer")  # an independent TFRecord writer
    records = [b"", b"x", bytes(range(256)) * 3]
    with open(tmp_path / "tb.tfrecord", "wb") as f:
        w = writer.RecordWriter(f)
        for r in records:
            w.write(r)
        w.flush()
    assert data.read_tfrecord(tmp_path / "tb.tfrecord") == records


def test_protobuf_wire_format_by_hand():
    msg = b"\x10\x96\x01" + b"\x19" + struct.pack("<d", 2.5) + b"\x0a\x03abc" + b"\x0a\x00"
    assert data._pb_fields(msg) == {2: [150], 3: [2.5], 1: [b"abc", b""]}
    with pytest.raises(data.DataError, match="truncated"):
        data._pb_fields(b"\x0a\x05ab")


def _write(path, cells, extra=()):
    """cells: {spec: [(valid, test, time) per repeat]} -> an NB101 TFRecord of the official layout."""
    records = [*extra]
    for spec, repeats in cells.items():
        p = spec.pruned()
        for valid, test, t in repeats:
            evs = [(0.0, 0.0, 0.1, 0.1, 0.1), (54.0, t / 2, 0.5, 0.5, 0.5), (108.0, t, 1.0, valid, test)]
            records.append(nb101_read.nb101_record(spaces.nb101_hash(spec), 108, p.matrix, p.ops,
                                                   nb101_read.model_metrics(evs, 1234567, 2 * t)))
    nb101_read.write_tfrecord(path, records)


def test_tfrecord_reads_back_known_metrics_and_caches(tmp_path):
    a = _spec_of(*PUBLISHED[2][:2])
    b = _spec_of(*PUBLISHED[3][:2])
    four = nb101_read.nb101_record("f" * 32, 4, a.matrix, a.ops, nb101_read.model_metrics(
        [(0.0,) * 5, (2.0,) * 5, (4.0, 1.0, 0.5, 0.5, 0.5)], 1, 1.0))  # nasbench_full: other budgets are skipped
    path = tmp_path / "nb.tfrecord"
    _write(path, {a: [(0.90, 0.89, 100.0), (0.92, 0.91, 110.0), (0.94, 0.93, 120.0)], b: [(0.8, 0.7, 50.0)] * 3},
           extra=[four])
    table = data.load_nb101(str(path))
    assert len(table) == 2 and table.get("f" * 32) is None
    row = table.get(spaces.nb101_hash(a))
    assert row == pytest.approx({"test": 0.91, "valid": 0.92, "train_time": 110.0, "params": 1234567, "repeats": 3})
    cache = path.with_name(path.name + ".nasref.npz")
    assert cache.is_file()
    path_bytes = path.read_bytes()
    cached = data.load_nb101(str(path))  # from the cache: same numbers
    assert cached.get(spaces.nb101_hash(b)) == table.get(spaces.nb101_hash(b))
    path.write_bytes(path_bytes[:-1] + bytes([path_bytes[-1] ^ 1]))  # new content (size kept, mtime changed)
    import os
    os.utime(path, ns=(1, 1))
    with pytest.raises(data.DataError, match="data CRC mismatch in record 6"):
        data.load_nb101(str(path))


def test_corrupt_crc_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.tfrecord"
    _write(path, {_spec_of(*PUBLISHED[1][:2]): [(0.9, 0.9, 1.0)]})
    raw = bytearray(path.read_bytes())
    raw[20] ^= 0xFF  # a byte of the first record's data
    path.write_bytes(bytes(raw))
    with pytest.raises(SystemExit) as exc:
        data.cli(lambda: data.load_nb101(str(path)))
    assert str(exc.value).count("\n") == 0 and "data CRC mismatch in record 0" in str(exc.value)
    (tmp_path / "cut.tfrecord").write_bytes(bytes(raw[:30]))
    with pytest.raises(data.DataError, match="truncated TFRecord"):
        data.load_nb101(str(tmp_path / "cut.tfrecord"))
    (tmp_path / "j.tfrecord").write_bytes(b"")
    with pytest.raises(data.DataError, match="no 108-epoch"):
        data.load_nb101(str(tmp_path / "j.tfrecord"))


def test_read_only_folder_caches_under_xdg(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    _write(ro / "nb.tfrecord", {_spec_of(*PUBLISHED[1][:2]): [(0.9, 0.8, 1.0)]})
    monkeypatch.setattr(data.os, "access", lambda p, mode: Path(p) != ro)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert len(data.load_nb101(str(ro / "nb.tfrecord"))) == 1
    assert list((tmp_path / "cache" / "nasref").glob("nb.tfrecord.*.nasref.npz"))
    assert not list(ro.glob("*.npz"))


# ------------------------------------------------------------------------------ in a 1Shot1 search
def test_nb101_metrics_regret_and_missing():
    spec = _spec_of(*PUBLISHED[2][:2])
    table = data.NB101Table([spaces.nb101_hash(spec)], {"test": [0.93], "valid": [0.94], "train_time": [1.0],
                                                        "params": [5.0], "repeats": [3]}, "t")
    m = data.nb101_metrics(table, spec, "nb1shot1-2")
    assert m["nb101_test"] == pytest.approx(93.0)
    assert m["nb101_test_regret"] == pytest.approx(100 * (0.07 - 0.057592153549194336))  # 1Shot1 SS2 test_min_error
    assert m["nb101_valid_regret"] == pytest.approx(100 * (0.06 - 0.051582515239715576))
    other = data.nb101_metrics(table, _spec_of(*PUBLISHED[1][:2]), "nb1shot1-2")
    assert other["nb101_test"] is None and other["nb101_test_regret"] is None and "is not in t" in other["nb101_missing"]
    assert data.nb101_metrics(None, spec, "nb1shot1-1") == {}


def _search(tmp_path, tiny_npz, table, name):
    return gp.main(["--space", "nb1shot1-1", "--dataset", tiny_npz, "--train-subset", "64", "--batch-size", "32",
                    "--epochs", "1", "--warmup-epochs", "0", "--C", "4", "--layers", "1", "--nb101-table", str(table),
                    "--out-dir", str(tmp_path), "--run-name", name])


def test_search_logs_nb101_accuracy_for_cells_in_the_table_and_null_for_others(tmp_path, tiny_npz):
    other = _spec_of(*PUBLISHED[1][:2])
    _write(tmp_path / "one.tfrecord", {other: [(0.9, 0.9, 1.0)] * 3})
    first = _search(tmp_path, tiny_npz, tmp_path / "one.tfrecord", "a")
    m = json.loads((Path(first["run_dir"]) / "metrics.jsonl").read_text())
    assert m["nb101_test"] is None and m["nb101_test_regret"] is None and "is not in" in m["nb101_missing"]
    derived = spaces.parse_genotype(str(Path(first["run_dir"]) / "genotype.json"))
    assert m["nb101_hash"] == spaces.nb101_hash(derived)
    _write(tmp_path / "two.tfrecord", {other: [(0.9, 0.9, 1.0)] * 3,
                                       derived: [(0.93, 0.92, 1.0), (0.94, 0.93, 1.0), (0.95, 0.94, 1.0)]})
    second = _search(tmp_path, tiny_npz, tmp_path / "two.tfrecord", "b")  # same seed: the same derived cell
    m = json.loads((Path(second["run_dir"]) / "metrics.jsonl").read_text())
    assert m["nb101_test"] == pytest.approx(93.0) and m["nb101_valid"] == pytest.approx(94.0)
    assert m["nb101_test_regret"] == pytest.approx(100 * (0.07 - 0.05448716878890991))
    assert "nb101_missing" not in m


@pytest.mark.parametrize("algo", ["darts", "gaea_darts_erm", "gaea_pcdarts", "xnas", "gaea_gdas", "nasp", "asng"])
def test_every_algorithm_refuses_nb101_table_off_1shot1(tmp_path, capsys, algo):
    module = importlib.import_module(algo)
    with pytest.raises(SystemExit) as exc:
        module.main(["--space", "nb201", "--dataset", "synthetic", "--nb101-table", "x.tfrecord",
                     "--out-dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("--nb101-table needs --space nb1shot1-1, "
                                                                     "nb1shot1-2 or nb1shot1-3")
    assert not (tmp_path / "out").exists()


def test_missing_table_is_one_error_line_before_any_run_dir(tmp_path):
    with pytest.raises(data.DataError, match="NB101 table not found"):
        gp.main(["--space", "nb1shot1-1", "--dataset", "synthetic", "--nb101-table", str(tmp_path / "nope"),
                 "--out-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
