"""algos/darts.py: smoke runs on every space, outputs, determinism, the update functions, bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import darts
import spaces

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "2", "--C", "4", "--batch-size", "16", "--train-subset", "64"]


@pytest.fixture
def run(tmp_path, tiny_npz):
    def _run(out, *extra):
        return darts.main([*TINY, "--dataset", tiny_npz, "--out-dir", str(out), *extra])
    return _run


@pytest.mark.parametrize("space", [s for s in spaces.SPACES if s != "enas"])  # enas: asng.py only
def test_smoke_every_space_writes_all_outputs(run, tmp_path, space):
    layers = ["--layers", "3"] if space == "darts" else ["--layers", "1"]
    res = run(tmp_path, "--space", space, *layers)
    run = Path(res["run_dir"])
    assert {p.name for p in run.iterdir()} == {"args.json", "metrics.jsonl", "genotype.json", "cell.dot", "checkpoint.pt"}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(k in metrics[-1] for k in ("train_loss", "train_acc", "arch_loss", "arch_acc", "genotype"))
    assert any(k.startswith("entropy_") for k in metrics[-1])
    g = spaces.parse_genotype(str(run / "genotype.json"))
    assert str(g) == metrics[-1]["genotype"]
    assert (run / "cell.dot").read_text().startswith("digraph")


def test_single_level_uses_the_whole_training_set(run, tmp_path):
    res = run(tmp_path, "--space", "nb201", "--layers", "1", "--single-level", "--epochs", "1")
    assert json.loads((Path(res["run_dir"]) / "args.json").read_text())["single_level"] is True


def test_same_seed_same_result(run, tmp_path):
    a = run(tmp_path / "a", "--space", "nb201", "--layers", "1", "--seed", "7")
    b = run(tmp_path / "b", "--space", "nb201", "--layers", "1", "--seed", "7")
    assert a["genotype"] == b["genotype"] and a["alphas"] == b["alphas"]
    c = run(tmp_path / "c", "--space", "nb201", "--layers", "1", "--seed", "8")
    assert c["alphas"] != a["alphas"]


def test_nb201_table_logs_the_oracle_accuracy(run, tmp_path, shared_data):
    res = run(tmp_path, "--space", "nb201", "--layers", "1", "--epochs", "1",
               "--nb201-table", str(shared_data / "nb201" / "nb201_oracle.csv.gz"))
    m = json.loads((Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < m["oracle_c10_test_200"] <= 100 and "oracle_c100_test_200" in m


def test_real_cifar10_subset_runs(tmp_path, shared_data):
    res = darts.main(["--space", "nb201", "--dataset", str(shared_data / "images" / "cifar10_partial.npz"),
                      "--epochs", "1", "--C", "4", "--layers", "1", "--batch-size", "32", "--train-subset", "64",
                      "--out-dir", str(tmp_path)])
    assert 0.0 <= res["supernet_test_acc"] <= 1.0


def test_mixture_weights_are_row_softmax():
    alphas = {"normal": torch.tensor([[0.0, 0.0], [1.0, 0.0]])}
    w = darts.mixture_weights(alphas)["normal"]
    assert torch.allclose(w[0], torch.tensor([0.5, 0.5]))
    assert torch.allclose(w[1], torch.tensor([1.0, 0.0]).exp() / (1 + torch.e))
    h = spaces.mean_entropy({"normal": torch.tensor([[0.5, 0.5], [1.0, 0.0]])})["normal"]
    assert abs(h - 0.5 * torch.log(torch.tensor(2.0)).item()) < 1e-6


def test_arch_step_moves_only_alphas_and_weight_step_only_weights():
    torch.manual_seed(0)
    space = spaces.get_space("nb201")
    model = space.supernet(C=4, layers=1)
    alphas = darts.init_alphas(space, "cpu")
    arch_opt = torch.optim.Adam(alphas.values(), 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    a0, w0 = alphas["normal"].detach().clone(), [p.detach().clone() for p in model.parameters()]
    darts.arch_step(model, alphas, arch_opt, x, y)
    assert not torch.equal(alphas["normal"], a0)
    # Adam's first step moves every entry with a non-zero gradient by ~lr (sign of the gradient)
    assert torch.allclose((alphas["normal"] - a0).abs().max(), torch.tensor(3e-4), rtol=0.05)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), w0))
    a1 = alphas["normal"].detach().clone()
    darts.weight_step(model, alphas, opt, x, y, grad_clip=5.0)
    assert torch.equal(alphas["normal"], a1)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), w0))


def _cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "algos" / "darts.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,needle", [
    (["--space", "nb301"], "invalid choice"),
    (["--dataset", "missing.npz"], "missing.npz"),
    (["--dataset", "imagenet-1k"], "unknown dataset"),
    (["--space", "darts", "--nb201-table", "x.csv"], "--nb201-table needs --space nb201"),
    (["--space", "nb201", "--dataset", "synthetic", "--epochs", "1", "--nb201-table", "nope.csv"], "table not found"),
])
def test_bad_input_one_clear_line_and_no_results(tmp_path, args, needle):
    proc = _cli(*args, "--out-dir", "out", cwd=tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert needle in last and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_copied_next_to_spaces_and_data_it_still_runs(tmp_path, tiny_npz):
    """An algos file copied into another project beside spaces.py and data.py works there."""
    for f in ("spaces.py", "data.py"):
        (tmp_path / f).write_text((ROOT / f).read_text())
    (tmp_path / "darts.py").write_text((ROOT / "algos" / "darts.py").read_text())
    proc = subprocess.run([sys.executable, "darts.py", *TINY, "--dataset", tiny_npz, "--space", "nb201", "--layers", "1", "--epochs", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs").is_dir()
