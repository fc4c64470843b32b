"""spaces.py: parameter counts against published figures, genotypes, derivation rules, supernets, MixedEdge."""
import csv
import gzip
import json
import random
from collections import defaultdict

import pytest
import torch

import spaces as S

NB201_BEST_C100 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def _meta_params(build):
    with torch.device("meta"):
        return S.count_parameters(build())


# ------------------------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize("name,exact,published_m", [
    ("DARTS_V2", 3_349_342, 3.3), ("PC_DARTS", 3_634_678, 3.6), ("NASP", 7_363_486, 7.4), ("XNAS", 3_793_438, 3.8)])
def test_darts_eval_network_parameters_match_published(name, exact, published_m):
    net_params = _meta_params(lambda: S.DartsEvalNetwork(S.PUBLISHED[name], C=36, layers=20, num_classes=10))
    assert net_params == exact
    assert round(net_params / 1e6, 1) == published_m


def test_auxiliary_head_is_excluded_from_the_count():
    with torch.device("meta"):
        net = S.DartsEvalNetwork(S.PUBLISHED["DARTS_V2"], C=36, layers=20)
    assert S.count_parameters(net, exclude=None) - S.count_parameters(net) == 476_426


def test_nb201_supernet_parameters():
    assert _meta_params(lambda: S.get_space("nb201").supernet(C=16, layers=5)) == 1_686_106
    # removing `none` does not change the count (it has no parameters)
    assert _meta_params(lambda: S.get_space("nb201", ops=S.NB201_OPS[1:]).supernet(C=16, layers=5)) == 1_686_106


