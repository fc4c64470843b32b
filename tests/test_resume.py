"""Checkpoints and --resume in every algos file (data.Run): a run stopped after any epoch, or killed mid-epoch,
and resumed ends exactly as the uninterrupted run; refusals; Ctrl-C; TensorBoard; progress; non-finite losses."""
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import data

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "3", "--C", "4", "--batch-size", "16", "--train-subset", "64", "--layers", "1", "--space", "nb201"]
# per algorithm: extra flags so that every phase of the search (warm-up, architecture steps) falls inside 3 epochs
ALGOS = {"darts": [], "gaea_darts_erm": [], "gaea_pcdarts": ["--warmup-epochs", "1"], "xnas": [],
         "gaea_gdas": ["--warmup-epochs", "1"], "nasp": [], "asng": []}
DARTS_SPACE = ["--space", "darts", "--layers", "3", "--C", "8"]


class Killed(Exception):
    pass


def strip_times(obj):
    """Everything but wall-clock times (`*_s` keys)."""
    if isinstance(obj, dict):
        return {k: strip_times(v) for k, v in obj.items() if not k.endswith("_s")}
    if isinstance(obj, list):
        return [strip_times(v) for v in obj]
    return obj


def outputs(run_dir: Path) -> tuple[list, dict]:
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return strip_times(metrics), strip_times(json.loads((run_dir / "genotype.json").read_text()))


def stop_after(monkeypatch, k: int):
    """The run dies right after its k-th checkpoint (before that epoch's metrics line is written)."""
    real, calls = data.save_checkpoint, {"n": 0}

    def save_then_die(path, obj):
        real(path, obj)
        calls["n"] += 1
        if calls["n"] == k:
            raise Killed

    monkeypatch.setattr(data, "save_checkpoint", save_then_die)


@pytest.mark.parametrize("algo,space", [*[(a, "nb201") for a in ALGOS], ("gaea_pcdarts", "darts"), ("asng", "darts")])
def test_stop_after_an_epoch_and_resume_equals_uninterrupted(algo, space, tmp_path, tiny_npz, monkeypatch):
    mod = importlib.import_module(algo)
    argv = [*TINY, *ALGOS[algo], "--dataset", tiny_npz, "--out-dir", str(tmp_path), *(DARTS_SPACE if space == "darts" else [])]
    full = Path(mod.main([*argv, "--run-name", "full"])["run_dir"])
    stop = 1 if space == "darts" else 2
    stop_after(monkeypatch, stop)
    with pytest.raises(Killed):
        mod.main([*argv, "--run-name", "part"])
    monkeypatch.undo()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    part = tmp_path / "part"
    logged = (part / "metrics.jsonl").read_text().splitlines() if (part / "metrics.jsonl").exists() else []
    assert len(logged) == stop - 1  # died before that epoch's metrics line
    assert not (part / "genotype.json").exists()
    mod.main([*argv, "--run-name", "part", "--resume"])
    assert outputs(part) == outputs(full)  # bit-identical losses, genotype and architecture state
    assert [m["epoch"] for m in outputs(part)[0]] == [1, 2, 3]


def test_checkpoint_holds_the_named_state_and_every_rng(tmp_path, tiny_npz):
    import asng
    res = asng.main([*TINY, "--dataset", tiny_npz, "--out-dir", str(tmp_path), "--epochs", "1"])
    ckpt = torch.load(Path(res["run_dir"]) / data.CHECKPOINT, weights_only=True)
    assert set(ckpt["state"]) == {"model", "asng", "opt", "sched", "augment_gen", "sample_gen", "data_order"}
    assert {"theta", "s", "Delta", "gamma"} <= set(ckpt["state"]["asng"])
    assert len(ckpt["rng"]) == 1 and set(ckpt["rng"][0]) == {"torch", "cuda", "numpy", "python"}  # one per rank
    assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 1


