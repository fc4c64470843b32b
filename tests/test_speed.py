"""benchmarks/speed.py: the xautodl, single-path and memory benchmarks' logic at tiny sizes (no timing asserted)."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--quick", "--repeats", "1", "--warmup", "0", "--C", "4", "--layers", "5", "--batch-size", "4",
        "--nb201-C", "4", "--nb201-N", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def speed():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import speed as module
    return module


def test_single_path_rows_compare_each_step_with_its_child(speed):
    rows = speed.main(TINY + ["--only", "single_path"])
    assert [r.candidate for r in rows] == ["gaea_gdas step", "asng step", "nasp weight step"]
    assert all(r.target == pytest.approx(1 / 1.2) and r.ratio > 0 for r in rows)
    asng_row = rows[1]
    assert asng_row.baseline_ms == pytest.approx(2 * asng_row.detail["nb201_child"])  # lambda = 2 children


def test_xautodl_rows_or_a_clean_skip(speed, capsys):
    rows = speed.main(TINY + ["--only", "xautodl"])
    if importlib.util.find_spec("xautodl") is None:
        assert rows == [] and "xautodl is not installed" in capsys.readouterr().out
    else:
        assert [r.case.split()[1] for r in rows] == ["darts", "gdas"]
        assert rows[0].target == pytest.approx(1.25) and rows[1].target == pytest.approx(1 / 0.9)


def test_every_benchmark_is_listed_in_the_docstring(speed):
    for name in speed.BENCHMARKS:
        assert f"\n  {name}" in speed.__doc__


def test_nasp_table5_rows_totals_are_sums_of_parts(speed):
    rows = speed.main(TINY + ["--only", "nasp-table5", "--layers", "3", "--image-size", "8"])
    assert [r.case for r in rows[:6]] == [f"7 ops {c}" for c in speed.TABLE5] and len(rows) == 12
    for r in rows:
        d = r.detail
        assert d["darts_T2"] == pytest.approx(d["darts_A2"] + d["darts_wf"] + d["darts_wb"])
        assert d["nasp_T"] == pytest.approx(d["nasp_A"] + d["nasp_wf"] + d["nasp_wb"])
        assert r.ratio == pytest.approx(r.baseline_ms / r.candidate_ms)
    assert rows[0].paper == pytest.approx(1.53) and rows[0].target == 2.0 and "paper 270 / 176 s" in rows[0].note
    assert rows[-3].target == 10.0 and rows[1].target is None


def test_interleaved_setup_runs_untimed_before_each_call(speed):
    calls = []
    fns = {"a": (lambda: calls.append("setup"), lambda: calls.append("a")), "b": lambda: calls.append("b")}
    times = speed.interleaved_times(fns, repeats=2, warmup=1)
    assert calls == ["setup", "a", "b", "setup", "a", "b", "b", "setup", "a"]
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}
