"""The DARTS recurrent cell space (--space rnn): genotype, model, corpus, DARTS / NASP search, retraining."""
import importlib
import json
import math
import random
import sys
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

import darts
import data
import nasp
import spaces
import train_eval

NO_DROPOUT = ["--dropout", "0", "--dropouth", "0", "--dropoutx", "0", "--dropouti", "0", "--dropoute", "0"]


def make_corpus(root: Path, train_lines: int) -> str:
    """A generated corpus: 40 words, each followed by one of 3 successors (perplexity ~3 is learnable)."""
    rng = random.Random(0)
    for split, lines in (("train", train_lines), ("valid", 30), ("test", 30)):
        text = []
        for _ in range(lines):
            w = rng.randrange(40)
            words = [w]
            for _ in range(rng.randint(4, 12)):
                w = (7 * w + rng.choice((1, 2, 3))) % 40
                words.append(w)
            text.append(" ".join(f"w{v}" for v in words))
        (root / f"{split}.txt").write_text("\n".join(text) + "\n")
    return str(root)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return make_corpus(tmp_path_factory.mktemp("lm"), 150)


def tiny_search(corpus, tmp_path, *extra):
    return ["--space", "rnn", "--dataset", corpus, "--epochs", "1", "--batch-size", "8", "--emsize", "8", "--nhid", "8",
            "--bptt", "12", "--out-dir", str(tmp_path), *extra]


# ------------------------------------------------------------------------------------------- genotype, model
def test_darts_v2_eval_model_has_the_published_23m_parameters():
    """DARTS / NASP Table 3: 23M. Exact: embedding 10,000 x 850 (tied with the decoder) + decoder bias 10,000 +
    W0 1,700 x 1,700 + 8 x W_i 850 x 1,700 = 8,500,000 + 10,000 + 2,890,000 + 11,560,000 = 22,960,000."""
    model = spaces.RNNModel(10_000, 850, 850, spaces.PUBLISHED["DARTS_V2_RNN"])
    assert spaces.count_parameters(model) == 22_960_000
    assert round(spaces.count_parameters(model) / 1e6) == 23
    assert model.decoder.weight is model.encoder.weight


def test_genotype_json_round_trip_dot_and_bad_input():
    for name in ("DARTS_V1_RNN", "DARTS_V2_RNN"):
        g = spaces.PUBLISHED[name]
        assert spaces.parse_genotype(json.dumps(g.to_json())) == g == spaces.genotype_from_json(g.to_json())
        assert spaces.parse_genotype(name) is g and g.concat == tuple(range(1, 9))
        dot = spaces.genotype_to_dot(g)
        assert dot.count("->") == 1 + 8 + 8
    assert '"5" -> "6" [label="sigmoid"]' in spaces.genotype_to_dot(spaces.PUBLISHED["DARTS_V2_RNN"])
    assert str(spaces.PUBLISHED["DARTS_V2_RNN"]).startswith("Genotype(recurrent=[('sigmoid', 0), ('relu', 1)")
    for bad, msg in (({"recurrent": [["tanh", 1]], "concat": [1]}, "input <= 0"),
                     ({"recurrent": [["conv", 0]], "concat": [1]}, "unknown op"),
                     ({"recurrent": [["none", 0]], "concat": [1]}, "unknown op"),
                     ({"recurrent": [["tanh", 0]], "concat": [2]}, "concat"),
                     ({"recurrent": [["tanh", 0.0]], "concat": [1]}, "not an integer"),
                     ({"recurrent": [["tanh", 0]]}, "no key")):
        with pytest.raises(spaces.GenotypeError, match=msg):
            spaces.genotype_from_json({"space": "rnn", **bad})


