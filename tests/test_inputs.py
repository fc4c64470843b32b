"""Every input to the eight command lines (algos/*.py, train_eval.py) either works or is refused in one line.

The fuzz table below is run against every command line: in-process through `main(argv)` (parse errors end in
SystemExit 2 with argparse's usage + one line; loading errors raise the one-line exceptions the scripts print), and
as real subprocesses for a sample of cases on every script (exit code != 0, no traceback, at most usage + one error
line on stderr). No case may leave a run directory. Success cases: every algorithm for one tiny epoch on grayscale,
channel-first, float and 28-px data; searches and retraining on 8..64 px; train_eval on 28 px with and without the
auxiliary head. `python tests/test_inputs.py` prints the table's counts.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "algos"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import data  # noqa: E402
import spaces  # noqa: E402

SEARCH = ("darts", "gaea_darts_erm", "gaea_pcdarts", "xnas", "gaea_gdas", "nasp", "asng")
CLIS = SEARCH + ("train_eval",)
NB201_CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|"
TINY = ["--C", "4", "--epochs", "1", "--batch-size", "32", "--device", "cpu"]
EXTRA = {"gaea_pcdarts": ["--warmup-epochs", "0"], "gaea_gdas": ["--warmup-epochs", "0"]}  # default warm-ups (10, 50) exceed one epoch
# what a defect looks like in-process (the refusals are subclasses of RuntimeError / ValueError: caught before these)
UNEXPECTED = (ArithmeticError, AssertionError, AttributeError, LookupError, OSError, RuntimeError, TypeError,
              ValueError)


def module(name: str):
    if name == "train_eval":
        import train_eval
        return train_eval
    return __import__(name)


def base_args(cli: str, files: dict) -> list:
    """A tiny run that succeeds; a case's flags come after it and override (argparse: the last value wins)."""
    common = ["--dataset", files["good"], *TINY, "--out-dir", files["out"]]
    if cli == "train_eval":
        return ["--genotype", NB201_CELL, "--layers", "1", *common]
    return ["--space", "nb201", "--layers", "1", *common, *EXTRA.get(cli, [])]


# --------------------------------------------------------------------------------------------- the data
def _arrays(n_train=64, n_test=32, size=16, **over):
    a = data.make_synthetic(n_train, n_test, image_size=size)
    a.update(over)
    return a


