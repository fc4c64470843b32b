"""train_eval.py: published parameter counts, NB101 network vs the benchmark's parameter counts, the optimiser and
schedules in closed form, smoke runs per protocol (incl. ImageFolder), exact resume equivalence, a 2-process gloo
run under torchrun, and clear errors on bad input."""
import csv
import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import spaces
import train_eval

ROOT = Path(__file__).resolve().parents[1]
NB201_CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
NB101_SPEC = json.dumps({"matrix": [[0, 1, 1, 0, 1], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]],
                         "ops": ["input", "conv3x3-bn-relu", "maxpool3x3", "conv1x1-bn-relu", "output"]})


@pytest.fixture
def tiny_npz(tmp_path) -> str:
    """64 training / 32 test images, 32 px, 10 classes (named cifar10 so the NB201 table column is c10)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "cifar10_tiny.npz"
    np.savez(path, x_train=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), y_train=np.arange(64) % 10,
             x_test=rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8), y_test=np.arange(32) % 10)
    return str(path)


def tiny(npz, out, *extra):
    return ["--dataset", npz, "--epochs", "1", "--batch-size", "16", "--C", "4", "--layers", "3",
            "--device", "cpu", "--out-dir", str(out), *extra]


def resolved(genotype_text, *extra):
    g = train_eval.read_genotype(genotype_text)
    return train_eval.resolve(train_eval.parse_args(["--genotype", genotype_text, *extra]), g), g


# ------------------------------------------------------------------------------------------ networks
@pytest.mark.parametrize("name,expected", [("DARTS_V2", 3_349_342), ("PC_DARTS", 3_634_678), ("NASP", 7_363_486)])
def test_darts_eval_network_matches_published_parameter_counts(name, expected):
    args, g = resolved(name)
    assert (args.protocol, args.C, args.layers, args.auxiliary_weight) == ("darts-cifar", 36, 20, 0.4)
    net = train_eval.build_network(g, args, 10)
    assert spaces.count_parameters(net) == expected  # DARTS_V2 3.3M, PC-DARTS 3.6M, NASP-12 7.4M as published
    if name == "DARTS_V2":  # the auxiliary head exists but is not counted (DARTS' convention)
        assert sum(p.numel() for p in net.parameters()) - expected == 476_426


def test_darts_imagenet_network_mobile_setting():
    args, g = resolved("DARTS_V2", "--dataset", "imagenet")
    assert (args.protocol, args.C, args.layers, args.batch_size, args.lr, args.label_smoothing) == \
        ("darts-imagenet", 48, 14, 1024, 0.5, 0.1)
    with torch.device("meta"):
        n = spaces.count_parameters(train_eval.build_network(g, args, 1000))
    assert n == 4_718_752 and round(n / 1e6, 1) == 4.7  # DARTS README: 4.7M in the mobile setting
    net = spaces.DartsEvalNetworkImageNet(g, C=8, layers=6, num_classes=7).train()
    logits, aux = net(torch.randn(2, 3, 224, 224))  # 28x28 after the stems; the auxiliary head sees 7x7
    assert logits.shape == aux.shape == (2, 7)
    assert net.eval()(torch.randn(1, 3, 224, 224))[1] is None


def test_protocol_defaults_are_the_papers():
    args, _ = resolved(NB201_CELL)
    assert (args.optimizer, args.lr, args.wd, args.batch_size, args.epochs, args.schedule) == \
        ("sgd-nesterov", 0.1, 5e-4, 256, 200, "cosine-step")
    net = train_eval.build_network(train_eval.read_genotype(NB201_CELL), args, 10)
    assert spaces.count_parameters(net) == 1_288_506  # the benchmark's params for this cell (CIFAR-10)
    args, _ = resolved(NB101_SPEC)
    assert (args.optimizer, args.C, args.layers, args.epochs, args.batch_size, args.wd) == \
        ("rmsprop-tf", 128, 3, 108, 256, 1e-4)
    args, _ = resolved("DARTS_V2")
    assert (args.epochs, args.batch_size, args.lr, args.wd, args.drop_path, args.cutout, args.grad_clip) == \
        (600, 96, 0.025, 3e-4, 0.3, 16, 5.0)


def test_nb101_vertex_channels_rule():
    m = [[0, 1, 1, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]]
    assert spaces.nb101_vertex_channels(64, 128, m) == [64, 43, 43, 42, 128]  # remainder to the first ones
    m = [[0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]]
    assert spaces.nb101_vertex_channels(64, 129, m) == [64, 65, 65, 64, 129]  # v1 feeds only v2, v3: max of them


def test_nb101_network_parameters_match_the_benchmark(shared_data):
    """NB101's `params` (trainable parameters at stem 128, 10 classes) for a spread of cells of the 500-cell file."""
    with gzip.open(shared_data / "nb101" / "naslib_nb101_500.csv.gz", "rt") as f:
        rows = {r["pruned_matrix"] + r["pruned_ops"]: r for r in csv.DictReader(f)}
    args, _ = resolved(NB101_SPEC)
    checked = 0
    for key in sorted(rows)[::10]:  # 31 of the 301 distinct cells
        r = rows[key]
        spec = spaces.NB101Spec(tuple(tuple(int(c) for c in row) for row in r["pruned_matrix"].split(";")),
                                tuple(r["pruned_ops"].split(",")))
        with torch.device("meta"):
            net = train_eval.build_network(spec, args, 10)
        assert spaces.count_parameters(net) == round(float(r["params"]) * 1e6), key
        checked += 1
    assert checked >= 30