def test_nb201_network_parameters_equal_the_oracle_for_every_cell(shared_data):
    """All 15,625 cells. The real network is built for one cell per op multiset (210 builds; the count cannot
    depend on where the ops sit, which 100 individually built random cells confirm) and compared with the oracle's
    `c10_params_M`. 15,475 rows match to 1e-6 M. The other 150 rows carry another cell's numbers in the source
    table (syne-tune's NB201 blackbox, see ../shared/data/README.md): their value is still exactly the count of
    some other NB201 cell (73,306 + 243,040 n3 + 28,000 n1 for integers n3 + n1 <= 6), and their FLOPs column
    is off the same way, so they are row mix-ups in the data, not a different network."""
    rows = list(csv.DictReader(gzip.open(shared_data / "nb201" / "nb201_oracle.csv.gz", "rt")))
    assert len(rows) == 15_625
    by_multiset = defaultdict(list)
    for r in rows:
        ops = tuple(sorted(op for node in S.NB201Genotype.from_str(r["arch_str"]).nodes for op, _ in node))
        by_multiset[ops].append(r)
    assert len(by_multiset) == 210
    other_cells = {73_306 + 243_040 * n3 + 28_000 * n1 for n3 in range(7) for n1 in range(7 - n3)}
    mismatched = []
    for group in by_multiset.values():
        g = S.NB201Genotype.from_str(group[0]["arch_str"])
        params = _meta_params(lambda: S.NB201Network(g))
        for r in group:
            if abs(params / 1e6 - float(r["c10_params_M"])) >= 1e-6:
                mismatched.append(r)
                assert round(float(r["c10_params_M"]) * 1e6) in other_cells, r["arch_str"]
    assert len(mismatched) == 150
    for r in random.Random(0).sample(rows, 100):
        g = S.NB201Genotype.from_str(r["arch_str"])
        assert _meta_params(lambda: S.NB201Network(g)) == by_multiset_count(by_multiset, g)
    # the README's checked values: the largest and the smallest cell
    big = S.NB201Genotype.from_str("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    assert _meta_params(lambda: S.NB201Network(big)) == 1_531_546
    small = S.NB201Genotype.from_str("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|")
    assert _meta_params(lambda: S.NB201Network(small)) == 73_306


def by_multiset_count(by_multiset, g):
    ops = tuple(sorted(op for node in g.nodes for op, _ in node))
    rep = S.NB201Genotype.from_str(by_multiset[ops][0]["arch_str"])
    return _meta_params(lambda: S.NB201Network(rep))


def test_nb201_network_counts_for_other_datasets():
    g = S.NB201Genotype.from_str(NB201_BEST_C100)
    assert _meta_params(lambda: S.NB201Network(g, num_classes=10)) == 1_288_506
    assert _meta_params(lambda: S.NB201Network(g, num_classes=100)) == 1_294_356
    assert _meta_params(lambda: S.NB201Network(g, num_classes=120)) == 1_295_656


# ------------------------------------------------------------------------------------------- genotypes
def test_nb201_arch_strings_round_trip(shared_data):
    rows = csv.DictReader(gzip.open(shared_data / "nb201" / "nb201_oracle.csv.gz", "rt"))
    for r in rows:
        g = S.NB201Genotype.from_str(r["arch_str"])
        assert str(g) == r["arch_str"]
        assert S.genotype_from_json(json.loads(json.dumps(g.to_json()))) == g


@pytest.mark.parametrize("name", sorted(S.PUBLISHED))
def test_darts_genotype_json_round_trip(name):
    g = S.PUBLISHED[name]
    assert S.genotype_from_json(json.loads(json.dumps(g.to_json()))) == g
    assert S.parse_genotype(name) == g
    assert S.parse_genotype(json.dumps(g.to_json())) == g


def test_nb101_spec_round_trip_and_pruning():
    m = ((0, 1, 1, 0, 0), (0, 0, 0, 0, 1), (0, 0, 0, 0, 0), (0, 0, 0, 0, 1), (0, 0, 0, 0, 0))
    spec = S.NB101Spec(m, ("input", "conv3x3-bn-relu", "maxpool3x3", "conv1x1-bn-relu", "output"))
    assert S.genotype_from_json(json.loads(json.dumps(spec.to_json()))) == spec
    pruned = spec.pruned()  # vertex 2 is a dead end, vertex 3 is unreachable from the input
    assert pruned.ops == ("input", "conv3x3-bn-relu", "output")
    assert pruned.matrix == ((0, 1, 0), (0, 0, 1), (0, 0, 0))


def test_parse_genotype_reads_a_run_file(tmp_path):
    p = tmp_path / "genotype.json"
    p.write_text(json.dumps({"algorithm": "x", "genotype": S.PUBLISHED["DARTS_V2"].to_json()}))
    assert S.parse_genotype(str(p)) == S.PUBLISHED["DARTS_V2"]


@pytest.mark.parametrize("text", [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|",                                  # two nodes
    "|nor_conv_3x3~0|+|nor_conv_3x3~1|nor_conv_3x3~0|+|none~0|none~1|none~2|",  # inputs out of order
    "|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|",                # unknown op
    "|nor_conv_3x3-0|+|none~0|none~1|+|none~0|none~1|none~2|",             # bad separator
    "NOT_A_GENOTYPE", "{\"space\": \"darts\", \"normal\": 3}", "{not json", "[1, 2]",
])
def test_malformed_genotypes_raise_clear_errors(text):
    with pytest.raises(S.GenotypeError):
        S.parse_genotype(text)


@pytest.mark.parametrize("j", ["00", "01", "+1", "-0", " 1", "1 ", "0x1", "\u0661", "1.0", ""])
def test_nb201_input_index_must_be_canonical_decimal(j):
    """'~00' once read as input 0: an input index is a canonical non-negative decimal, else one GenotypeError line."""
    good = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    assert str(S.parse_genotype(good)) == good
    bad = good.replace("avg_pool_3x3~1", f"avg_pool_3x3~{j}")
    with pytest.raises(S.GenotypeError) as err:
        S.NB201Genotype.from_str(bad)
    assert "\n" not in str(err.value) and "avg_pool_3x3~" in str(err.value)
    with pytest.raises(S.GenotypeError):
        S.parse_genotype(bad)


def test_malformed_darts_and_nb101_raise():
    ok = S.PUBLISHED["DARTS_V2"].to_json()
    for bad in ({**ok, "normal": ok["normal"][:3]}, {**ok, "normal": [["sep_conv_3x3", 5]] + ok["normal"][1:]},
                {**ok, "reduce": [["none", 0]] + ok["reduce"][1:]}, {**ok, "normal_concat": [1, 2]}):
        with pytest.raises(S.GenotypeError):
            S.DartsGenotype.from_json(bad)
    with pytest.raises(S.GenotypeError):  # not upper triangular
        S.NB101Spec(((0, 1), (1, 0)), ("input", "output"))
    with pytest.raises(S.GenotypeError):  # bad op
        S.NB101Spec(((0, 1, 0), (0, 0, 1), (0, 0, 0)), ("input", "conv5x5", "output"))
    with pytest.raises(S.GenotypeError):  # too many edges
        S.NB101Spec(tuple(tuple(int(j > i) for j in range(7)) for i in range(7)), ("input",) + ("maxpool3x3",) * 5 + ("output",))


def test_dot_pictures_name_every_edge():
    dot = S.genotype_to_dot(S.PUBLISHED["DARTS_V2"])
    assert dot.startswith("digraph") and dot.count("->") == 16 + 8  # 16 op edges + 4 concat edges per cell
    nb = S.genotype_to_dot(S.NB201Genotype.from_str(NB201_BEST_C100))
    assert nb.count("->") == 6 and "nor_conv_3x3" in nb


# ---------------------------------------------------------------------------------------- derivation
def test_darts_rule_on_fixed_weights():
    ops = S.DARTS_OPS
    w = torch.zeros(14, len(ops))
    w[:, 0] = 0.9  # `none` is strongest everywhere but never chosen
    # node 0: edges 0, 1; node 1: edges 2-4; node 2: 5-8; node 3: 9-13
    w[0, ops.index("sep_conv_3x3")] = 0.3
    w[1, ops.index("max_pool_3x3")] = 0.5
    w[2, ops.index("skip_connect")] = 0.2
    w[3, ops.index("dil_conv_5x5")] = 0.4
    w[4, ops.index("avg_pool_3x3")] = 0.4  # tie with edge 3: the lower input index wins the order
    w[5:9, ops.index("sep_conv_5x5")] = torch.tensor([0.1, 0.2, 0.3, 0.25])
    w[9:14, ops.index("dil_conv_3x3")] = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.6])
    cell = S.darts_cell_from_weights(w, ops)
    assert cell == (("max_pool_3x3", 1), ("sep_conv_3x3", 0),
                    ("dil_conv_5x5", 1), ("avg_pool_3x3", 2),
                    ("sep_conv_5x5", 2), ("sep_conv_5x5", 3),
                    ("dil_conv_3x3", 4), ("dil_conv_3x3", 0))
    g = S.get_space("darts").derive({"normal": w, "reduce": w})
    assert g.normal == cell and g.normal_concat == (2, 3, 4, 5)