def test_one_hot_mixture_equals_the_single_path_and_derive_reads_it_back():
    """The supernet's mixture with one-hot rows (zeros elsewhere) is exactly NASP's single-path forward, and
    RecurrentSpace.derive recovers the path (DARTS' rule: best input by its strongest non-`none` weight)."""
    torch.manual_seed(0)
    space = spaces.get_space("rnn")
    net = space.supernet(20, 8, 8, dropout=0, dropouth=0, dropoutx=0, dropouti=0, dropoute=0)
    g = spaces.PUBLISHED["DARTS_V1_RNN"]
    w = torch.zeros(space.n_edges, len(spaces.RNN_OPS))
    for i, (op, j) in enumerate(g.recurrent):
        w[space.node_slices[i][0] + j, spaces.RNN_OPS.index(op)] = 1.0
    w[0, 0] = 5.0  # a large `none` weight is never chosen, and contributes nothing
    x, h = torch.randint(0, 20, (5, 3)), torch.randn(3, 8)
    mixed, path = net(x, h, {"recurrent": w}), net(x, h, g.recurrent)
    for a, b in zip(mixed, path):
        torch.testing.assert_close(a, b)
    assert space.derive({"recurrent": w}) == g


def test_eval_cell_follows_the_official_recurrence():
    """One step of the discrete cell written out by hand (rnn/model.py): highway s0, then each node's gate."""
    torch.manual_seed(1)
    g = spaces.RecurrentGenotype((("tanh", 0), ("relu", 0), ("identity", 1)), (2, 3))
    cell = spaces.RecurrentCell(4, 4, 0.0, 0.0, g).eval()
    x, h = torch.randn(1, 2, 4), torch.randn(2, 4)
    c0, h0 = torch.cat([x[0], h], -1).mm(cell.W0).split(4, -1)
    s = [h + c0.sigmoid() * (h0.tanh() - h)]
    for i, (op, j) in enumerate(g.recurrent):
        c, hh = s[j].mm(cell.Ws[i]).split(4, -1)
        f = {"tanh": torch.tanh, "relu": torch.relu, "identity": lambda v: v}[op]
        s.append(s[j] + c.sigmoid() * (f(hh) - s[j]))
    out, last = cell(x, h)
    torch.testing.assert_close(last, (s[2] + s[3]) / 2)
    assert spaces.RecurrentSpace().n_edges == 36 and spaces.RecurrentSpace().arch_shapes() == {"recurrent": (36, 5)}


# ------------------------------------------------------------------------------------------------- corpus
def test_corpus_vocabulary_eos_unk_batchify_and_windows(tmp_path):
    (tmp_path / "ptb.train.txt").write_text("a b <unk>\nb c\n")
    (tmp_path / "ptb.valid.txt").write_text("a z\n")
    (tmp_path / "ptb.test.txt").write_text("c\n")
    c = data.lm_corpus(str(tmp_path), "unused")
    assert c["vocab"] == ["a", "b", "<unk>", "<eos>", "c"]
    assert c["train"].tolist() == [0, 1, 2, 3, 1, 4, 3] and c["valid"].tolist() == [0, 2, 3]  # z -> <unk>
    b = data.batchify(torch.arange(10), 3)
    assert b.shape == (3, 3) and b[:, 0].tolist() == [0, 1, 2] and b[:, 1].tolist() == [3, 4, 5]
    with pytest.raises(data.DataError, match="no BPTT window"):
        data.batchify(torch.arange(5), 4)
    windows = data.lm_windows(100, 35)
    assert windows == [(0, 35), (35, 35), (70, 29)]
    import numpy as np
    np.random.seed(0)
    lengths = [n for _, n in data.lm_windows(100_000, 35, np.random, jitter=True)]
    assert min(lengths[:-1]) >= 5 and max(lengths) <= 55 and 30 < sum(lengths) / len(lengths) < 36
    with pytest.raises(data.DataError, match="put the corpus there"):
        data.lm_corpus("ptb", str(tmp_path / "nowhere"))
    with pytest.raises(data.DataError, match="ptb | wt2"):
        data.lm_corpus("cifar10", str(tmp_path))
    (tmp_path / "ptb.valid.txt").write_text("a z\n")
    (tmp_path / "ptb.train.txt").write_text("a b\n")
    with pytest.raises(data.DataError, match="no <unk>"):
        data.lm_corpus(str(tmp_path), "unused")