def make_files(root: Path) -> dict:
    """Good and bad inputs on disk; returns {name: path}."""
    root.mkdir(parents=True, exist_ok=True)
    f = {"out": str(root / "out"), "root": str(root)}

    def npz(name, **arrays):
        np.savez(root / f"{name}.npz", **arrays)
        f[name] = str(root / f"{name}.npz")

    good = _arrays()
    npz("good", **good)
    y = good["y_train"]
    npz("neg_label", **{**good, "y_train": np.where(np.arange(len(y)) == 3, -1, y)})
    npz("float_label", **{**good, "y_train": y.astype(np.float64) + 0.5})
    npz("onehot_label", **{**good, "y_train": np.eye(10)[y]})
    npz("short_label", **{**good, "y_train": y[:-5]})
    npz("stray_label", **{**good, "y_train": np.where(np.arange(len(y)) == 0, 100000, y)})
    npz("test_label_out", **{**good, "y_test": np.full_like(good["y_test"], 12)})
    npz("str_label", **{**good, "y_train": y.astype(str)})
    npz("empty", **{**good, "x_train": good["x_train"][:0], "y_train": y[:0]})
    x_nan = good["x_train"].astype(np.float32) / 255
    x_nan[0, 0, 0, 0] = np.nan
    npz("nan_pixels", **{**good, "x_train": x_nan, "x_test": good["x_test"].astype(np.float32) / 255})
    x_inf = good["x_train"].astype(np.float32)
    x_inf[1, 2, 3, 1] = np.inf
    npz("inf_pixels", **{**good, "x_train": x_inf})
    npz("normalised", **{**good, "x_train": (good["x_train"] - 128.0) / 64, "x_test": (good["x_test"] - 128.0) / 64})
    npz("size_mismatch", **{**good, "x_test": _arrays(size=8)["x_test"]})
    npz("channel_mismatch", **{**good, "x_test": good["x_test"][..., :1]})
    npz("four_channels", **{**good, "x_train": np.repeat(good["x_train"][..., :1], 4, -1),
                           "x_test": np.repeat(good["x_test"][..., :1], 4, -1)})
    npz("five_d", **{**good, "x_train": good["x_train"][None], "x_test": good["x_test"][None]})
    npz("bool_pixels", **{**good, "x_train": good["x_train"] > 128, "x_test": good["x_test"] > 128})
    npz("too_small", **_arrays(size=4))
    npz("not_square", **{**good, "x_train": good["x_train"][:, :12], "x_test": good["x_test"][:, :12]})
    npz("constant", **{**good, "x_train": np.zeros_like(good["x_train"])})
    npz("one_class", **{**good, "y_train": np.zeros_like(y), "y_test": np.zeros_like(good["y_test"])})
    big = np.random.default_rng(0).integers(0, 256, (4, 300, 300, 3), dtype=np.uint8)  # > MAX_IMAGE_SIZE
    npz("huge", x_train=big, y_train=np.arange(4) % 2, x_test=big[:2], y_test=np.arange(2))
    npz("missing_key", x_train=good["x_train"], y_train=y, x_test=good["x_test"])
    np.savez(root / "object.npz", x_train=np.array([good["x_train"][0], None], dtype=object), y_train=y[:2],
             x_test=good["x_test"], y_test=good["y_test"])
    f["object"] = str(root / "object.npz")
    np.save(root / "single.npy", good["x_train"])
    (root / "single.npy").rename(root / "single.npz")
    f["single"] = str(root / "single.npz")
    (root / "text.npz").write_text("x_train,y_train\n1,2\n")
    f["text_npz"] = str(root / "text.npz")
    (root / "dir.npz").mkdir()
    f["dir_npz"] = str(root / "dir.npz")
    # the layouts that must work
    npz("gray", **{**good, "x_train": good["x_train"].mean(-1).astype(np.uint8),
                   "x_test": good["x_test"].mean(-1).astype(np.uint8)})
    npz("gray1", **{**good, "x_train": good["x_train"][..., :1], "x_test": good["x_test"][..., :1]})
    npz("chw", **{**good, "x_train": good["x_train"].transpose(0, 3, 1, 2), "x_test": good["x_test"].transpose(0, 3, 1, 2)})
    npz("float01", **{**good, "x_train": good["x_train"] / 255.0, "x_test": good["x_test"] / 255.0})
    for size in (8, 28, 64):
        a = _arrays(32, 8, size=size)
        npz(f"gray{size}", **{**a, "x_train": a["x_train"].mean(-1).astype(np.uint8),
                              "x_test": a["x_test"].mean(-1).astype(np.uint8)})
    # files where JSON / CSV is expected
    (root / "binary.bin").write_bytes(bytes(range(256)) * 4)
    f["binary"] = str(root / "binary.bin")
    (root / "latin1.json").write_bytes('{"space": "nb201", "arch_str": "caf\xe9"}'.encode("latin-1"))
    f["latin1"] = str(root / "latin1.json")
    (root / "no_arch.csv").write_text("name,c10_test_200\nfoo,93.1\n")
    f["no_arch"] = str(root / "no_arch.csv")
    (root / "header_only.csv").write_text("arch_str,c10_test_200\n")
    f["header_only"] = str(root / "header_only.csv")
    (root / "not_nb201.csv").write_text("arch_str,c10_test_200\nresnet,93.1\n")
    f["not_nb201"] = str(root / "not_nb201.csv")
    (root / "bad.gz").write_bytes(b"not gzip at all")
    f["bad_gz"] = str(root / "bad.gz")
    (root / "a_file").write_text("I am a file\n")
    f["a_file"] = str(root / "a_file")
    split = {"train": ["int", [str(i) for i in range(20)]], "valid": ["int", ["-1", "2"]]}
    (root / "neg_split.txt").write_text(json.dumps(split))
    f["neg_split"] = str(root / "neg_split.txt")
    for name, g in {"float_index": {"space": "darts", **_darts_json(index=1.9)},
                    "bool_index": {"space": "darts", **_darts_json(index=True)},
                    "dup_concat": {"space": "darts", **_darts_json(concat=[2, 2, 3, 4])},
                    "str_index": {"space": "darts", **_darts_json(index="1")},
                    "list_space": {"space": ["darts"]},
                    "nb201_superscript": {"space": "nb201", "arch_str": "|nor_conv_3x3~\u00b2|+|none~0|none~1|+|none~0|none~1|none~2|"},
                    "nb101_float": {"space": "nb101", "matrix": [[0, 1.0], [0, 0]], "ops": ["input", "output"]}}.items():
        (root / f"{name}.json").write_text(json.dumps(g))
        f[name] = str(root / f"{name}.json")
    (root / "empty_run").mkdir()
    f["empty_run"] = str(root / "empty_run")
    (root / "bad_ckpt").mkdir()
    (root / "bad_ckpt" / "checkpoint.pt").write_bytes(b"\x80\x04garbage")
    f["bad_ckpt"] = str(root / "bad_ckpt")
    return f