def test_nb201_rule_is_argmax_per_edge():
    space = S.get_space("nb201")
    w = torch.zeros(6, 5)
    w[torch.arange(6), torch.tensor([3, 3, 3, 1, 3, 3])] = 1.0
    assert str(space.derive({"normal": w})) == NB201_BEST_C100


def test_nb1shot1_derivation_to_nb101():
    space = S.get_space("nb1shot1-2")  # parents: node1 {0}, node2 1 of {0,1}, node3 2 of 3, node4 2 of 4; output 3 of 5
    w = {"ops": torch.eye(3)[[1, 2, 0, 1]], "in2": torch.tensor([[0.2, 0.8]]), "in3": torch.tensor([[0.5, 0.1, 0.4]]),
         "in4": torch.tensor([[0.1, 0.2, 0.3, 0.4]]), "out": torch.tensor([[0.3, 0.1, 0.1, 0.2, 0.3]])}
    spec = space.derive(w)
    assert spec.ops == ("input", "conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3", "conv3x3-bn-relu",
                        "conv1x1-bn-relu", "output")  # dummy vertex 5 padded in (1Shot1 convention)
    edges = {(i, j) for i in range(7) for j in range(7) if spec.matrix[i][j]}
    # output <- {0, 3, 4}; node 4 <- {2, 3}; node 3 <- {0, 2}; node 2 <- {1}; node 1 <- {0}
    assert edges == {(0, 6), (3, 6), (4, 6), (2, 4), (3, 4), (0, 3), (2, 3), (1, 2), (0, 1)}
    assert spec.pruned().ops[-1] == "output"