# ------------------------------------------------------------------------------------------------- search
def test_second_order_gradient_matches_exact_autograd():
    """lm_unrolled_arch_grads (finite-difference Hessian-vector product) == d/dalpha L_val(w'(alpha), alpha) with
    w' = w - xi (grad_w L_train + wd w) differentiated exactly (double backward), in float64, nothing clipped (a
    small finite-difference step: DARTS' eps = 0.01 / ||v|| moves weights of scale 0.04 by 0.01, ~3% off here)."""
    torch.manual_seed(0)
    space = spaces.get_space("rnn")
    model = space.supernet(15, 6, 6, dropout=0, dropouth=0, dropoutx=0, dropouti=0, dropoute=0).double()
    alphas = {"recurrent": torch.nn.Parameter(torch.randn(36, 5, dtype=torch.float64))}
    batch, arch_batch = [(torch.randint(0, 15, (4, 3)), torch.randint(0, 15, (4, 3))) for _ in range(2)]
    h = torch.zeros(3, 6, dtype=torch.float64)
    xi, wd = 2.0, 1e-3
    grads, _, _ = darts.lm_unrolled_arch_grads(model, alphas, batch, h, arch_batch, h, xi, wd, clip=1e9, r=1e-5)

    names, params = zip(*model.named_parameters())
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    w = darts.mixture_weights(alphas)
    g = torch.autograd.grad(spaces.lm_loss(model, *batch, h, w)[1], params, create_graph=True)
    w1 = {n: p - xi * (gi + wd * p) for n, p, gi in zip(names, params, g)}
    loss = spaces.lm_loss(lambda *a: functional_call(model, {**w1, **buffers}, a), *arch_batch, h, w)[1]
    exact = torch.autograd.grad(loss, alphas["recurrent"])[0]
    w1_fixed = {n: t.detach() for n, t in w1.items()}  # w' held fixed: the first term of Eq. (7) alone
    direct = torch.autograd.grad(spaces.lm_loss(lambda *a: functional_call(model, {**w1_fixed, **buffers}, a),
                                                *arch_batch, h, darts.mixture_weights(alphas))[1], alphas["recurrent"])[0]
    assert (exact - direct).norm() > 0.01 * exact.norm()  # the implicit term is not negligible
    assert (grads[0] - exact).norm() < 1e-3 * (exact - direct).norm()  # central differences at eps = 1e-5 / ||v||


def test_nasp_arch_step_takes_the_gradient_at_abar(corpus):
    """NASP on the rnn space: A's Adam step gets dL/dA_bar (autograd on the mixture at A_bar directly)."""
    torch.manual_seed(0)
    space = nasp.nasp_space(None, "rnn")
    assert space.ops["recurrent"] == ["tanh", "relu", "sigmoid", "identity"] and nasp.edges_kept(space) == 1
    model = space.supernet(12, 6, 6, dropout=0, dropouth=0, dropoutx=0, dropouti=0, dropoute=0)
    A = {"recurrent": torch.nn.Parameter(torch.rand(36, 4))}
    abar = nasp.discretize(A, space.node_slices, 1)["recurrent"]
    assert abar.sum().item() == 8 and all(abar[s:e].sum() == 1 for s, e in space.node_slices)
    batch, h = (torch.randint(0, 12, (3, 2)), torch.randint(0, 12, (3, 2))), torch.zeros(2, 6)
    state = torch.get_rng_state()
    ref = abar.clone().requires_grad_(True)
    expected = torch.autograd.grad(spaces.lm_loss(model, *batch, h, ref)[1], ref)[0]
    torch.set_rng_state(state)
    opt = torch.optim.SGD(A.values(), lr=1.0)  # plain step: A moves by exactly the gradient it was given
    before = A["recurrent"].detach().clone()
    nasp.lm_arch_step(model, A, opt, batch, h, space.node_slices)
    torch.testing.assert_close(before - A["recurrent"].detach(), expected)