def test_nb101_network_prunes_and_runs():
    spec = spaces.NB101Spec(((0, 1, 0, 1), (0, 0, 0, 1), (0, 0, 0, 0), (0, 0, 0, 0)),
                            ("input", "conv3x3-bn-relu", "maxpool3x3", "output"))  # vertex 2 dangles
    net = spaces.NB101Network(spec, C=8, cells_per_stack=1)
    assert len(net.spec.ops) == 3 and net(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    with torch.device("meta"):  # the dangling vertex has no parameters: same count as the pruned spec
        assert spaces.count_parameters(net) == spaces.count_parameters(spaces.NB101Network(spec.pruned(), C=8,
                                                                                           cells_per_stack=1))


# ------------------------------------------------------------------------------------ optimiser, lr
def test_tf_rmsprop_closed_form():
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = train_eval.TFRMSprop([w], lr=0.1, rho=0.9, momentum=0.9, eps=1.0, weight_decay=0.1)
    ms, mom, x = 1.0, 0.0, 1.0
    for step in range(2):
        opt.zero_grad()
        (2 * w).sum().backward()
        opt.step()
        g = 2 + 0.1 * x  # L2 term added to the gradient
        ms = 0.9 * ms + 0.1 * g * g  # mean square starts at 1 (TF1)
        mom = 0.9 * mom + 0.1 * g / math.sqrt(ms + 1.0)  # epsilon inside the root, lr inside the momentum
        x -= mom
        assert w.item() == pytest.approx(x, rel=1e-6)
        if step == 0:
            assert w.item() == pytest.approx(1 - 0.1 * 2.1 / math.sqrt(2.341), rel=1e-6)


def test_lr_schedules():
    darts, _ = resolved("DARTS_V2", "--epochs", "4")
    assert [train_eval.lr_factor(s, 10, darts) for s in (0, 9, 10, 20, 39)] == pytest.approx(
        [1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))])
    imnet, _ = resolved("DARTS_V2", "--dataset", "imagenet")  # E=250, warm-up 5
    assert [train_eval.lr_factor(e * 3, 3, imnet) for e in (0, 4, 5, 100, 246, 249)] == pytest.approx(
        [1 / 5, 241 / 245, 240 / 245, 145 / 245, 4 / (245 * 5), 1 / (245 * 5)])
    nb201, _ = resolved(NB201_CELL, "--epochs", "2")
    assert [train_eval.lr_factor(s, 5, nb201) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)


