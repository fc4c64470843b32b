"""benchmarks/nb201_mini.py: its logic at a tiny size (no timing assertions)."""
import csv
import importlib.util
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("nb201_mini", ROOT / "benchmarks" / "nb201_mini.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summarize_gives_mean_and_std_per_algorithm():
    mini = _load()
    rows = [{"algorithm": "DARTS (bilevel)", "c10_test_200": a, "c100_test_200": 10.0, "in16_test_200": 5.0, "search_s": 2.0}
            for a in (50.0, 60.0)]
    md = mini.summarize(rows)
    line = [l for l in md.splitlines() if l.startswith("| DARTS (bilevel)")][0]
    assert "| 2 |" in line and "55.00 ± 7.07" in line and "10.00 ± 0.00" in line
    assert "GAEA" not in md  # algorithms without rows are left out


def test_every_listed_algorithm_file_exists():
    mini = _load()
    for _, algo, _ in mini.RUNS:
        assert (ROOT / "algos" / f"{algo}.py").is_file(), algo


def test_quick_run_writes_raw_table_and_curves(tmp_path, shared_data):
    mini = _load()
    rows = mini.main(["--quick", "--only", "darts", "gaea_darts_erm", "--dataset", "synthetic", "--train-subset", "64",
                      "--batch-size", "16", "--out", str(tmp_path)])
    assert {r["algorithm"] for r in rows} == {"DARTS (bilevel)", "DARTS (ERM)", "GAEA DARTS (ERM)", "GAEA DARTS (bilevel)"}
    raw = list(csv.DictReader(open(tmp_path / "raw.csv")))
    assert len(raw) == 4 and all(0 < float(r["c10_test_200"]) <= 100 for r in raw)
    curves = list(csv.DictReader(open(tmp_path / "curves.csv")))
    assert len(curves) == 4 * 2  # two epochs each
    assert "GAEA DARTS (ERM)" in (tmp_path / "table.md").read_text()