def test_nb1shot1_loose_ends_are_dropped():
    space = S.get_space("nb1shot1-1")
    w = {g: torch.ones(*shape) for g, shape in space.arch_shapes().items()}
    w["out"] = torch.tensor([[0.0, 0.0, 1.0, 0.0, 1.0]])  # output <- nodes 2 and 4
    w["in4"] = torch.tensor([[0.0, 0.0, 1.0, 1.0]])  # node 4 <- 2, 3
    w["in3"] = torch.tensor([[1.0, 1.0, 0.0]])  # node 3 <- 0, 1
    spec = space.derive(w)
    assert sum(map(sum, spec.matrix)) == 2 + 2 + 2 + 1 + 2  # node1<-0, node2<-0,1, node3<-0,1, node4<-2,3, out<-2,4


# ---------------------------------------------------------------------------------- supernets / edges
@pytest.mark.parametrize("name", [s for s in S.SPACES if s != "enas"])  # enas has no weights
def test_supernet_forward_backward_every_space(name):
    torch.manual_seed(0)
    space = S.get_space(name)
    net = space.supernet(C=4, layers=3 if name == "darts" else 1)
    logits = {g: torch.randn(*shape, requires_grad=True) for g, shape in space.arch_shapes().items()}
    weights = {g: torch.softmax(a, -1) for g, a in logits.items()}
    out = net(torch.randn(2, 3, 16, 16), weights)
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    for g, a in logits.items():
        assert a.grad is not None and torch.isfinite(a.grad).all(), g


def test_unknown_space_and_op():
    with pytest.raises(S.SpaceError, match="unknown space"):
        S.get_space("nb301")
    with pytest.raises(S.SpaceError, match="unknown op"):
        S.get_space("darts", ops=["sep_conv_3x3", "conv_9x9"])
    with pytest.raises(S.GenotypeError):
        S.get_space("nb201", ops=["sep_conv_3x3"])


def _count_calls(edge):
    calls = [0] * len(edge.ops)
    for k, op in enumerate(edge.ops):
        op.register_forward_hook(lambda m, i, o, k=k: calls.__setitem__(k, calls[k] + 1))
    return calls


def test_mixed_edge_one_hot_and_index_compute_only_that_op():
    torch.manual_seed(0)
    edge = S.MixedEdge(4, 1, S.DARTS_OPS, pool_bn=True)
    calls = _count_calls(edge)
    x = torch.randn(2, 4, 8, 8)
    k = S.DARTS_OPS.index("sep_conv_3x3")
    one_hot = torch.nn.functional.one_hot(torch.tensor(k), 8).float()
    y1 = edge(x, one_hot)
    assert calls == [0, 0, 0, 0, 1, 0, 0, 0]
    y2 = edge(x, k)
    y3 = edge(x, (one_hot.clone().requires_grad_(), k))
    assert calls[k] == 3 and sum(calls) == 3
    assert torch.allclose(y1, y2) and torch.allclose(y2, y3)
    assert edge(x, None) is None