# ----------------------------------------------------------------------------------------- runs
def test_nb201_run_with_benchmark_figure(tiny_npz, tmp_path, shared_data, capsys):
    table = str(shared_data / "nb201" / "nb201_oracle.csv.gz")
    r = train_eval.main(["--genotype", NB201_CELL, "--nb201-table", table,
                         *tiny(tiny_npz, tmp_path, "--layers", "1")])
    assert r["benchmark"]["oracle_c10_test_200"] == pytest.approx(94.363333, abs=1e-4)  # the benchmark's figure
    assert r["benchmark"]["oracle_test"] == r["benchmark"]["oracle_c10_test_200"]  # data.oracle_metrics' columns
    out = capsys.readouterr().out
    assert "oracle_c10_test_200 94.36%" in out and "this run:" in out
    run = Path(r["run_dir"])
    assert {p.name for p in run.iterdir()} >= {"args.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "cell.dot"}
    assert json.loads((run / "args.json").read_text())["optimizer"] == "sgd-nesterov"
    assert spaces.parse_genotype(json.dumps(json.loads((run / "summary.json").read_text())["genotype"])) == \
        spaces.parse_genotype(NB201_CELL)


def test_nb101_spec_run_trains(tiny_npz, tmp_path):
    r = train_eval.main(["--genotype", NB101_SPEC, *tiny(tiny_npz, tmp_path, "--layers", "1", "--epochs", "2")])
    history = [json.loads(line) for line in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == [1, 2] and all(math.isfinite(m["train_loss"]) for m in history)
    ckpt = torch.load(Path(r["run_dir"]) / "checkpoint.pt", weights_only=True)
    assert set(ckpt["state"]["opt"]["state"][0]) == {"ms", "mom"}  # the TF-style RMSProp did the steps


def test_genotype_json_from_a_search_run(tiny_npz, tmp_path):
    """What algos/*.py write (genotype.json with the genotype under 'genotype') trains directly."""
    path = tmp_path / "search" / "genotype.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"algorithm": "darts", "genotype": spaces.PUBLISHED["PC_DARTS"].to_json()}))
    r = train_eval.main(["--genotype", str(path), *tiny(tiny_npz, tmp_path / "out")])
    assert Path(r["run_dir"]).name.startswith("eval_search_") and r["protocol"] == "darts-cifar"
    assert r["params"] == spaces.count_parameters(spaces.DartsEvalNetwork(spaces.PUBLISHED["PC_DARTS"], 4, 3, 10))


def test_imagenet_folder_run(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / "in" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "in" / split / c / f"{i}.png")
    # 6 epochs: the linear schedule decays over E - 5 epochs (fewer are refused; E < 5 gave a negative lr)
    r = train_eval.main(["--genotype", "DARTS_V2", "--dataset", "imagenet", "--data-dir", str(tmp_path / "in"),
                         "--epochs", "6", "--batch-size", "4", "--C", "8", "--layers", "3", "--workers", "0",
                         "--device", "cpu", "--out-dir", str(tmp_path / "out")])
    assert r["protocol"] == "darts-imagenet" and r["test_top5"] == 1.0  # 2 classes: top-5 is always right
    assert r["params"] == spaces.count_parameters(spaces.DartsEvalNetworkImageNet(spaces.PUBLISHED["DARTS_V2"], 8, 3, 2))


# --------------------------------------------------------------------------------------- resume
class _Killed(Exception):
    pass


def test_resume_equals_uninterrupted_run(tiny_npz, tmp_path, monkeypatch):
    """2 epochs straight == 1 epoch, killed right after its checkpoint, resumed for the second: identical weights,
    optimiser state and metrics (DARTS network: drop path, auxiliary head, cutout, shuffling all draw randomness)."""
    common = tiny(tiny_npz, tmp_path, "--genotype", "DARTS_V2", "--epochs", "2")
    straight = train_eval.main([*common, "--run-name", "straight"])

    real_save = data.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 1:
            raise _Killed
    monkeypatch.setattr(data, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        train_eval.main([*common, "--run-name", "killed"])
    monkeypatch.setattr(data, "save_checkpoint", real_save)
    torch.manual_seed(12345)  # the resumed process's global RNG must not matter
    resumed = train_eval.main([*common, "--run-name", "killed", "--resume"])

    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["state"]["model"].items():
        assert torch.equal(v, b["state"]["model"][k]), k
    for i, s in a["state"]["opt"]["state"].items():
        assert torch.equal(s["momentum_buffer"], b["state"]["opt"]["state"][i]["momentum_buffer"])
    untimed = lambda hist: [{k: v for k, v in m.items() if not k.endswith("_s")} for m in hist]  # noqa: E731
    assert untimed(a["history"]) == untimed(b["history"])
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert resumed["test_acc"] == straight["test_acc"] and resumed["test_loss"] == straight["test_loss"]


def test_resume_refuses_other_genotype_or_settings(tiny_npz, tmp_path):
    argv = tiny(tiny_npz, tmp_path, "--genotype", "DARTS_V2", "--run-name", "r")
    r = train_eval.main(argv)
    with pytest.raises(data.ResumeError, match="--genotype 'DARTS_V2' -> 'PC_DARTS'"):
        train_eval.main([*argv, "--genotype", "PC_DARTS", "--resume"])
    with pytest.raises(data.ResumeError, match="--C 4 -> 8"):
        train_eval.main([*argv, "--C", "8", "--resume"])
    with pytest.raises(data.ResumeError, match="no run to resume"):
        train_eval.main([*argv, "--run-name", "nothing", "--resume"])
    again = train_eval.main([*argv, "--resume"])  # finished: same summary
    assert again["test_acc"] == r["test_acc"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    data.save_checkpoint(path, {"epoch": 1})

    def torn_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError):
        data.save_checkpoint(path, {"epoch": 2})
    assert data.load_checkpoint(path)["epoch"] == 1 and os.listdir(tmp_path) == ["checkpoint.pt"]


# ---------------------------------------------------------------------------------- distributed
def test_torchrun_two_processes_gloo(tiny_npz, tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(ROOT / "train_eval.py"), "--genotype", NB201_CELL, *tiny(tiny_npz, out, "--layers", "1", "--epochs", "2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = list(out.iterdir())
    assert len(runs) == 1  # rank 0 writes, the other rank does not
    assert [json.loads(line)["epoch"] for line in (runs[0] / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert proc.stdout.count("results in") == 1 and proc.stdout.count("epoch 2/2 |") == 1
    ckpt = torch.load(runs[0] / "checkpoint.pt", weights_only=True)
    assert ckpt["settings"]["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # each rank its own drop-path stream
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert 0.0 <= summary["test_acc"] <= 1.0


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("argv,error", [
    (["--genotype", "NOT_A_GENOTYPE"], spaces.GenotypeError),
    (["--genotype", "|nor_conv_3x3~0|+|bogus~0|skip_connect~1|+|none~0|none~1|none~2|"], spaces.GenotypeError),
    (["--genotype", '{"matrix": [[0, 1], [1, 0]], "ops": ["input", "output"]}'], spaces.GenotypeError),
    (["--genotype", "DARTS_V2", "--nb201-table", "table.csv"], spaces.SpaceError),
    (["--genotype", NB201_CELL, "--drop-path", "0.2"], spaces.SpaceError),
    (["--genotype", NB201_CELL, "--dataset", "imagenet"], spaces.SpaceError),
    (["--genotype", "DARTS_V2", "--workers", "4"], spaces.SpaceError),  # ImageFolder only: never silently ignored
    (["--genotype", "DARTS_V2", "--dataset", "imagenet", "--lr-min", "0.01"], spaces.SpaceError),
    (["--genotype", "DARTS_V2", "--dataset", "missing.npz"], data.DataError),
    (["--genotype", "DARTS_V2", "--dataset", "imagenet", "--data-dir", "/nonexistent"], data.DataError),
])
def test_bad_input_fails_before_writing(argv, error, tmp_path):
    with pytest.raises(error):
        train_eval.main([*argv, "--device", "cpu", "--out-dir", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    proc = subprocess.run([sys.executable, str(ROOT / "train_eval.py"), "--genotype", "|broken", "--out-dir",
                           str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit) as exit_info:
        train_eval.parse_args(["--epochs", "3"])
    assert exit_info.value.code == 2 and "--genotype is required" in capsys.readouterr().err