@pytest.mark.parametrize("algo,extra", [("darts", ()), ("darts", ("--unrolled",)), ("nasp", ())])
def test_tiny_search_gives_a_valid_recurrent_genotype(corpus, tmp_path, algo, extra):
    module = darts if algo == "darts" else nasp
    r = module.main(tiny_search(corpus, tmp_path, *extra))
    g = spaces.parse_genotype(r["run_dir"])
    assert isinstance(g, spaces.RecurrentGenotype) and len(g.recurrent) == 8 and g.concat == tuple(range(1, 9))
    assert r["search_space"] == "rnn" and r["algorithm"] == algo
    metrics = [json.loads(line) for line in open(Path(r["run_dir"]) / "metrics.jsonl")]
    assert len(metrics) == 1 and math.isfinite(metrics[0]["train_loss"]) and math.isfinite(metrics[0]["arch_loss"])
    args = json.loads((Path(r["run_dir"]) / "args.json").read_text())
    assert (args["lr"], args["batch_size"], args["arch_lr"], args["wd"], args["grad_clip"]) == (20.0, 8, 3e-3, 5e-7, 0.25)
    assert (Path(r["run_dir"]) / "cell.dot").read_text().count("->") == 17


def test_search_is_deterministic(corpus, tmp_path):
    a = nasp.main(tiny_search(corpus, tmp_path, "--run-name", "a"))
    b = nasp.main(tiny_search(corpus, tmp_path, "--run-name", "b"))
    assert a["alphas"] == b["alphas"] and a["genotype"] == b["genotype"]


def test_rnn_defaults_are_the_official_search_settings():
    for module in (darts, nasp):
        args = module.parse_args(["--space", "rnn"])
        assert (args.dataset, args.epochs, args.batch_size, args.lr, args.wd, args.grad_clip, args.emsize, args.nhid,
                args.bptt, args.arch_lr, tuple(args.arch_betas), args.arch_wd, args.seed) == (
            "ptb", 50, 256, 20.0, 5e-7, 0.25, 300, 300, 35, 3e-3, (0.9, 0.999), 1e-3, 3)
        assert (args.dropout, args.dropouth, args.dropoutx, args.dropouti, args.dropoute, args.tar) == (
            0.75, 0.25, 0.75, 0.2, 0.0, 1e-3)
        assert module.parse_args([]).lr == 0.025  # the CNN defaults stay


# ------------------------------------------------------------------------------------------- retraining
def tiny_retrain(corpus, tmp_path, *extra):
    return ["--dataset", corpus, "--emsize", "16", "--nhid", "16", "--batch-size", "8", "--bptt", "10",
            "--out-dir", str(tmp_path), *NO_DROPOUT, *extra]


def test_train_eval_retrains_a_searched_cell_and_its_perplexity_falls(corpus, tmp_path):
    r = nasp.main(tiny_search(corpus, tmp_path / "search"))
    (tmp_path / "big").mkdir()
    big = make_corpus(tmp_path / "big", 800)  # one epoch of ~170 windows
    out = train_eval.main(tiny_retrain(big, tmp_path, "--genotype", r["run_dir"], "--epochs", "1", "--batch-size", "4"))
    c = data.lm_corpus(big, "")
    V = len(c["vocab"])
    assert out["protocol"] == "rnn" and out["params"] == V * 16 + V + 32 * 32 + 8 * 16 * 32  # tied embedding
    torch.manual_seed(1267)  # the retraining's initial model (its default seed), scored before any step
    model = spaces.RNNModel(V, 16, 16, spaces.parse_genotype(r["run_dir"]))
    initial = math.exp(spaces.evaluate_lm(model, data.batchify(c["valid"], 10), 10))
    assert out["valid_ppl"] < 0.9 * initial and math.isfinite(out["test_ppl"])
    summary = json.loads((Path(out["run_dir"]) / "summary.json").read_text())
    assert summary["valid_ppl"] == out["valid_ppl"] and "W0" in (Path(out["run_dir"]) / "cell.dot").read_text()


class _Killed(Exception):
    pass