def test_mixed_edge_never_computes_none_and_matches_the_full_sum():
    torch.manual_seed(0)
    edge = S.MixedEdge(4, 2, S.DARTS_OPS).eval()
    calls = _count_calls(edge)
    x = torch.randn(2, 4, 8, 8)
    w = torch.softmax(torch.randn(8), 0).requires_grad_()
    y = edge(x, w)
    assert calls[0] == 0 and all(c == 1 for c in calls[1:])
    full = sum(w[k] * op(x) for k, op in enumerate(edge.ops))
    assert torch.allclose(y, full, atol=1e-6)
    y.sum().backward()
    assert w.grad[0] == 0


def test_mixed_edge_straight_through_and_per_sample_weights():
    torch.manual_seed(0)
    edge = S.MixedEdge(4, 1, S.NB201_OPS).eval()
    x = torch.randn(3, 4, 8, 8)
    w = torch.softmax(torch.randn(5), 0).requires_grad_()
    edge(x, (w, 3)).sum().backward()
    expected = torch.zeros(5)
    expected[3] = edge.ops[3](x).sum()
    assert torch.allclose(w.grad, expected, atol=1e-5)
    # per-sample (B, K) weights give per-sample gradients in one backward
    wb = torch.softmax(torch.randn(5), 0).expand(3, 5).clone().requires_grad_()
    edge(x, wb).sum().backward()
    for b in range(3):
        wi = wb[b].detach().clone().requires_grad_()
        edge(x[b:b + 1], wi).sum().backward()
        assert torch.allclose(wb.grad[b], wi.grad, atol=1e-4)


def test_darts_cell_edges_use_stride_two_from_inputs_in_reduction_cells():
    net = S.get_space("darts").supernet(C=4, layers=3)
    red = net.cells[1]
    assert red.reduction
    strides = [e.stride for e in red.edges]
    assert strides == [2, 2, 2, 2, 1, 2, 2, 1, 1, 2, 2, 1, 1, 1]


def test_eval_networks_forward():
    torch.manual_seed(0)
    net = S.DartsEvalNetwork(S.PUBLISHED["NASP"], C=4, layers=5, auxiliary=True)
    net.drop_path_prob = 0.2
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == aux.shape == (2, 10)
    net.eval()
    assert net(torch.randn(2, 3, 32, 32))[1] is None
    g = S.NB201Genotype.from_str("|none~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_1x1~2|")
    assert S.NB201Network(g, C=4, N=1)(torch.randn(2, 3, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [32, 7])
def test_avg_pool_matches_torch_without_padding_counted(stride, size):
    x = torch.randn(2, 5, size, size, requires_grad=True)
    ours = S.make_op("avg_pool_3x3", 5, stride, affine=False)(x)
    ref = torch.nn.functional.avg_pool2d(x, 3, stride, 1, count_include_pad=False)
    assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-6)
    g_ours, = torch.autograd.grad(ours.square().sum(), x)
    g_ref, = torch.autograd.grad(ref.square().sum(), x)
    assert torch.allclose(g_ours, g_ref, atol=1e-5)
    assert S.count_parameters(S.make_op("avg_pool_3x3", 5, stride, affine=False)) == 0


def test_nb101_specs_from_the_benchmark_sample_are_accepted_unpruned(shared_data):
    """NB101 limits edges on the pruned cell: all 500 unpruned sample cells are valid, and pruning gives the file's
    pruned matrix and ops."""
    rows = list(csv.DictReader(gzip.open(shared_data / "nb101" / "naslib_nb101_500.csv.gz", "rt")))
    for r in rows:
        m = tuple(tuple(int(r["matrix"][7 * i + j]) for j in range(7)) for i in range(7))
        spec = S.NB101Spec(m, tuple(r["ops"].split(",")))
        pruned = spec.pruned()
        assert pruned.ops == tuple(r["pruned_ops"].split(","))
        assert ";".join("".join(map(str, row)) for row in pruned.matrix) == r["pruned_matrix"]