def _darts_json(index=1, concat=(2, 3, 4, 5)) -> dict:
    g = spaces.PUBLISHED["DARTS_V2"].to_json()
    g["normal"][1][1] = index
    g["normal_concat"] = list(concat)
    return g


# ------------------------------------------------------------------------------------------ the table
def cases(files: dict) -> list[tuple[str, list]]:
    """(cli, flags) that must be refused."""
    f = files
    numbers = [
        ["--batch-size", "0"], ["--batch-size", "-4"], ["--C", "0"], ["--layers", "0"], ["--epochs", "0"],
        ["--epochs", "-1"], ["--epochs", "1.5"], ["--lr", "-0.1"], ["--lr", "nan"], ["--lr", "inf"], ["--lr", "0"],
        ["--lr-min", "-1"], ["--wd", "-1e-4"], ["--wd", "nan"], ["--momentum", "-0.9"], ["--momentum", "inf"],
        ["--train-subset", "-1"], ["--train-subset", "100000"], ["--seed", "-1"], ["--seed", "x"],
        ["--device", "cuda:3"], ["--device", "gpu"], ["--run-name", "a/b"], ["--run-name", ".."],
        ["--out-dir", f["a_file"]], ["--out-dir", f["a_file"] + "/sub"], ["--epochs", "\u0663"],
        ["--wd=-1e-4"], ["--lr=-1e-3"], ["--dataset", "imagenet32"], ["--dataset", f["root"] + "/missing.npz"],
        ["--run-name", "r" * 300], ["--out-dir", "/proc/nasref_out"],
        ["--out-dir", f["root"], "--run-name", "bad_ckpt", "--resume"],  # garbage checkpoint.pt
        ["--out-dir", f["root"], "--run-name", "empty_run", "--resume"],  # a run that never finished an epoch
        ["--out-dir", f["root"], "--run-name", "no_such_run", "--resume"],
    ]
    datasets = ["neg_label", "float_label", "onehot_label", "short_label", "stray_label", "test_label_out",
                "str_label", "empty", "nan_pixels", "inf_pixels", "normalised", "size_mismatch", "channel_mismatch",
                "four_channels", "five_d", "bool_pixels", "too_small", "not_square", "constant", "missing_key",
                "object", "single", "text_npz", "dir_npz", "one_class", "huge"]
    search_only = [
        ["--grad-clip", "0"], ["--grad-clip", "nan"], ["--train-portion", "0"], ["--train-portion", "1"],
        ["--train-portion", "1.5"], ["--train-portion", "nan"], ["--arch-lr", "-1"],
        ["--space", "darts", "--layers", "2"], ["--space", "darts", "--layers", "1"],
        ["--nb201-table", f["binary"]], ["--nb201-table", f["no_arch"]], ["--nb201-table", f["header_only"]],
        ["--nb201-table", f["not_nb201"]], ["--nb201-table", f["bad_gz"]],
        ["--split-file", f["binary"]], ["--split-file", f["neg_split"]], ["--split-file", f["root"] + "/none.txt"],
        ["--nb201-table", f["root"] + "/none.csv"],
    ]
    specific = {
        "darts": [["--arch-betas", "1", "0.5"], ["--arch-wd", "-1"], ["--single-level", "--train-portion", "0.3"]],
        "gaea_darts_erm": [["--split-file", f["neg_split"], "--train-portion", "0.3"]],
        "gaea_pcdarts": [["--partial-k", "3"], ["--partial-k", "0"], ["--edge-lr", "0"],
                         ["--arch-update", "softmax-adam", "--arch-betas", "0.5", "1.5"]],
        "xnas": [["--expert-clip", "0"], ["--expert-clip", "nan"]],
        "gaea_gdas": [["--tau-min", "0"], ["--tau-max", "-1"], ["--warmup-epochs", "1"], ["--kl-coef", "-1"]],
        "nasp": [["--reg", "-1"], ["--ops", "9"], ["--arch-betas", "0.5", "nan"]],
        "asng": [["--lam", "1"], ["--alpha", "0"], ["--delta-init", "nan"], ["--cutout", "-1"]],
        "train_eval": [
            ["--genotype", f["binary"]], ["--genotype", f["latin1"]], ["--genotype", f["float_index"]],
            ["--genotype", f["bool_index"]], ["--genotype", f["dup_concat"]], ["--genotype", f["str_index"]],
            ["--genotype", f["list_space"]], ["--genotype", f["nb201_superscript"]], ["--genotype", f["nb101_float"]],
            ["--genotype", "|nor_conv_3x3~\u00b2|+|none~0|none~1|+|none~0|none~1|none~2|"],
            ["--genotype", f["empty_run"]], ["--genotype", "DARTS_V2", "--layers", "2"],
            ["--momentum", "0"], ["--drop-path", "1.0"], ["--label-smoothing", "1.5"], ["--cutout", "-1"],
            ["--auxiliary-weight", "-0.4"], ["--genotype", "|nor_conv_3x3~00|+|none~0|none~1|+|none~0|none~1|none~2|"],
            ["--nb201-table", f["binary"]], ["--nb201-table", f["no_arch"]], ["--grad-clip", "nan"],
            ["--genotype", "{bad json"], ["--genotype", '{"space": "nb201", "arch_str": 7}'],
            ["--genotype", "DARTS_V2", "--auxiliary-weight", "0.4", "--cutout", "-3"], ["--genotype", "NOPE"],
        ],
    }
    table = []
    for cli in CLIS:
        flags = numbers + [["--dataset", f[d]] for d in datasets] + specific[cli]
        if cli != "train_eval":
            flags += search_only
        table += [(cli, fl) for fl in flags]
    return table