def test_retrain_resume_equals_uninterrupted_run_through_the_asgd_switch(corpus, tmp_path, monkeypatch):
    common = tiny_retrain(corpus, tmp_path, "--genotype", "DARTS_V2_RNN", "--epochs", "5", "--nonmono", "1",
                          "--lr", "5")  # switches to ASGD after epoch 3: the checkpoint then holds ASGD's averages
    straight = train_eval.main([*common, "--run-name", "straight"])
    real_save = data.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 3:
            raise _Killed
    monkeypatch.setattr(data, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        train_eval.main([*common, "--run-name", "killed"])
    monkeypatch.setattr(data, "save_checkpoint", real_save)
    torch.manual_seed(123)
    resumed = train_eval.main([*common, "--run-name", "killed", "--resume"])
    a, b = (torch.load(tmp_path / n / "checkpoint.pt", weights_only=True) for n in ("straight", "killed"))
    for k, v in a["state"]["model"].items():
        assert torch.equal(v, b["state"]["model"][k]), k
    keys = ("train_ppl", "valid_ppl", "next_optimizer")
    assert [[m[k] for k in keys] for m in a["history"]] == [[m[k] for k in keys] for m in b["history"]]
    assert straight["test_ppl"] == resumed["test_ppl"]
    assert straight["asgd_from_epoch"] == resumed["asgd_from_epoch"] == 3 and "ax" in str(a["state"]["asgd"]["state"][0].keys())


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("algo", ["asng", "gaea_darts_erm", "gaea_gdas", "gaea_pcdarts", "xnas"])
def test_other_algorithms_refuse_the_rnn_space(algo, capsys):
    module = importlib.import_module(algo)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--space", "rnn"])
    assert exit_info.value.code == 2 and "invalid choice: 'rnn'" in capsys.readouterr().err.splitlines()[-1]


def test_bad_rnn_input_is_refused_in_one_line(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit):
        darts.parse_args(["--space", "rnn", "--single-level"])
    with pytest.raises(SystemExit):
        nasp.parse_args(["--space", "rnn", "--reg", "0.1"])
    with pytest.raises(SystemExit):
        train_eval.main(["--genotype", "DARTS_V2_RNN", "--C", "8"])
    with pytest.raises(spaces.SpaceError, match="emsize"):
        train_eval.main(tiny_retrain(corpus, tmp_path, "--genotype", "DARTS_V2_RNN", "--nhid", "8"))
    with pytest.raises(data.DataError, match="put the corpus there"):
        darts.main(["--space", "rnn", "--data-dir", str(tmp_path / "none"), "--out-dir", str(tmp_path)])
    assert not any(tmp_path.glob("darts_rnn*"))  # nothing half-written


def test_speed_benchmark_rows_at_tiny_size():
    """benchmarks/speed.py --only rnn: its three rows and their ratios (logic only: no timing is asserted)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import speed
    rows = speed.main(["--only", "rnn", "--repeats", "1", "--warmup", "0", "--rnn-nhid", "8", "--rnn-batch", "2",
                       "--rnn-bptt", "4", "--rnn-vocab", "30", "--threads", "1"])
    assert [(r.baseline, r.candidate) for r in rows] == [("darts_1st", "nasp"), ("darts_2nd", "nasp"), ("darts_w", "nasp_w")]
    assert [r.target for r in rows] == [5.0, 10.0, None]
    assert all(r.ratio == pytest.approx(r.baseline_ms / r.candidate_ms) for r in rows)


def test_search_resume_equals_uninterrupted_run(corpus, tmp_path, monkeypatch):
    """2 epochs straight == 1 epoch, killed after its checkpoint, resumed: the same A and cell (numpy's window
    lengths and torch's dropout masks come back from the checkpoint)."""
    common = tiny_search(corpus, tmp_path, "--epochs", "2")
    straight = nasp.main([*common, "--run-name", "straight"])
    real_save = data.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise _Killed
    monkeypatch.setattr(data, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        nasp.main([*common, "--run-name", "killed"])
    monkeypatch.setattr(data, "save_checkpoint", real_save)
    torch.manual_seed(99)
    resumed = nasp.main([*common, "--run-name", "killed", "--resume"])
    assert resumed["alphas"] == straight["alphas"] and resumed["genotype"] == straight["genotype"]
