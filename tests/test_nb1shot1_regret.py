"""benchmarks/nb1shot1_regret.py: one line without an NB101 file; end to end on the NASLib NB101 sample (CSV)."""
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "nb1shot1_regret.py"


def test_without_an_nb101_file_it_says_what_it_needs(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "needs --nb101-table" in lines[0]


def test_quick_run_writes_curves_and_table(tmp_path, shared_data):
    table = shared_data / "nb101" / "naslib_nb101_500.csv.gz"
    npz = shared_data / "images" / "cifar10_partial.npz"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--nb101-table", str(table), "--dataset", str(npz), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = (tmp_path / "curves.csv").read_text().splitlines()
    assert rows[0] == "method,space,seed,epoch,regret" and len(rows) == 1 + 4  # 4 methods x 1 seed x 1 epoch
    assert "GAEA PC-DARTS | nb1shot1-1" in (tmp_path / "table.md").read_text()