def run_in_process(cli: str, argv: list, out: Path) -> tuple[str, str]:
    """(outcome, message): outcome is 'refused' (one clean line), 'traceback' (an unexpected exception or a
    multi-line message) or 'accepted'."""
    mod = module(cli)
    refusals = (data.DataError, spaces.SpaceError, spaces.GenotypeError)  # data.ResumeError is a DataError
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            mod.main(argv)
    except SystemExit as e:
        lines = err.getvalue().strip().splitlines()
        usage_ok = bool(lines) and lines[0].startswith("usage:") and all(l.startswith(" ") for l in lines[1:-1])
        ok = e.code == 2 and usage_ok and ": error: " in lines[-1]
        return ("refused" if ok else "traceback"), (lines[-1] if lines else "")
    except refusals as e:
        return ("refused" if "\n" not in str(e) else "traceback"), str(e)
    except UNEXPECTED as e:
        return "traceback", f"{type(e).__name__}: {e}"
    return "accepted", ""


def leftover(out: Path) -> bool:
    """A run directory (or anything) left under --out-dir; removed, so that one defect does not hide the next."""
    found = out.exists() and any(out.iterdir())
    shutil.rmtree(out, ignore_errors=True)
    return found


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("inputs"))


def test_fuzz_table_every_bad_input_is_refused_in_one_line(files):
    problems, out = [], Path(files["out"])
    for cli, flags in cases(files):
        outcome, msg = run_in_process(cli, base_args(cli, files) + flags, out)
        left = leftover(out)
        if outcome != "refused" or left:
            problems.append(f"{cli} {' '.join(flags)}: {outcome} {msg} leftover={left}")
    assert not problems, "\n".join(problems)


def _subprocess(cli: str, flags: list, files: dict):
    script = ROOT / ("train_eval.py" if cli == "train_eval" else f"algos/{cli}.py")
    return subprocess.run([sys.executable, str(script), *base_args(cli, files), *flags], capture_output=True,
                          text=True, timeout=300, cwd=files["root"], env={**os.environ, "OMP_NUM_THREADS": "1"})


SAMPLE = {  # per command line one case as a real process (parse-time and loading-time refusals alternate)
    "darts": ["--device", "gpu"],
    "gaea_darts_erm": ["--nb201-table", "binary"],
    "gaea_pcdarts": ["--partial-k", "3"],
    "xnas": ["--dataset", "short_label"],
    "gaea_gdas": ["--run-name", "a/b"],
    "nasp": ["--dataset", "size_mismatch"],
    "asng": ["--space", "darts", "--layers", "2"],
    "train_eval": ["--genotype", "float_index"],
}


def test_sample_as_subprocesses_exit_nonzero_without_traceback(files):
    jobs = [(cli, [files.get(a, a) for a in flags]) for cli, flags in SAMPLE.items()]
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = list(pool.map(lambda j: _subprocess(*j, files), jobs))
    for (cli, flags), proc in zip(jobs, procs):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, (cli, flags, proc.stderr)
        assert lines and all(l.startswith(("usage:", " ")) for l in lines[:-1]), (cli, flags, proc.stderr)
        assert lines[-1].startswith(("error: ", f"{cli}.py: error: ")), (cli, flags, proc.stderr)
        assert not leftover(Path(files["out"])) and not (Path(files["root"]) / "runs").exists()