def _cli(algo, *args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "algos" / f"{algo}.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=kw.get("cwd"))


def _wait_for_epochs(run_dir: Path, n: int, proc, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        f = run_dir / "metrics.jsonl"
        if f.exists() and len(f.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the run did not progress")


def test_sigkill_mid_epoch_and_sigint_then_resume_match_the_uninterrupted_run(tmp_path, tiny_npz):
    args = ["--space", "nb201", "--layers", "1", "--C", "4", "--batch-size", "8", "--train-subset", "96",
            "--epochs", "3", "--dataset", tiny_npz, "--out-dir", str(tmp_path)]
    ref = _cli("darts", *args, "--run-name", "ref")
    assert ref.wait(120) == 0, ref.communicate()

    killed = _cli("darts", *args, "--run-name", "killed")
    _wait_for_epochs(tmp_path / "killed", 1, killed)
    time.sleep(0.15)  # well inside epoch 2 (an epoch takes ~0.5 s here)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "genotype.json").exists()
    resumed = _cli("darts", *args, "--run-name", "killed", "--resume")
    assert resumed.wait(120) == 0, resumed.communicate()

    stopped = _cli("darts", *args, "--run-name", "stopped")
    _wait_for_epochs(tmp_path / "stopped", 1, stopped)
    stopped.send_signal(signal.SIGINT)
    _, err = stopped.communicate(timeout=60)
    assert stopped.returncode == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Resume with: " in lines[0], err
    assert not [p.name for p in (tmp_path / "stopped").iterdir() if p.name.startswith(".")]  # no temporary files
    cmd = lines[0].split("Resume with: ", 1)[1].split()
    assert cmd[0] == "python" and "--resume" in cmd
    again = subprocess.run([sys.executable, *cmd[1:]], capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert again.returncode == 0, again.stderr
    for name in ("killed", "stopped"):
        assert outputs(tmp_path / name) == outputs(tmp_path / "ref"), name


@pytest.fixture
def finished(tmp_path, tiny_npz):
    import darts
    argv = [*TINY, "--epochs", "2", "--dataset", tiny_npz, "--out-dir", str(tmp_path), "--run-name", "r"]
    darts.main(argv)
    return darts, argv, tmp_path / "r"


def _snapshot(run_dir: Path) -> dict:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


@pytest.mark.parametrize("change,message", [(["--C", "8"], "--c 4 -> 8"), (["--seed", "3"], "--seed"),
                                            (["--epochs", "5"], "--epochs"), (["--space", "darts", "--layers", "3"], "--space")])
def test_resume_refuses_other_settings_and_changes_nothing(finished, change, message):
    darts, argv, run_dir = finished
    before = _snapshot(run_dir)
    with pytest.raises(data.ResumeError, match=message.replace("--c", "--C")):
        darts.main([*argv, *change, "--resume"])
    assert _snapshot(run_dir) == before


def test_resume_refuses_missing_and_corrupt_checkpoints(finished, tmp_path):
    darts, argv, run_dir = finished
    with pytest.raises(data.ResumeError, match="no run to resume"):
        darts.main([*argv[:-1], "other", "--resume"])
    (run_dir / data.CHECKPOINT).write_bytes(b"not a checkpoint" * 10)
    before = _snapshot(run_dir)
    with pytest.raises(data.ResumeError, match="not a nasref checkpoint"):
        darts.main([*argv, "--resume"])
    assert _snapshot(run_dir) == before
    proc = subprocess.run([sys.executable, str(ROOT / "algos" / "darts.py"), *argv, "--resume"], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_resume_of_a_finished_run_rewrites_the_same_results(finished):
    darts, argv, run_dir = finished
    before = outputs(run_dir)
    darts.main([*argv, "--resume"])
    assert outputs(run_dir) == before


def test_sampler_resumes_mid_pass_and_shards_across_ranks():
    s = data.SeededSampler(10, seed=0)
    it = iter(s)
    head = [next(it) for _ in range(4)]
    state = s.state_dict()
    rest, following = list(it), list(s)
    other = data.SeededSampler(10, seed=99)
    other.load_state_dict(state)
    assert list(other) == rest and list(other) == following
    assert sorted(head + rest) == list(range(10))
    shards = [list(data.SeededSampler(10, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert all(len(sh) == 4 for sh in shards) and set(sum(shards, [])) == set(range(10))
    assert sum(shards, []) != list(range(10))


def test_tensorboard_events_hold_the_expected_tags(tmp_path, tiny_npz):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    import gaea_pcdarts
    res = gaea_pcdarts.main([*TINY, "--warmup-epochs", "1", "--dataset", tiny_npz, "--out-dir", str(tmp_path),
                             "--tensorboard", "--log-every", "2"])
    acc = EventAccumulator(str(Path(res["run_dir"]) / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"epoch/train_loss", "epoch/arch_loss", "epoch/entropy_normal", "step/train_loss"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("epoch/train_loss")] == [1, 2, 3]
    assert "arch/normal" in tags["images"] and len(acc.Images("arch/normal")) == 3
    assert any("genotype" in t for t in tags["tensors"])  # add_text is stored as a tensor summary


def test_tensorboard_missing_fails_in_one_line_before_writing(tmp_path, tiny_npz, monkeypatch):
    import darts
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.raises(data.DataError, match="pip install tensorboard"):
        darts.main([*TINY, "--dataset", tiny_npz, "--out-dir", str(tmp_path), "--tensorboard"])
    assert not any(tmp_path.iterdir())


def test_heatmap_image():
    img = data.heatmap(torch.tensor([[0.0, 1.0], [0.5, 0.5]]), cell=3)
    assert img.shape == (6, 6, 3) and img.dtype.name == "uint8"
    assert (img[0, 0] == [68, 1, 84]).all() and (img[0, 3] == [253, 231, 37]).all()


def test_progress_lines_are_bounded_when_not_a_tty(tmp_path, tiny_npz, capsys):
    import darts
    darts.main(["--space", "nb201", "--layers", "1", "--C", "4", "--batch-size", "2", "--train-subset", "96",
                "--epochs", "2", "--dataset", tiny_npz, "--out-dir", str(tmp_path)])  # 24 steps per epoch
    lines = capsys.readouterr().out.splitlines()
    for epoch in (1, 2):
        steps = [line for line in lines if line.startswith(f"epoch {epoch}/2 step")]
        assert 1 <= len(steps) <= 10
        assert "steps/s" in steps[0] and "ETA epoch" in steps[0] and "train_loss" in steps[0]


def test_non_finite_loss_stops_with_one_line_and_keeps_valid_files(tmp_path, tiny_npz, monkeypatch):
    import darts
    argv = [*TINY, "--dataset", tiny_npz, "--out-dir", str(tmp_path), "--run-name", "nan"]
    real_step, real_end, armed = darts.weight_step, data.Run.end_epoch, []

    def exploding(*a):
        loss, acc = real_step(*a)
        return (float("nan") if armed else loss), acc

    def end_then_arm(self, *a, **k):
        real_end(self, *a, **k)
        armed.append(True)  # from the second epoch on the loss is NaN

    monkeypatch.setattr(darts, "weight_step", exploding)
    monkeypatch.setattr(data.Run, "end_epoch", end_then_arm)
    with pytest.raises(data.NonFiniteLoss, match=r"non-finite train_loss at epoch 2 step 1/\d+; .*--lr"):
        darts.main(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run_dir = tmp_path / "nan"
    assert not (run_dir / "genotype.json").exists()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]
    assert "NaN" not in (run_dir / "metrics.jsonl").read_text()
    assert torch.load(run_dir / data.CHECKPOINT, weights_only=True)["epoch"] == 1


# --------------------------------------------------------------------- the run lifecycle's defects, one test each
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_before_the_first_checkpoint_leaves_no_directory(tmp_path, sig, code):
    args = ["--space", "nb201", "--layers", "1", "--C", "4", "--batch-size", "8", "--train-subset", "2000",
            "--epochs", "2", "--dataset", "synthetic", "--out-dir", str(tmp_path), "--run-name", "early"]
    proc = _cli("darts", *args)
    t0 = time.time()
    while not (tmp_path / "early" / "args.json").exists():
        assert time.time() - t0 < 60 and proc.poll() is None
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and "nothing was kept" in err
    assert not (tmp_path / "early").exists()


def test_sigterm_keeps_the_checkpoint_prints_the_resume_line_and_exits_143(tmp_path, tiny_npz):
    args = ["--space", "nb201", "--layers", "1", "--C", "4", "--batch-size", "8", "--train-subset", "96",
            "--epochs", "3", "--dataset", tiny_npz, "--out-dir", str(tmp_path)]
    ref = _cli("darts", *args, "--run-name", "ref")
    assert ref.wait(120) == 0, ref.communicate()
    proc = _cli("darts", *args, "--run-name", "preempted")
    _wait_for_epochs(tmp_path / "preempted", 1, proc)
    proc.send_signal(signal.SIGTERM)  # what SLURM and Kubernetes send on preemption
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 143 and len(lines) == 1 and "terminated (SIGTERM)" in lines[0] and "Resume with: " in lines[0]
    assert sorted(p.name for p in (tmp_path / "preempted").iterdir()) == ["args.json", "checkpoint.pt", "metrics.jsonl"]
    cmd = lines[0].split("Resume with: ", 1)[1].split()
    again = subprocess.run([sys.executable, *cmd[1:]], capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert again.returncode == 0, again.stderr
    assert outputs(tmp_path / "preempted") == outputs(tmp_path / "ref")


def test_a_second_process_on_one_run_directory_is_refused_and_a_stale_lock_is_not(finished):
    darts, argv, run_dir = finished
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / data.LOCK).write_text(f"{socket.gethostname()} {sleeper.pid}")  # a live process holds the run
        before = _snapshot(run_dir)
        with pytest.raises(data.ResumeError, match=f"in use by process {sleeper.pid}"):
            darts.main([*argv, "--resume"])
        assert _snapshot(run_dir) == before  # nothing appended to metrics.jsonl, lock untouched
    finally:
        sleeper.kill()
        sleeper.wait()
    res = darts.main([*argv, "--resume"])  # its process is gone: the lock is stale and taken over
    assert [m["epoch"] for m in outputs(Path(res["run_dir"]))[0]] == [1, 2]
    assert not (run_dir / data.LOCK).exists()  # released at the end


def test_concurrent_resumes_append_nothing_twice(tmp_path, tiny_npz):
    """Two real processes resume one run at the same time: one runs, the other is refused in one line."""
    args = ["--space", "nb201", "--layers", "1", "--C", "4", "--batch-size", "8", "--train-subset", "96",
            "--epochs", "3", "--dataset", tiny_npz, "--out-dir", str(tmp_path), "--run-name", "r"]
    first = _cli("darts", *args)
    _wait_for_epochs(tmp_path / "r", 1, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    a, b = _cli("darts", *args, "--resume"), _cli("darts", *args, "--resume")
    codes = sorted([a.wait(120), b.wait(120)])
    errs = a.communicate()[1] + b.communicate()[1]
    assert codes == [0, 1] and "is in use by process" in errs, errs
    assert [json.loads(line)["epoch"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_killed_in_epoch_one_restarts_in_the_same_directory(tmp_path, tiny_npz):
    import darts
    argv = [*TINY, "--epochs", "1", "--dataset", tiny_npz, "--out-dir", str(tmp_path), "--run-name", "r"]
    run_dir = tmp_path / "r"  # what a SIGKILL in epoch 1 leaves: args.json and the dead process's lock
    run_dir.mkdir()
    (run_dir / "args.json").write_text("{}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / data.LOCK).write_text(f"{socket.gethostname()} {dead.pid}")
    with pytest.raises(data.ResumeError, match="never finished an epoch; run the same command without --resume"):
        darts.main([*argv, "--resume"])
    res = darts.main(argv)  # the advice holds: it starts anew in RUN, not in RUN_1
    assert Path(res["run_dir"]) == run_dir and sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_resume_removes_a_temporary_checkpoint_left_by_a_kill(finished):
    darts, argv, run_dir = finished
    (run_dir / ".checkpoint.pt.4242.tmp").write_bytes(b"half")
    (run_dir / ".checkpoint.pt.ab12cd.tmp").write_bytes(b"half")
    darts.main([*argv, "--resume"])
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_garbage_checkpoint_is_refused_as_not_a_nasref_checkpoint(finished):
    darts, argv, run_dir = finished
    for junk in (b"\x80\x04garbage" * 20, b"PK\x03\x04 not a zip", b""):
        (run_dir / data.CHECKPOINT).write_bytes(junk)
        with pytest.raises(data.ResumeError) as err:
            darts.main([*argv, "--resume"])
        assert "is not a nasref checkpoint" in str(err.value) and len(str(err.value)) < len(str(run_dir)) + 100
    torch.save({"epoch": 1}, run_dir / data.CHECKPOINT)  # a readable torch file, but not ours
    with pytest.raises(data.ResumeError, match="not a nasref checkpoint"):
        darts.main([*argv, "--resume"])


def _bare_run(tmp_path, name="r"):
    import argparse
    return data.Run(argparse.Namespace(epochs=3, out_dir=str(tmp_path), run_name=name, resume=False,
                                       tensorboard=False, deterministic=False, log_every=50), name, argv=[])


def test_non_finite_test_loss_or_architecture_stops_and_writes_nothing_non_finite(tmp_path):
    run = _bare_run(tmp_path)
    run.restore({})
    run.end_epoch({}, {"epoch": 1, "train_loss": 1.0}, {"normal": torch.ones(2, 3)})
    with pytest.raises(data.NonFiniteLoss, match="non-finite supernet_test_loss at the end of epoch 2; .*--lr"):
        run.end_epoch({}, {"epoch": 2, "train_loss": 1.0, "supernet_test_loss": float("inf")})
    run = _bare_run(tmp_path, "a")
    run.restore({})
    with pytest.raises(data.NonFiniteLoss, match=r"architecture weights \(normal\).*--arch-lr\); nothing was kept"):
        run.end_epoch({}, {"epoch": 1, "train_loss": 1.0}, {"normal": torch.tensor([[0.5, float("nan")]])})
    assert not (tmp_path / "a").exists()  # stopped before its first checkpoint: no half-made directory
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]
    run = _bare_run(tmp_path, "f")
    run.restore({})
    run.end_epoch({}, {"epoch": 1, "train_loss": 1.0})
    with pytest.raises(data.NonFiniteLoss, match="supernet_test_loss after the last epoch"):
        run.finish({"supernet_test_loss": float("nan")}, "g", "digraph {}")
    assert not (tmp_path / "f" / "genotype.json").exists()


def test_huge_learning_rate_stops_instead_of_writing_a_genotype(tmp_path, tiny_npz):
    proc = subprocess.run([sys.executable, str(ROOT / "algos" / "darts.py"), *TINY, "--epochs", "2", "--lr", "1e6",
                           "--dataset", tiny_npz, "--out-dir", str(tmp_path), "--run-name", "big"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(err) == 1 and "non-finite" in err[0] and "--lr" in err[0], proc.stderr
    assert not (tmp_path / "big" / "genotype.json").exists()
    assert "NaN" not in "".join(p.read_text() for p in (tmp_path / "big").glob("*.json*")) if (tmp_path / "big").exists() else True