@pytest.mark.parametrize("cli", CLIS)
def test_script_entry_points_print_one_error_line(files, cli, capsys, monkeypatch):
    """The `if __name__ == "__main__"` block of every script (run in this process, as python would run it) turns
    each loading-time refusal into `error: ...` and exit status 1."""
    import runpy
    script = ROOT / ("train_eval.py" if cli == "train_eval" else f"algos/{cli}.py")
    for flags in (["--dataset", files["stray_label"]], ["--train-subset", "100000"], ["--dataset", files["text_npz"]]):
        monkeypatch.setattr(sys, "argv", [str(script), *base_args(cli, files), *flags])
        with pytest.raises(SystemExit) as exc:
            runpy.run_path(str(script), run_name="__main__")
        assert str(exc.value.code).startswith("error: ") and "\n" not in str(exc.value.code), (cli, flags)
        assert not leftover(Path(files["out"]))


# ------------------------------------------------------------------------------------------ what works
@pytest.mark.parametrize("cli", SEARCH)
def test_every_search_runs_on_grayscale_channel_first_float_and_28px(files, cli, tmp_path):
    for name in ("gray", "chw", "float01", "gray28"):
        res = module(cli).main(base_args(cli, {**files, "good": files[name], "out": str(tmp_path)}) + ["--run-name", name])
        assert (Path(res["run_dir"]) / "genotype.json").is_file(), (cli, name)


def test_grayscale_builds_a_one_channel_stem(files):
    _, info = data.load_arrays(files["gray"])
    assert info.channels == 1 and len(info.mean) == 1
    for name in ("darts", "nb201", "nb1shot1-1"):
        net = spaces.get_space(name).supernet(4, 3, 10, in_channels=info.channels)
        assert next(net.stem.parameters()).shape[1] == 1


@pytest.mark.parametrize("layout", ["gray", "gray1", "chw", "float01"])
def test_layouts_load_to_the_same_pixels(files, layout):
    good, _ = data.load_arrays(files["good"])
    arrays, info = data.load_arrays(files[layout])
    expected = good["x_train"].mean(-1, keepdims=True).astype(np.uint8) if layout == "gray" else \
        good["x_train"][..., :1] if layout == "gray1" else good["x_train"]
    assert np.array_equal(arrays["x_train"], expected) and info.image_size == 16


def test_darts_space_search_and_retraining_on_8_28_and_64_px(files, tmp_path):
    """The DARTS space (two reductions) end to end on odd and large sizes; --genotype takes the run directory."""
    import darts
    import train_eval
    for size in (8, 28, 64):
        npz = files[f"gray{size}"]
        res = darts.main(["--space", "darts", "--layers", "3", "--C", "2", "--epochs", "1", "--batch-size", "16",
                          "--dataset", npz, "--device", "cpu", "--out-dir", str(tmp_path), "--run-name", f"s{size}"])
        ev = train_eval.main(["--genotype", res["run_dir"], "--dataset", npz, "--C", "2", "--layers", "3",
                              "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--out-dir", str(tmp_path)])
        assert 0 <= ev["test_acc"] <= 1 and Path(ev["run_dir"]).name.startswith(f"eval_s{size}_")


@pytest.mark.parametrize("aux", ["0.4", "0"])
def test_train_eval_darts_v2_on_28px_with_and_without_auxiliary_head(files, tmp_path, aux):
    import train_eval
    res = train_eval.main(["--genotype", "DARTS_V2", "--dataset", files["gray28"], "--C", "4", "--layers", "3",
                           "--epochs", "1", "--batch-size", "16", "--auxiliary-weight", aux, "--device", "cpu",
                           "--out-dir", str(tmp_path)])
    assert res["protocol"] == "darts-cifar" and 0 <= res["test_acc"] <= 1


def test_files_get_the_usual_permissions(files, tmp_path):
    import darts
    res = darts.main(base_args("darts", {**files, "out": str(tmp_path)}))
    mask = data._umask()
    for name in ("args.json", "genotype.json", "cell.dot", "metrics.jsonl"):
        assert (Path(res["run_dir"]) / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


if __name__ == "__main__":  # the fuzz table's counts
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        fs = make_files(Path(d))
        counts = {"cases": 0, "refused": 0, "traceback": 0, "accepted": 0, "leftover": 0}
        for c, fl in cases(fs):
            outcome, message = run_in_process(c, base_args(c, fs) + fl, Path(fs["out"]))
            counts["cases"] += 1
            counts[outcome] += 1
            left = leftover(Path(fs["out"]))
            counts["leftover"] += left
            if "-v" in sys.argv or outcome != "refused" or left:
                print(f"{outcome:9s} {c} {' '.join(a.replace(d, '') for a in fl)} -> {message}")
        print(json.dumps(counts))
