"""spaces.py -- what every nasref algorithm shares and none tunes.

Contents, top to bottom:
  1. Op primitives under their standard names: the DARTS 8 ops, NASP's extra ops for its 12-op
     space, the NAS-Bench-201 ops and the NAS-Bench-1Shot1 ops (`OPS`, `make_op`).
  2. `MixedEdge`: the candidate ops of one edge and the ways to run them (a full weighted sum, one op
     by index, one op scaled by its straight-through weight). How the weights are *produced*
     (softmax, simplex, Gumbel, prox, sampling) is algorithm logic and lives in each algos file.
     A weight vector without gradient runs only its non-zero ops; `none` is never computed.
  3. Search supernets: 3a. the DARTS cell space (2 inputs + 4 nodes, 14 edges, 8 cells, reductions at
     1/3 and 2/3), 3b. NAS-Bench-201 (4 nodes, 6 edges, 3 stages of N cells), 3c. NAS-Bench-1Shot1 spaces 1-3.
     Every supernet takes an `edge` factory so an algorithm can plug its own edge module in (e.g.
     partial channels), and `forward(x, arch)` with `arch` a dict {group: per-row spec}.
  4. Genotypes: DARTS genotype, NB201 arch string, NB101 spec; JSON round trip, parsing with clear
     errors, DOT pictures, published genotypes by name (before 5, whose derivations return them).
  5. Space descriptions (`get_space`): architecture-parameter shapes per group and the standard
     derivation of a discrete architecture from (positive) weights; entropy, one-hot weights and the
     discretisation check shared by the searches.
  6. Discrete networks, trained from scratch by train_eval.py (`count_parameters` first, DARTS' convention):
     6a. the DARTS evaluation network for CIFAR (auxiliary head, drop path);
     6b. the NB201 network;
     6c. the DARTS evaluation network for ImageNet (three-conv stem, 7x7 auxiliary head);
     6d. the NB101 network that trains a 1Shot1 result (NB101 spec) with NB101's channel rule.
  7. ASNG-NAS's ENAS micro space: single-path supernet and evaluation network (one class), the 4.0M-parameter
     channel rule, genotype (JSON, DOT), the space as its own search variables.
  8. ASNG-NAS's convolutional auto-encoder (inpainting) space with categorical and integer variables.
  9. The DARTS recurrent cell space (`get_space("rnn")`): genotype, published cells, search / evaluation cell and
     the language model around it (tied embedding, DARTS' dropouts), its loss and evaluation.

Facts (op definitions, macro layouts, parameter counts) follow the public DARTS, NAS-Bench-201,
NAS-Bench-1Shot1, NASP and ASNG-NAS code as summarised in ../shared/reference/; no code was copied.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class SpaceError(ValueError):
    """Unknown space or op, or an architecture that does not fit its space."""


class GenotypeError(ValueError):
    """Malformed genotype / arch string / NB101 spec."""


# ===================================================================================== 1. ops ====
class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv -> BN (DARTS preprocessing, NB201 `nor_conv_kxk`, NASP `conv_kxk`)."""

    def __init__(self, C_in, C_out, kernel, stride, padding, dilation=1, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel, stride, padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class ConvBnRelu(nn.Sequential):
    """Conv -> BN -> ReLU, the NAS-Bench-101 / 1Shot1 convolution (stride 1, 'same' padding)."""

    def __init__(self, C_in, C_out, kernel, affine=True):
        super().__init__(
            nn.Conv2d(C_in, C_out, kernel, 1, kernel // 2, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
            nn.ReLU(inplace=False),
        )


class DilConv(nn.Sequential):
    """ReLU -> depthwise (dilated) conv -> pointwise conv -> BN."""

    def __init__(self, C_in, C_out, kernel, stride, padding, dilation, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked DilConv(dilation 1); only the first one has the stride."""

    def __init__(self, C_in, C_out, kernel, stride, padding, affine=True):
        super().__init__(
            DilConv(C_in, C_in, kernel, stride, padding, 1, affine),
            DilConv(C_in, C_out, kernel, 1, padding, 1, affine),
        )


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset 1x1 stride-2 convs (C_out/2 channels each), then BN."""

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out - C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]  # one-pixel offset, same size as x (odd sizes work)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class AvgPool3x3(nn.Module):
    """3x3 average pooling, padding 1, padded zeros not counted (`count_include_pad=False`), as in DARTS and NB201.
    Computed as a depthwise convolution with a fixed all-ones kernel divided by the number of real pixels under
    each window: the same numbers as nn.AvgPool2d, about 6x faster forward+backward on CPU (see benchmarks/speed.py)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride
        self.register_buffer("ones", torch.ones(1, 1, 3, 3), persistent=False)  # not a parameter, not saved

    def forward(self, x):
        C, (H, W) = x.shape[1], x.shape[-2:]
        ones = self.ones.to(x.dtype)
        counts = F.conv2d(x.new_ones(1, 1, H, W), ones, stride=self.stride, padding=1)
        return F.conv2d(x, ones.expand(C, 1, 3, 3), stride=self.stride, padding=1, groups=C) / counts


class Zero(nn.Module):
    """The `none` op: zeros at the output resolution."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def _conv_3x1_1x3(C, stride, affine):
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 3), stride=(1, stride), padding=(0, 1), bias=False),
        nn.Conv2d(C, C, (3, 1), stride=(stride, 1), padding=(1, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine),
    )


def _stride1(name, module):
    def build(C, stride, affine):
        if stride != 1:
            raise SpaceError(f"op {name!r} only exists with stride 1")
        return module(C, affine)
    return build


# name -> factory(C, stride, affine). Every op maps C channels to C channels.
OPS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    # DARTS (Liu et al. 2019)
    "none": lambda C, s, a: Zero(s),
    "max_pool_3x3": lambda C, s, a: nn.MaxPool2d(3, s, 1),
    "avg_pool_3x3": lambda C, s, a: AvgPool3x3(s),  # count_include_pad=False; NB201's is the same
    "skip_connect": lambda C, s, a: nn.Identity() if s == 1 else FactorizedReduce(C, C, a),
    "sep_conv_3x3": lambda C, s, a: SepConv(C, C, 3, s, 1, a),
    "sep_conv_5x5": lambda C, s, a: SepConv(C, C, 5, s, 2, a),
    "dil_conv_3x3": lambda C, s, a: DilConv(C, C, 3, s, 2, 2, a),
    "dil_conv_5x5": lambda C, s, a: DilConv(C, C, 5, s, 4, 2, a),
    # NASP's 12-op space (Yao et al. 2020; official names `conv 1x1`, `conv 3x3`, `sep_7x7`)
    "conv_1x1": lambda C, s, a: ReLUConvBN(C, C, 1, s, 0, affine=a),
    "conv_3x3": lambda C, s, a: ReLUConvBN(C, C, 3, s, 1, affine=a),
    "conv_3x1_1x3": _conv_3x1_1x3,
    "sep_conv_7x7": lambda C, s, a: SepConv(C, C, 7, s, 3, a),
    "max_pool_5x5": lambda C, s, a: nn.MaxPool2d(5, s, 2),
    "max_pool_7x7": lambda C, s, a: nn.MaxPool2d(7, s, 3),
    # NAS-Bench-201 (Dong & Yang 2020): ReLU-Conv-BN
    "nor_conv_1x1": lambda C, s, a: ReLUConvBN(C, C, 1, s, 0, affine=a),
    "nor_conv_3x3": lambda C, s, a: ReLUConvBN(C, C, 3, s, 1, affine=a),
    # NAS-Bench-101 / 1Shot1 (Ying et al. 2019; Zela et al. 2020): Conv-BN-ReLU
    "conv3x3-bn-relu": _stride1("conv3x3-bn-relu", lambda C, a: ConvBnRelu(C, C, 3, a)),
    "conv1x1-bn-relu": _stride1("conv1x1-bn-relu", lambda C, a: ConvBnRelu(C, C, 1, a)),
    "maxpool3x3": _stride1("maxpool3x3", lambda C, a: nn.MaxPool2d(3, 1, 1)),
}

DARTS_OPS = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
             "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
NASP_NORMAL_OPS = ["skip_connect", "conv_3x1_1x3", "dil_conv_3x3", "conv_1x1",
                   "conv_3x3", "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7"]
NASP_REDUCE_OPS = ["skip_connect", "avg_pool_3x3", "max_pool_3x3", "max_pool_5x5", "max_pool_7x7"]
NB201_OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
NB1SHOT1_OPS = ["maxpool3x3", "conv3x3-bn-relu", "conv1x1-bn-relu"]  # 1Shot1's PRIMITIVES order


def make_op(name: str, C: int, stride: int, affine: bool, pool_bn: bool = False) -> nn.Module:
    """Build op `name`. `pool_bn` appends a non-affine BN to pools (the DARTS search supernet does)."""
    if name not in OPS:
        raise SpaceError(f"unknown op {name!r}; known ops: {', '.join(OPS)}")
    op = OPS[name](C, stride, affine)
    if pool_bn and "pool" in name:
        op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
    return op


# ============================================================================ 2. MixedEdge ====
def _scale(w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """w * y for a scalar weight or a per-sample weight vector (B,)."""
    return w * y if w.dim() == 0 else w.view(-1, *([1] * (y.dim() - 1))) * y


class MixedEdge(nn.Module):
    """All candidate ops of one edge. `forward(x, spec)` with spec:
      - None          -> None (edge dropped; the cell skips it)
      - int k         -> op_k(x): only that op is computed
      - (w, k)        -> w[k] * op_k(x): only op k is computed, w[k] carries the gradient (straight-through)
      - tensor w (K,) or per-sample (B, K) -> sum_k w_k op_k(x). If w needs no gradient only its
                         non-zero entries are computed (one-hot weights run one op). `none` is never run:
                         its output is zero, so it adds nothing to the value or to any gradient.
      - list of K floats -> the same sum over the non-zero entries, no gradient (the supernets turn a weight
                         matrix without gradient into such rows once per forward: one device sync, not one per edge)
    """

    def __init__(self, C: int, stride: int, op_names: Sequence[str], pool_bn: bool = False, affine: bool = False):
        super().__init__()
        self.op_names = list(op_names)
        self.stride = stride
        self.ops = nn.ModuleList(make_op(n, C, stride, affine, pool_bn) for n in self.op_names)
        self.computable = [k for k, n in enumerate(self.op_names) if n != "none"]

    def forward(self, x: torch.Tensor, spec):
        if spec is None:
            return None
        if isinstance(spec, int):
            return self.ops[spec](x)
        if isinstance(spec, tuple):
            w, k = spec
            return _scale(w[..., int(k)], self.ops[int(k)](x))
        if isinstance(spec, list):  # host floats (a weight row without gradient, see _host_rows)
            active = [k for k in self.computable if spec[k] != 0]
            return _weighted_sum([(spec[k], self.ops[k](x)) for k in active], x, self.stride)
        w = spec
        active = self.computable
        if not w.requires_grad:
            nonzero = (w != 0).reshape(-1, w.shape[-1]).any(0).tolist()
            active = [k for k in active if nonzero[k]]
        return _weighted_sum([(w[..., k], self.ops[k](x)) for k in active], x, self.stride)


def _weighted_sum(terms, x, stride):
    """sum_k w_k * y_k; zeros at the output resolution when nothing but `none` has weight."""
    if not terms:
        return x[:, :, ::stride, ::stride].mul(0.0)
    out = None
    for w, y in terms:
        y = w * y if isinstance(w, float) else _scale(w, y)
        out = y if out is None else out + y
    return out


def _host_rows(specs):
    """A weight matrix that needs no gradient is read to the host once per forward, as lists of floats: each edge
    then skips its zero-weight ops without a device synchronisation per edge (which would stall a GPU)."""
    if isinstance(specs, torch.Tensor) and specs.dim() == 2 and not specs.requires_grad:
        return specs.tolist()
    return specs


EdgeFactory = Callable[..., nn.Module]  # edge(C, stride, op_names, pool_bn) -> module with forward(x, spec)


def _node_sum(terms: list, node: int) -> torch.Tensor:
    if not terms:
        raise SpaceError(f"node {node} has no active incoming edge")
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def _run_edges(edges, states, specs, edge_weights, start):
    """Sum of the edges into one node from all current states; returns (node tensor, next edge index)."""
    terms, e = [], start
    for h in states:
        y = edges[e](h, specs[e])
        if y is not None:
            terms.append(y if edge_weights is None else _scale(edge_weights[e], y))
        e += 1
    return _node_sum(terms, len(states)), e


# ================================================================ 3a. DARTS cell search space ====
class DartsSearchCell(nn.Module):
    def __init__(self, C_pp, C_p, C, reduction, reduction_prev, op_names, edge: EdgeFactory, steps=4, multiplier=4):
        super().__init__()
        self.reduction, self.steps, self.multiplier = reduction, steps, multiplier
        self.pre0 = FactorizedReduce(C_pp, C, affine=False) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False)
        self.pre1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            edge(C, 2 if reduction and j < 2 else 1, op_names, True) for i in range(steps) for j in range(2 + i))

    def forward(self, s0, s1, specs, edge_weights=None):
        states, e = [self.pre0(s0), self.pre1(s1)], 0
        for _ in range(self.steps):
            node, e = _run_edges(self.edges, states, specs, edge_weights, e)
            states.append(node)
        return torch.cat(states[-self.multiplier:], dim=1)


class DartsSupernet(nn.Module):
    """DARTS search network: stem (in_channels -> 3C) -> `layers` cells, reductions at layers//3 and 2*layers//3
    -> GAP -> linear. forward(x, arch, edge_weights=None): arch = {"normal": specs[14], "reduce": specs[14]}, optional
    edge_weights = {"normal": (14,), "reduce": (14,)} multiplying each edge's output (PC-DARTS edge normalisation).
    stem "cifar": 3x3 conv + BN at full resolution (s0 = s1). stem "imagenet" (PC-DARTS model_search_imagenet.py):
    stem0 = 3x3 stride-2 conv to 3C/2, BN, ReLU, 3x3 stride-2 conv to 3C, BN; stem1 = ReLU, 3x3 stride-2 conv, BN;
    s0 = stem0(x) (1/4 resolution), s1 = stem1(s0) (1/8: 224 px -> 28), so the first cell reduces s0 (reduction_prev)."""

    def __init__(self, C=16, layers=8, num_classes=10, ops_normal=DARTS_OPS, ops_reduce=None,
                 edge: EdgeFactory = MixedEdge, steps=4, multiplier=4, stem_multiplier=3, stem="cifar",
                 in_channels=3):
        super().__init__()
        if layers < 3:
            raise SpaceError(f"the DARTS space needs >= 3 cells (reductions at layers//3 and 2*layers//3), got {layers}")
        ops_reduce = ops_normal if ops_reduce is None else ops_reduce
        C_curr = stem_multiplier * C
        if stem == "imagenet":
            self.stem0 = nn.Sequential(
                nn.Conv2d(in_channels, C_curr // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C_curr // 2), nn.ReLU(),
                nn.Conv2d(C_curr // 2, C_curr, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C_curr))
            self.stem1 = nn.Sequential(nn.ReLU(), nn.Conv2d(C_curr, C_curr, 3, stride=2, padding=1, bias=False),
                                       nn.BatchNorm2d(C_curr))
        elif stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        else:
            raise SpaceError(f"DARTS supernet stem must be 'cifar' or 'imagenet', got {stem!r}")
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells, reduction_prev = nn.ModuleList(), stem == "imagenet"
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_curr = C_curr * 2 if reduction else C_curr
            ops = ops_reduce if reduction else ops_normal
            self.cells.append(DartsSearchCell(C_pp, C_p, C_curr, reduction, reduction_prev, ops, edge, steps, multiplier))
            reduction_prev = reduction
            C_pp, C_p = C_p, multiplier * C_curr
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x, arch, edge_weights=None):
        specs = {ct: _host_rows(a) for ct, a in arch.items()}
        if hasattr(self, "stem0"):
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        else:
            s0 = s1 = self.stem(x)
        for cell in self.cells:
            ct = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, specs[ct], None if edge_weights is None else edge_weights[ct])
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


# ================================================================= 3b. NAS-Bench-201 space ====
class ResNetBasicBlock(nn.Module):
    """NB201's reduction block: ReLUConvBN 3x3 (stride) -> ReLUConvBN 3x3; shortcut AvgPool(2) + 1x1 conv."""

    def __init__(self, C_in, C_out, stride):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, stride, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(C_in, C_out, 1, bias=False))
        elif C_in != C_out:
            self.shortcut = ReLUConvBN(C_in, C_out, 1, 1, 0)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class NB201SearchCell(nn.Module):
    """4 nodes, edge i<-j for j<i in the order 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2; output = node 3."""

    def __init__(self, C, op_names, edge: EdgeFactory, nodes=4):
        super().__init__()
        self.nodes = nodes
        self.edges = nn.ModuleList(edge(C, 1, op_names, False) for i in range(1, nodes) for j in range(i))

    def forward(self, x, specs, edge_weights=None):
        states, e = [x], 0
        for _ in range(1, self.nodes):
            node, e = _run_edges(self.edges, states, specs, edge_weights, e)
            states.append(node)
        return states[-1]


def _nb201_macro(C, N, make_cell, in_channels=3):
    """stem -> N cells @C -> block -> N cells @2C -> block -> N cells @4C (shared by search and inference)."""
    layers, C_prev = [], C
    for stage, C_stage in enumerate((C, 2 * C, 4 * C)):
        if stage > 0:
            layers.append(ResNetBasicBlock(C_prev, C_stage, 2))
        layers.extend(make_cell(C_stage) for _ in range(N))
        C_prev = C_stage
    stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
    head = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=False))
    return stem, nn.ModuleList(layers), head, C_prev


class NB201Supernet(nn.Module):
    """NAS-Bench-201 search network (cells with non-affine BN, one architecture shared by all 15 cells).
    forward(x, arch, edge_weights=None): arch = {"normal": specs[6]}."""

    def __init__(self, C=16, N=5, num_classes=10, op_names=NB201_OPS, edge: EdgeFactory = MixedEdge, in_channels=3):
        super().__init__()
        self.stem, self.layers, self.head, C_last = _nb201_macro(C, N, lambda c: NB201SearchCell(c, op_names, edge),
                                                                 in_channels)
        self.classifier = nn.Linear(C_last, num_classes)

    def forward(self, x, arch, edge_weights=None):
        x, specs = self.stem(x), _host_rows(arch["normal"])
        for layer in self.layers:
            if isinstance(layer, NB201SearchCell):
                x = layer(x, specs, None if edge_weights is None else edge_weights["normal"])
            else:
                x = layer(x)
        return self.classifier(F.adaptive_avg_pool2d(self.head(x), 1).flatten(1))


# ============================================================== 3c. NAS-Bench-1Shot1 spaces ====
# Per space: parents of each choice node (1..n) and of the output node. Node 0 is the cell input.
# A node with fewer candidate parents than required has a fixed parent set (no weights).
NB1SHOT1_LAYOUT = {
    1: {"node_parents": (1, 2, 2, 2), "output_parents": 2},
    2: {"node_parents": (1, 1, 2, 2), "output_parents": 3},
    3: {"node_parents": (1, 1, 1, 2, 2), "output_parents": 2},
}


def nb1shot1_choice_nodes(space_id: int) -> list[int]:
    """Choice nodes b whose inputs are weighted (b candidates: node 0..b-1, more than the parents needed)."""
    parents = NB1SHOT1_LAYOUT[space_id]["node_parents"]
    return [b for b in range(1, len(parents) + 1) if b > parents[b - 1]]


class OneShotCell(nn.Module):
    """1Shot1 one-shot cell: choice block b = MixedEdge(sum_j w_bj * h_j) over h_0 = proj_b(input), h_1..h_{b-1};
    output = w_out0 * proj_out(input) + concat_b(w_out_b * h_b). Input weights: a row (K,), per-sample rows (B, K),
    or per-cell per-sample rows (cells, B, K), of which the cell takes row `cell_rank` (set by the algorithm)."""

    def __init__(self, C_in, C, space_id, edge: EdgeFactory):
        super().__init__()
        self.cell_rank = None
        self.n = len(NB1SHOT1_LAYOUT[space_id]["node_parents"])
        self.weighted = set(nb1shot1_choice_nodes(space_id))
        self.proj = nn.ModuleList(ConvBnRelu(C_in, C, 1, affine=False) for _ in range(self.n))
        self.proj_out = ConvBnRelu(C_in, C * self.n, 1, affine=False)
        self.blocks = nn.ModuleList(edge(C, 1, NB1SHOT1_OPS, False) for _ in range(self.n))

    def _row(self, w: torch.Tensor) -> torch.Tensor:
        return w[self.cell_rank] if w.dim() == 3 else w

    def forward(self, s0, arch):
        outs, w_out = [], self._row(arch["out"][0])
        for b in range(1, self.n + 1):
            inputs = [self.proj[b - 1](s0)] + outs
            if b in self.weighted:
                w_in = self._row(arch[f"in{b}"][0])
                x = _node_sum([_scale(w_in[..., j], h) for j, h in enumerate(inputs)], b)
            else:
                x = _node_sum(inputs, b)
            outs.append(self.blocks[b - 1](x, arch["ops"][b - 1]))
        cat = torch.cat([_scale(w_out[..., b + 1], h) for b, h in enumerate(outs)], dim=1)
        return cat + _scale(w_out[..., 0], self.proj_out(s0))


class NB1Shot1Supernet(nn.Module):
    """stem ConvBnRelu(in_channels->C) -> 3 stacks of `cells_per_stack` cells (max-pool 2x2 and channel doubling between
    stacks) -> ReLU-conv1x1-BN to C_stack -> GAP -> linear. arch = {"ops": specs[n], "out": (1, n+1),
    "in{b}": (1, b) per choice node}; one architecture shared by all cells."""

    def __init__(self, space_id=1, C=16, cells_per_stack=3, num_classes=10, edge: EdgeFactory = MixedEdge,
                 in_channels=3):
        super().__init__()
        n = len(NB1SHOT1_LAYOUT[space_id]["node_parents"])
        self.stem = ConvBnRelu(in_channels, C, 3, affine=False)
        self.layers, C_in = nn.ModuleList(), C
        for stack in range(3):
            C_stack = C * 2 ** stack
            if stack > 0:
                # DEVIATION: 1Shot1 uses MaxPool2d(2, 2, padding=1) (32->17->9); we use NB101's padding 0 (32->16->8)
                # — so the searched cells see the map sizes of the NB101 network that trains and scores their spec.
                self.layers.append(nn.MaxPool2d(2, 2))
            for _ in range(cells_per_stack):
                self.layers.append(OneShotCell(C_in, C_stack, space_id, edge))
                C_in = C_stack * n
        self.post = ReLUConvBN(C_in, C_stack, 1, 1, 0, affine=False)
        self.classifier = nn.Linear(C_stack, num_classes)

    def forward(self, x, arch, edge_weights=None):
        if edge_weights is not None:
            raise SpaceError("NAS-Bench-1Shot1 has no per-edge weights: its input weights are the 'in{b}' groups")
        x, arch = self.stem(x), {**arch, "ops": _host_rows(arch["ops"])}
        for layer in self.layers:
            x = layer(x, arch) if isinstance(layer, OneShotCell) else layer(x)
        return self.classifier(F.adaptive_avg_pool2d(self.post(x), 1).flatten(1))


# ========================================================================= 4. genotypes ====
# (defined before the space descriptions, which return them)
def _check_ops(ops, allowed, what):
    for op in ops:
        if op not in allowed:
            raise GenotypeError(f"{what}: unknown op {op!r}; expected one of {', '.join(allowed)}")


def _json_int(v, what: str) -> int:
    """A JSON integer, taken as it is: 1.9, true or "1" are refused (int() would silently make 1 of them)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise GenotypeError(f"{what}: {v!r} is not an integer")
    return v


def _json_str(v, what: str) -> str:
    if not isinstance(v, str):
        raise GenotypeError(f"{what}: {v!r} is not an op name (a string)")
    return v


def _json_list(v, what: str) -> list:
    if not isinstance(v, (list, tuple)):
        raise GenotypeError(f"{what}: expected a list, got {v!r}")
    return list(v)


@dataclass(frozen=True)
class DartsGenotype:
    """DARTS cell genotype: per cell type a list of (op, input) pairs, two per intermediate node, and the
    nodes concatenated at the output (inputs 0, 1 are the two cell inputs; node k is index k + 2)."""

    normal: tuple
    normal_concat: tuple
    reduce: tuple
    reduce_concat: tuple
    space = "darts"

    def __post_init__(self):
        for ct in ("normal", "reduce"):
            pairs, concat = getattr(self, ct), getattr(self, ct + "_concat")
            if len(pairs) == 0 or len(pairs) % 2:
                raise GenotypeError(f"DARTS genotype: {ct} needs two (op, input) pairs per node, got {len(pairs)}")
            for i, pair in enumerate(pairs):
                if len(pair) != 2 or not isinstance(pair[1], int) or not 0 <= pair[1] < 2 + i // 2:
                    raise GenotypeError(f"DARTS genotype: {ct}[{i}] = {pair!r} is not (op, input < {2 + i // 2})")
            _check_ops([p[0] for p in pairs], [o for o in OPS if o != "none"], f"DARTS genotype {ct}")
            if not concat or any(not 2 <= c < 2 + len(pairs) // 2 for c in concat) or len(set(concat)) != len(concat):
                raise GenotypeError(f"DARTS genotype: bad {ct}_concat {list(concat)} (distinct nodes "
                                    f"2..{1 + len(pairs) // 2})")

    def to_json(self) -> dict:
        return {"space": "darts", "normal": [list(p) for p in self.normal], "normal_concat": list(self.normal_concat),
                "reduce": [list(p) for p in self.reduce], "reduce_concat": list(self.reduce_concat)}

    @classmethod
    def from_json(cls, d: dict) -> "DartsGenotype":
        try:
            parts = {}
            for ct in ("normal", "reduce"):
                pairs = [_json_list(p, f"DARTS genotype {ct}") for p in _json_list(d[ct], f"DARTS genotype {ct}")]
                if any(len(p) != 2 for p in pairs):
                    raise GenotypeError(f"DARTS genotype {ct}: every entry must be [op, input], got {pairs}")
                parts[ct] = tuple((_json_str(op, f"DARTS genotype {ct}"), _json_int(j, f"DARTS genotype {ct} input"))
                                  for op, j in pairs)
                parts[ct + "_concat"] = tuple(_json_int(c, f"DARTS genotype {ct}_concat")
                                              for c in _json_list(d[ct + "_concat"], f"DARTS genotype {ct}_concat"))
            return cls(**parts)
        except KeyError as err:
            raise GenotypeError(f"malformed DARTS genotype JSON: no key {err}") from err

    def __str__(self):
        return (f"Genotype(normal={list(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={list(self.reduce)}, reduce_concat={list(self.reduce_concat)})")


@dataclass(frozen=True)
class NB201Genotype:
    """NAS-Bench-201 cell: nodes[i-1] = ((op, j) for j in 0..i-1), i = 1..3. str() is the benchmark's arch string."""

    nodes: tuple
    space = "nb201"

    def __post_init__(self):
        if len(self.nodes) != 3:
            raise GenotypeError(f"NB201 genotype needs 3 nodes, got {len(self.nodes)}")
        for i, node in enumerate(self.nodes, start=1):
            if [j for _, j in node] != list(range(i)):
                raise GenotypeError(f"NB201 node {i} must list inputs 0..{i - 1} in order, got {list(node)}")
            _check_ops([op for op, _ in node], NB201_OPS, "NB201 arch")

    @classmethod
    def from_str(cls, s: str) -> "NB201Genotype":
        if not isinstance(s, str):
            raise GenotypeError(f"NB201 arch string expected, got {s!r}")
        nodes = []
        for part in s.strip().split("+"):
            if not (part.startswith("|") and part.endswith("|")) or len(part) < 3:
                raise GenotypeError(f"malformed NB201 arch string {s!r}: node {part!r} is not '|op~j|...|'")
            node = []
            for item in part[1:-1].split("|"):
                op, sep, j = item.partition("~")
                if not sep:
                    raise GenotypeError(f"malformed NB201 arch string {s!r}: {item!r} is not 'op~j'")
                if not (j.isascii() and j.isdigit() and j == str(int(j))):  # '00', '01', '+1', ' 1' are not indices
                    raise GenotypeError(f"malformed NB201 arch string {s!r}: input index {j!r} in {item!r} is not a "
                                        "non-negative decimal integer without sign or leading zeros")
                node.append((op, int(j)))
            nodes.append(tuple(node))
        return cls(tuple(nodes))

    def __str__(self):
        return "+".join("|" + "|".join(f"{op}~{j}" for op, j in node) + "|" for node in self.nodes)

    def to_json(self) -> dict:
        return {"space": "nb201", "arch_str": str(self)}

    @classmethod
    def from_json(cls, d: dict) -> "NB201Genotype":
        if not isinstance(d.get("arch_str"), str):
            raise GenotypeError("malformed NB201 genotype JSON: needs a string 'arch_str'")
        return cls.from_str(d["arch_str"])


NB101_OPS = ("conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3")


def _live_vertices(matrix) -> list[int]:
    """Vertices on some input->output path of a DAG given as an upper-triangular adjacency matrix."""
    n = len(matrix)
    fwd, bwd = {0}, {n - 1}
    for i in range(n):
        if i in fwd:
            fwd |= {j for j in range(n) if matrix[i][j]}
    for j in reversed(range(n)):
        if j in bwd:
            bwd |= {i for i in range(n) if matrix[i][j]}
    return sorted(fwd & bwd)


@dataclass(frozen=True)
class NB101Spec:
    """NAS-Bench-101 cell: upper-triangular 0/1 adjacency (<= 7 vertices, <= 9 edges) and one op per vertex,
    first 'input', last 'output'."""

    matrix: tuple
    ops: tuple
    space = "nb101"

    def __post_init__(self):
        n = len(self.matrix)
        if not 2 <= n <= 7 or any(len(r) != n for r in self.matrix):
            raise GenotypeError(f"NB101 spec: matrix must be square with 2..7 vertices, got {n} rows")
        if any(v not in (0, 1) for r in self.matrix for v in r):
            raise GenotypeError("NB101 spec: matrix entries must be 0 or 1")
        if any(self.matrix[i][j] for i in range(n) for j in range(i + 1)):
            raise GenotypeError("NB101 spec: matrix must be strictly upper triangular (a DAG in vertex order)")
        keep = _live_vertices(self.matrix)
        live_edges = sum(self.matrix[i][j] for i in keep for j in keep)
        if live_edges > 9:  # NB101 counts the edges of the pruned cell
            raise GenotypeError(f"NB101 spec: {live_edges} edges on input->output paths, at most 9 allowed")
        if len(self.ops) != n or self.ops[0] != "input" or self.ops[-1] != "output":
            raise GenotypeError(f"NB101 spec: need {n} ops starting with 'input' and ending with 'output', got {list(self.ops)}")
        _check_ops(self.ops[1:-1], NB101_OPS, "NB101 spec")

    def pruned(self) -> "NB101Spec":
        """Drop vertices that are not on an input->output path (as the NB101 API does)."""
        n, keep = len(self.matrix), _live_vertices(self.matrix)
        if 0 not in keep or n - 1 not in keep:
            raise GenotypeError("NB101 spec: the output is not reachable from the input")
        return NB101Spec(tuple(tuple(self.matrix[i][j] for j in keep) for i in keep), tuple(self.ops[i] for i in keep))

    def to_json(self) -> dict:
        return {"space": "nb101", "matrix": [list(r) for r in self.matrix], "ops": list(self.ops)}

    @classmethod
    def from_json(cls, d: dict) -> "NB101Spec":
        try:
            matrix = tuple(tuple(_json_int(v, "NB101 matrix") for v in _json_list(r, "NB101 matrix row"))
                           for r in _json_list(d["matrix"], "NB101 matrix"))
            return cls(matrix, tuple(_json_str(o, "NB101 ops") for o in _json_list(d["ops"], "NB101 ops")))
        except KeyError as err:
            raise GenotypeError(f"malformed NB101 spec JSON: no key {err}") from err


GENOTYPE_TYPES = {"darts": DartsGenotype, "nb201": NB201Genotype, "nb101": NB101Spec}


def genotype_from_json(d: dict):
    if not isinstance(d, dict) or not isinstance(d.get("space"), str) or d["space"] not in GENOTYPE_TYPES:
        raise GenotypeError(f"genotype JSON needs 'space' in {list(GENOTYPE_TYPES)}, got {d.get('space') if isinstance(d, dict) else d!r}")
    return GENOTYPE_TYPES[d["space"]].from_json(d)


def parse_genotype(text: str):
    """A published genotype name, an NB201 arch string, a JSON object, a path to a genotype.json, or a run
    directory holding one."""
    text = text.strip()
    if text in PUBLISHED:
        return PUBLISHED[text]
    if text.startswith("|"):
        return NB201Genotype.from_str(text)
    if text.startswith("{"):
        try:
            return genotype_from_json(json.loads(text))
        except (json.JSONDecodeError, RecursionError) as err:
            raise GenotypeError(f"genotype is not valid JSON: {err}") from err
    path = genotype_path(text)
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError as err:
        raise GenotypeError(f"{text!r} is neither a published genotype ({', '.join(PUBLISHED)}), an NB201 arch "
                            f"string, JSON, an existing genotype.json nor a run directory with one") from err
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise GenotypeError(f"{path}: not a UTF-8 JSON file ({type(err).__name__}: {err})") from err
    except (OSError, ValueError) as err:  # a directory without genotype.json, no permission, NUL in the name
        raise GenotypeError(f"{path}: cannot be read ({type(err).__name__}: {err})") from err
    return genotype_from_json(d.get("genotype", d) if isinstance(d, dict) else d)


def genotype_path(text: str) -> str:
    """A run directory stands for its genotype.json (what every algos/*.py writes)."""
    return str(Path(text) / "genotype.json") if Path(text).is_dir() else text


def _pairs(*flat):
    return tuple(zip(flat[0::2], flat[1::2]))


PUBLISHED = {
    "DARTS_V1": DartsGenotype(
        _pairs("sep_conv_3x3", 1, "sep_conv_3x3", 0, "skip_connect", 0, "sep_conv_3x3", 1,
               "skip_connect", 0, "sep_conv_3x3", 1, "sep_conv_3x3", 0, "skip_connect", 2), (2, 3, 4, 5),
        _pairs("max_pool_3x3", 0, "max_pool_3x3", 1, "skip_connect", 2, "max_pool_3x3", 0,
               "max_pool_3x3", 0, "skip_connect", 2, "skip_connect", 2, "avg_pool_3x3", 0), (2, 3, 4, 5)),
    "DARTS_V2": DartsGenotype(
        _pairs("sep_conv_3x3", 0, "sep_conv_3x3", 1, "sep_conv_3x3", 0, "sep_conv_3x3", 1,
               "sep_conv_3x3", 1, "skip_connect", 0, "skip_connect", 0, "dil_conv_3x3", 2), (2, 3, 4, 5),
        _pairs("max_pool_3x3", 0, "max_pool_3x3", 1, "skip_connect", 2, "max_pool_3x3", 1,
               "max_pool_3x3", 0, "skip_connect", 2, "skip_connect", 2, "max_pool_3x3", 1), (2, 3, 4, 5)),
    "PC_DARTS": DartsGenotype(
        _pairs("sep_conv_3x3", 1, "skip_connect", 0, "sep_conv_3x3", 0, "dil_conv_3x3", 1,
               "sep_conv_5x5", 0, "sep_conv_3x3", 1, "avg_pool_3x3", 0, "dil_conv_3x3", 1), (2, 3, 4, 5),
        _pairs("sep_conv_5x5", 1, "max_pool_3x3", 0, "sep_conv_5x5", 1, "sep_conv_5x5", 2,
               "sep_conv_3x3", 0, "sep_conv_3x3", 3, "sep_conv_3x3", 1, "sep_conv_3x3", 2), (2, 3, 4, 5)),
    # NASP-codes `genotypes.NASP` (12-op space), official names mapped: `conv 3x3` -> conv_3x3 etc.
    "NASP": DartsGenotype(
        _pairs("conv_3x1_1x3", 0, "conv_3x3", 1, "dil_conv_3x3", 2, "conv_3x3", 1,
               "dil_conv_3x3", 2, "conv_3x3", 0, "skip_connect", 0, "dil_conv_3x3", 3), (2, 3, 4, 5),
        _pairs("max_pool_3x3", 0, "max_pool_3x3", 1, "skip_connect", 2, "max_pool_5x5", 1,
               "skip_connect", 2, "skip_connect", 3, "skip_connect", 0, "skip_connect", 1), (2, 3, 4, 5)),
    "XNAS": DartsGenotype(
        _pairs("sep_conv_3x3", 1, "skip_connect", 0, "sep_conv_3x3", 0, "sep_conv_3x3", 2,
               "sep_conv_3x3", 3, "sep_conv_3x3", 1, "dil_conv_5x5", 4, "sep_conv_3x3", 0), (2, 3, 4, 5),
        _pairs("max_pool_3x3", 0, "avg_pool_3x3", 1, "avg_pool_3x3", 0, "skip_connect", 2,
               "dil_conv_3x3", 3, "max_pool_3x3", 0, "dil_conv_5x5", 4, "avg_pool_3x3", 0), (2, 3, 4, 5)),
}


def genotype_to_dot(g) -> str:
    """Graphviz DOT text of the cell(s) (render with `dot -Tpng cell.dot -o cell.png`)."""
    lines = ["digraph cell {", "  rankdir=LR; node [shape=box, style=rounded];"]
    if isinstance(g, DartsGenotype):
        for ct in ("normal", "reduce"):
            pairs, concat = getattr(g, ct), getattr(g, ct + "_concat")
            name = lambda j: f'"{ct}:c_{{k-2}}"' if j == 0 else f'"{ct}:c_{{k-1}}"' if j == 1 else f'"{ct}:{j - 2}"'
            lines.append(f'  subgraph cluster_{ct} {{ label="{ct} cell";')
            for i, (op, j) in enumerate(pairs):
                lines.append(f'    {name(j)} -> "{ct}:{i // 2}" [label="{op}"];')
            lines += [f'    "{ct}:{c - 2}" -> "{ct}:c_{{k}}";' for c in concat] + ["  }"]
    elif isinstance(g, NB201Genotype):
        for i, node in enumerate(g.nodes, start=1):
            lines += [f'  "{j}" -> "{i}" [label="{op}"];' for op, j in node if op != "none"]
    elif isinstance(g, NB101Spec):
        lines += [f'  "{i}" [label="{i}: {op}"];' for i, op in enumerate(g.ops)]
        n = len(g.ops)
        lines += [f'  "{i}" -> "{j}";' for i in range(n) for j in range(n) if g.matrix[i][j]]
    elif hasattr(g, "dot_lines"):  # the genotypes of sections 7, 8 and 9
        lines += g.dot_lines()
    else:
        raise GenotypeError(f"no picture for {type(g).__name__}")
    return "\n".join(lines + ["}"]) + "\n"


# ================================================================ 5. space descriptions ====
def darts_cell_from_weights(weights: torch.Tensor, op_names: Sequence[str], steps=4, keep=2) -> tuple:
    """The standard DARTS rule: per node rank incoming edges by their strongest non-`none` op weight, keep the
    top `keep` (ties: lower input first), and on each kept edge take that strongest non-`none` op."""
    w = weights.detach().float().cpu()
    allowed = [k for k, n in enumerate(op_names) if n != "none"]
    pairs, start = [], 0
    for i in range(steps):
        rows = w[start:start + 2 + i][:, allowed]
        best_w, best_k = rows.max(dim=1)
        order = sorted(range(2 + i), key=lambda j: -best_w[j].item())[:keep]  # stable: ties keep lower j
        pairs += [(op_names[allowed[best_k[j]]], j) for j in order]
        start += 2 + i
    return tuple(pairs)


class DartsSpace:
    """DARTS CNN cell space; NASP's 12-op space is DartsSpace(NASP_NORMAL_OPS, NASP_REDUCE_OPS)."""

    name, default_layers, steps = "darts", 8, 4

    def __init__(self, ops_normal=DARTS_OPS, ops_reduce=None):
        self.ops = {"normal": list(ops_normal), "reduce": list(ops_normal if ops_reduce is None else ops_reduce)}
        for ops in self.ops.values():
            for op in ops:
                make_op(op, 1, 1, False)  # validates the name
        self.n_edges = sum(2 + i for i in range(self.steps))
        self.node_slices = [(sum(2 + k for k in range(i)), sum(2 + k for k in range(i + 1))) for i in range(self.steps)]

    def arch_shapes(self) -> dict:
        return {ct: (self.n_edges, len(ops)) for ct, ops in self.ops.items()}

    def supernet(self, C=16, layers=None, num_classes=10, edge: EdgeFactory = MixedEdge, stem="cifar",
                 in_channels=3) -> DartsSupernet:
        """stem "imagenet": the PC-DARTS ImageNet search network's three stride-2 convolutions (DartsSupernet)."""
        layers = self.default_layers if layers is None else layers
        return DartsSupernet(C, layers, num_classes, self.ops["normal"], self.ops["reduce"], edge, stem=stem,
                             in_channels=in_channels)

    def derive(self, weights: dict) -> DartsGenotype:
        concat = tuple(range(2, 2 + self.steps))
        return DartsGenotype(darts_cell_from_weights(weights["normal"], self.ops["normal"]), concat,
                             darts_cell_from_weights(weights["reduce"], self.ops["reduce"]), concat)


class NB201Space:
    name, default_layers = "nb201", 5
    node_slices = [(0, 1), (1, 3), (3, 6)]
    n_edges = 6

    def __init__(self, ops=NB201_OPS):
        _check_ops(ops, NB201_OPS, "NB201 space")
        self.ops = {"normal": list(ops)}

    def arch_shapes(self) -> dict:
        return {"normal": (6, len(self.ops["normal"]))}

    def supernet(self, C=16, layers=None, num_classes=10, edge: EdgeFactory = MixedEdge, in_channels=3) -> NB201Supernet:
        layers = self.default_layers if layers is None else layers
        return NB201Supernet(C, layers, num_classes, self.ops["normal"], edge, in_channels)

    def derive(self, weights: dict) -> NB201Genotype:
        """Every edge keeps its strongest op (over the op list in use; `none` can win, as in NB201's baselines)."""
        best = weights["normal"].detach().argmax(dim=1).tolist()
        ops = [self.ops["normal"][k] for k in best]
        return NB201Genotype(tuple(tuple((ops[s + j], j) for j in range(e - s)) for s, e in self.node_slices))


class NB1Shot1Space:
    """NAS-Bench-1Shot1 search space 1, 2 or 3. Groups: 'ops' (n, 3) op per choice node, 'out' (1, n+1) output
    inputs, 'in{b}' (1, b) inputs of each choice node with a choice."""

    default_layers = 3  # cells per stack

    def __init__(self, space_id: int):
        if space_id not in NB1SHOT1_LAYOUT:
            raise SpaceError(f"NAS-Bench-1Shot1 has search spaces 1, 2, 3; got {space_id}")
        self.space_id, self.name = space_id, f"nb1shot1-{space_id}"
        self.n = len(NB1SHOT1_LAYOUT[space_id]["node_parents"])
        self.ops = {"ops": list(NB1SHOT1_OPS)}

    def arch_shapes(self) -> dict:
        shapes = {"ops": (self.n, len(NB1SHOT1_OPS)), "out": (1, self.n + 1)}
        shapes.update({f"in{b}": (1, b) for b in nb1shot1_choice_nodes(self.space_id)})
        return shapes

    def parents(self) -> dict[str, int]:
        """How many inputs each input group keeps: {'in{b}': parents of choice node b, 'out': parents of the output}."""
        layout = NB1SHOT1_LAYOUT[self.space_id]
        return {**{f"in{b}": layout["node_parents"][b - 1] for b in nb1shot1_choice_nodes(self.space_id)},
                "out": layout["output_parents"]}

    def supernet(self, C=16, layers=None, num_classes=10, edge: EdgeFactory = MixedEdge,
                 in_channels=3) -> NB1Shot1Supernet:
        layers = self.default_layers if layers is None else layers
        return NB1Shot1Supernet(self.space_id, C, layers, num_classes, edge, in_channels)

    def derive(self, weights: dict) -> NB101Spec:
        """Ops: strongest per node. Parents: top-k inputs per choice node (fixed ones otherwise), top-k output
        inputs; then keep only the ancestors of the output (loose ends dropped), as 1Shot1's evaluation does."""
        layout, n = NB1SHOT1_LAYOUT[self.space_id], self.n
        ops = [NB1SHOT1_OPS[k] for k in weights["ops"].detach().argmax(dim=1).tolist()]

        def top(w, k):
            return sorted(torch.topk(w.detach().float().cpu().flatten(), k).indices.tolist())

        parents = {}
        for b in range(1, n + 1):
            need = layout["node_parents"][b - 1]
            parents[b] = top(weights[f"in{b}"], need) if f"in{b}" in weights else list(range(b))[:need]
        parents[n + 1] = top(weights["out"], layout["output_parents"])
        matrix = [[0] * (n + 2) for _ in range(n + 2)]
        stack, seen = [n + 1], set()
        while stack:
            v = stack.pop()
            for p in parents.get(v, []):
                matrix[p][v] = 1
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
        op_list = ["input"] + ops + ["output"]
        if n == 4:  # pad to 7 vertices with NB101's unconnected dummy vertex at index 5 (1Shot1 convention)
            matrix = [row[:5] + [0] + row[5:] for row in matrix]
            matrix.insert(5, [0] * 7)
            op_list.insert(5, "conv1x1-bn-relu")
        return NB101Spec(tuple(map(tuple, matrix)), tuple(op_list))


def mean_entropy(weights: dict) -> dict[str, float]:
    """Mean entropy (nats) of the rows of each group of weights (rows on a simplex; zero entries add 0): how far a
    search is from a discrete choice."""
    return {g: float(-(w * w.clamp_min(1e-12).log()).sum(-1).mean()) for g, w in weights.items()}


def one_hot_weights(space, genotype) -> dict[str, torch.Tensor]:
    """A derived discrete cell in its supernet's weight format: per group an (n_edges, n_ops) tensor with the
    genotype's op one-hot on each selected edge and a row of zeros on every other edge (unselected DARTS edges and
    NB201 `none` edges are off: MixedEdge computes nothing there). `w.sum(-1)` is then the matching per-edge weight
    (1 on kept edges, 0 elsewhere) for supernets with edge weights (PC-DARTS edge normalisation)."""
    if isinstance(space, DartsSpace) and isinstance(genotype, DartsGenotype):
        cells = {ct: [(op, j, i // 2) for i, (op, j) in enumerate(getattr(genotype, ct))] for ct in space.ops}
        for ct in space.ops:
            if len(getattr(genotype, ct)) != 2 * space.steps or sorted(getattr(genotype, ct + "_concat")) != list(
                    range(2, 2 + space.steps)):
                raise SpaceError(f"{ct} cell: the supernet has {space.steps} nodes, two inputs each, all concatenated")
    elif isinstance(space, NB201Space) and isinstance(genotype, NB201Genotype):
        cells = {"normal": [(op, j, i) for i, node in enumerate(genotype.nodes) for op, j in node]}
    else:
        raise SpaceError(f"no one-hot supernet weights for a {type(genotype).__name__} in the {space.name} space")
    out = {}
    for ct, picks in cells.items():
        ops, w = space.ops[ct], torch.zeros(space.n_edges, len(space.ops[ct]))
        for op, j, node in picks:
            if op not in ops:
                raise SpaceError(f"{ct} cell: op {op!r} is not in the space's op list {ops}")
            if op != "none":
                w[space.node_slices[node][0] + j, ops.index(op)] = 1.0
        out[ct] = w
    return out


def discretisation_check(space, genotype, evaluate_with, device) -> dict:
    """GAEA Sec. 4.1: the supernet's accuracy with the derived discrete cell in place of the continuous weights
    (same shared weights, same BN statistics, no retraining). `evaluate_with(weights)` -> (loss, accuracy) runs the
    algorithm's own evaluation with one_hot_weights. Spaces without a one-hot form (NAS-Bench-1Shot1) give {}."""
    if not isinstance(space, (DartsSpace, NB201Space)):
        return {}
    loss, acc = evaluate_with({g: w.to(device) for g, w in one_hot_weights(space, genotype).items()})
    return {"supernet_test_acc_discrete": acc, "supernet_test_loss_discrete": loss}


SPACES = ("darts", "nb201", "nb1shot1-1", "nb1shot1-2", "nb1shot1-3", "enas")


def get_space(name: str, ops=None, ops_reduce=None):
    """`darts` (ops / ops_reduce override the op lists), `nb201` (ops overrides, e.g. without `none`),
    `nb1shot1-{1,2,3}`, `enas`."""
    if name == "darts":
        return DartsSpace(ops or DARTS_OPS, ops_reduce)
    if name == "nb201":
        return NB201Space(ops or NB201_OPS)
    if name == "rnn":  # section 7: searched by darts.py and nasp.py only, so not in SPACES
        return RecurrentSpace(ops or RNN_OPS)
    if name.startswith("nb1shot1-") and name[-1] in "123" and len(name) == 10:
        if ops is not None:
            raise SpaceError("NAS-Bench-1Shot1 op lists are fixed")
        return NB1Shot1Space(int(name[-1]))
    if name == "enas":
        if ops is not None:
            raise SpaceError("the ENAS micro op list is fixed")
        return EnasSpace()
    raise SpaceError(f"unknown space {name!r}; choose from {', '.join(SPACES)}")


# ================================================================ 6. discrete networks ====
def count_parameters(model: nn.Module, exclude: str = "auxiliary") -> int:
    """Number of parameters, leaving out those whose name contains `exclude` (DARTS' convention)."""
    return sum(p.numel() for n, p in model.named_parameters() if not (exclude and exclude in n))


# ==================================================== 6a. DARTS evaluation network (CIFAR) ====
def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero whole samples with probability p and rescale the rest by 1/(1-p)."""
    if p <= 0.0:
        return x
    keep = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(1.0 - p)
    return x / (1.0 - p) * keep


class DartsEvalCell(nn.Module):
    def __init__(self, pairs, concat, C_pp, C_p, C, reduction, reduction_prev):
        super().__init__()
        self.reduction, self.concat = reduction, list(concat)
        self.pre0 = FactorizedReduce(C_pp, C) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0)
        self.pre1 = ReLUConvBN(C_p, C, 1, 1, 0)
        self.inputs = [j for _, j in pairs]
        self.ops = nn.ModuleList(make_op(op, C, 2 if reduction and j < 2 else 1, True) for op, j in pairs)

    def forward(self, s0, s1, drop_prob=0.0):
        states = [self.pre0(s0), self.pre1(s1)]
        for i in range(0, len(self.ops), 2):
            node = 0
            for k in (i, i + 1):
                h = self.ops[k](states[self.inputs[k]])
                if self.training and drop_prob > 0 and not isinstance(self.ops[k], nn.Identity):
                    h = drop_path(h, drop_prob)
                node = node + h
            states.append(node)
        return torch.cat([states[c] for c in self.concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """On 8x8 maps (32 px input): ReLU, AvgPool 5/3 -> 2x2, 1x1 conv 128, BN, ReLU, 2x2 conv 768, BN, ReLU, linear.
    Other map sizes are average-pooled adaptively to the same 2x2."""

    def __init__(self, C, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True), nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        if x.shape[-2:] == (8, 8):
            return self.classifier(self.features(x).flatten(1))
        # DEVIATION: DARTS' head assumes 8x8 maps (32 px images) and fails on others (28 px MNIST gives 4x4 maps) —
        # here other sizes are average-pooled adaptively to the 2x2 that AvgPool 5/3 makes of 8x8.
        x = F.adaptive_avg_pool2d(self.features[0](x), 2)
        return self.classifier(self.features[2:](x).flatten(1))


class DartsEvalNetwork(nn.Module):
    """DARTS evaluation network (NetworkCIFAR): stem (in_channels -> 3C), `layers` cells with reductions at 1/3 and
    2/3, optional auxiliary head after cell 2*layers//3, drop path with probability `self.drop_path_prob` (set per
    epoch). forward returns (logits, aux_logits or None)."""

    def __init__(self, genotype: DartsGenotype, C=36, layers=20, num_classes=10, auxiliary=True, stem_multiplier=3,
                 in_channels=3):
        super().__init__()
        if layers < 3:
            raise SpaceError(f"a DARTS network needs >= 3 cells (reductions at layers//3 and 2*layers//3), got {layers}")
        self.drop_path_prob = 0.0
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells, reduction_prev, self.auxiliary_head = nn.ModuleList(), False, None
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_curr = C_curr * 2 if reduction else C_curr
            pairs, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
            self.cells.append(DartsEvalCell(pairs, concat, C_pp, C_p, C_curr, reduction, reduction_prev))
            reduction_prev = reduction
            C_pp, C_p = C_p, len(concat) * C_curr
            if i == 2 * layers // 3 and auxiliary:
                self.aux_index, self.auxiliary_head = i, AuxiliaryHeadCIFAR(C_p, num_classes)
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x):
        s0 = s1 = self.stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if self.auxiliary_head is not None and self.training and i == self.aux_index:
                aux = self.auxiliary_head(s1)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1)), aux


# =============================================================== 6b. NAS-Bench-201 network ====
class NB201InferCell(nn.Module):
    def __init__(self, genotype: NB201Genotype, C):
        super().__init__()
        self.links = [(i, j) for i, node in enumerate(genotype.nodes, start=1) for op, j in node if op != "none"]
        self.ops = nn.ModuleList(make_op(op, C, 1, True) for node in genotype.nodes for op, _ in node if op != "none")

    def forward(self, x):
        states = [x]
        for i in range(1, 4):  # a node whose inputs are all `none` is zeros, like the benchmark's network
            terms = [op(states[j]) for (dst, j), op in zip(self.links, self.ops) if dst == i]
            states.append(_node_sum(terms, i) if terms else x.mul(0.0))
        return states[3]


class NB201Network(nn.Module):
    """The NAS-Bench-201 network for one cell (affine BN). Its parameter count matches the benchmark's."""

    def __init__(self, genotype: NB201Genotype, C=16, N=5, num_classes=10, in_channels=3):
        super().__init__()
        self.stem, self.layers, self.head, C_last = _nb201_macro(C, N, lambda c: NB201InferCell(genotype, c),
                                                                 in_channels)
        self.classifier = nn.Linear(C_last, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(F.adaptive_avg_pool2d(self.head(x), 1).flatten(1))


# ================================================= 6c. DARTS evaluation network (ImageNet) ====
class AuxiliaryHeadImageNet(nn.Module):
    """On 7x7 maps (224 px input): ReLU, AvgPool 5/2 -> 2x2, 1x1 conv 128, BN, ReLU, 2x2 conv 768, ReLU, linear.
    As in the DARTS code, there is no BN after the 768-channel conv (DARTS left it out, a typo kept for consistency
    with its paper's runs); the head is not counted in the parameter figures either way."""

    def __init__(self, C, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True), nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class DartsEvalNetworkImageNet(nn.Module):
    """DARTS evaluation network for ImageNet, mobile setting (NetworkImageNet): stem0 (3x3 s2 conv to C/2, BN, ReLU,
    3x3 s2 conv to C, BN), stem1 (ReLU, 3x3 s2 conv, BN) -> 28x28 maps for 224 px input; `layers` cells with
    reductions at 1/3 and 2/3 (the first cell sees a reduced input: reduction_prev); auxiliary head after cell
    2*layers//3; global average pool (DARTS: AvgPool 7 on the 7x7 maps, the same thing at 224 px) -> linear.
    forward returns (logits, aux_logits or None); drop path probability `self.drop_path_prob`."""

    def __init__(self, genotype: DartsGenotype, C=48, layers=14, num_classes=1000, auxiliary=True, in_channels=3):
        super().__init__()
        if layers < 3:
            raise SpaceError(f"a DARTS network needs >= 3 cells (reductions at layers//3 and 2*layers//3), got {layers}")
        self.drop_path_prob = 0.0
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2), nn.ReLU(inplace=False),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))
        self.stem1 = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(C))
        C_pp, C_p, C_curr = C, C, C
        self.cells, reduction_prev, self.auxiliary_head = nn.ModuleList(), True, None
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_curr = C_curr * 2 if reduction else C_curr
            pairs, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
            self.cells.append(DartsEvalCell(pairs, concat, C_pp, C_p, C_curr, reduction, reduction_prev))
            reduction_prev = reduction
            C_pp, C_p = C_p, len(concat) * C_curr
            if i == 2 * layers // 3 and auxiliary:
                self.aux_index, self.auxiliary_head = i, AuxiliaryHeadImageNet(C_p, num_classes)
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x):
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if self.auxiliary_head is not None and self.training and i == self.aux_index:
                aux = self.auxiliary_head(s1)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1)), aux


# ============================================== 6d. NAS-Bench-101 network (1Shot1 results) ====
def nb101_vertex_channels(C_in: int, C_out: int, matrix) -> list[int]:
    """NAS-Bench-101's channel rule for a pruned cell: the vertices feeding the output split C_out evenly (the
    remainder goes one channel each to the first of them); every other interior vertex gets the largest channel
    count among the interior vertices it feeds (so channels never grow along an edge)."""
    n = len(matrix)
    ch = [C_in] + [0] * (n - 2) + [C_out]
    feeds_out = [v for v in range(1, n - 1) if matrix[v][n - 1]]
    if not feeds_out:
        return ch
    base, extra = divmod(C_out, len(feeds_out))
    for k, v in enumerate(feeds_out):
        ch[v] = base + (1 if k < extra else 0)
    for v in range(n - 3, 0, -1):
        if not matrix[v][n - 1]:
            ch[v] = max(ch[d] for d in range(v + 1, n - 1) if matrix[v][d])
    return ch


class NB101Cell(nn.Module):
    """One NAS-Bench-101 module (`model_builder.build_module`) for a pruned spec: vertex v = op_v(sum of its inputs),
    where the cell input enters through a 1x1 ConvBnRelu projection to v's channels and an earlier vertex through its
    first ch[v] channels; output = concat of the vertices feeding it, plus a projection of the input when the input
    feeds the output directly (the projection alone if nothing else does)."""

    def __init__(self, spec: NB101Spec, C_in: int, C_out: int):
        super().__init__()
        m, n = spec.matrix, len(spec.matrix)
        self.matrix, self.n = m, n
        self.ch = nb101_vertex_channels(C_in, C_out, m)
        self.proj = nn.ModuleDict({str(v): ConvBnRelu(C_in, self.ch[v], 1) for v in range(1, n) if m[0][v]})
        self.ops = nn.ModuleList(make_op(spec.ops[v], self.ch[v], 1, True) for v in range(1, n - 1))

    def forward(self, x):
        m, n, states, outs = self.matrix, self.n, [x], []
        for v in range(1, n - 1):
            terms = [states[u][:, : self.ch[v]] for u in range(1, v) if m[u][v]]
            if m[0][v]:
                terms.append(self.proj[str(v)](x))
            states.append(self.ops[v - 1](_node_sum(terms, v)))
            if m[v][n - 1]:
                outs.append(states[v])
        if not outs:
            return self.proj[str(n - 1)](x)
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        return out + self.proj[str(n - 1)](x) if m[0][n - 1] else out


class NB101Network(nn.Module):
    """The NAS-Bench-101 network for one cell: stem 3x3 ConvBnRelu to C (128) channels, `stacks` stacks of
    `cells_per_stack` cells, 2x2 stride-2 max-pool before every stack but the first, where the channels double;
    global average pool -> linear. The spec is pruned first (as the NB101 API does). Parameter counts equal the
    benchmark's `trainable_parameters` at C=128, 10 classes.
    Not replicated: NB101's TF batch norm momentum 0.997 (PyTorch momentum 0.003); PyTorch's default 0.1 is used."""

    def __init__(self, spec: NB101Spec, C=128, stacks=3, cells_per_stack=3, num_classes=10, in_channels=3):
        super().__init__()
        self.spec = spec = spec.pruned()
        self.stem = ConvBnRelu(in_channels, C, 3)
        self.layers, C_in = nn.ModuleList(), C
        for stack in range(stacks):
            C_out = C_in * 2 if stack > 0 else C_in
            if stack > 0:
                self.layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))  # TF 'same' padding: ceil for odd sizes
            for _ in range(cells_per_stack):
                self.layers.append(NB101Cell(spec, C_in, C_out))
                C_in = C_out
        self.classifier = nn.Linear(C_in, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ===== 7. ENAS micro space (ASNG-NAS's CIFAR-10 space) ====
# Facts from shirakawas/ASNG-NAS classification/classification/{cnn_model_micro,operations}.py and
# classification/main_classification.py (read, not copied).
ENAS_OPS = ["skip_connect", "avg_pool_3x3", "max_pool_3x3", "sep_conv_3x3", "sep_conv_5x5"]
ENAS_NODES = 5


def enas_op(name: str, C: int, stride: int, affine: bool) -> nn.Module:
    """ENAS's ops: identity (FactorizedReduce at stride 2), 3x3 average pooling that counts padded zeros
    (nn.AvgPool2d's default, as the official ENASOpsServer), 3x3 max pooling, DARTS separable convolutions."""
    return nn.AvgPool2d(3, stride, 1) if name == "avg_pool_3x3" else make_op(name, C, stride, affine)


def enas_loose_ends(pairs) -> list[int]:
    """States (2..6) that no node takes as input: the cell concatenates them (the cell inputs count as used)."""
    used = {j for _, j in pairs}
    return [n for n in range(2, 2 + len(pairs) // 2) if n not in used]


class EnasCell(nn.Module):
    """One ENAS micro cell: both inputs preprocessed to C channels (FactorizedReduce after a reduction cell), 5 nodes,
    node i = op_a(input_a) + op_b(input_b) over the cell inputs and earlier nodes (the two inputs may coincide), the
    loose ends concatenated, then ReLU, 1x1 conv to C, BN. Every (node, input, op) has its own weights. Supernet
    (`pairs` None): weights for all of them and a 1x1 conv over all 5C columns, of which a forward uses those of its
    loose ends; fixed (a genotype's 10 (op index, input) pairs): only the ops and columns the cell uses."""

    def __init__(self, C_pp, C_p, C, reduction, reduction_prev, affine, pairs=None):
        super().__init__()
        self.C, self.pairs = C, None if pairs is None else tuple(pairs)
        self.pre0 = FactorizedReduce(C_pp, C, affine) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0, affine=affine)
        self.pre1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=affine)
        keys = ([(i, j, k) for i in range(ENAS_NODES) for j in range(2 + i) for k in range(len(ENAS_OPS))]
                if pairs is None else sorted({(n // 2, j, k) for n, (k, j) in enumerate(pairs)}))
        self.ops = nn.ModuleDict({f"{i}_{j}_{k}": enas_op(ENAS_OPS[k], C, 2 if reduction and j < 2 else 1, affine)
                                  for i, j, k in keys})
        cols = ENAS_NODES if pairs is None else len(enas_loose_ends(pairs))
        # DEVIATION: a fixed cell's 1x1 conv is initialised for its own fan-in (official fix_arc slices a weight
        # initialised for 5C inputs): only the initial scale differs
        self.conv = nn.Conv2d(cols * C, C, 1, bias=False)
        self.bn = nn.BatchNorm2d(C, affine=affine)

    def forward(self, s0, s1, pairs=None, drop_prob=0.0):
        pairs = self.pairs if pairs is None else pairs
        states = [self.pre0(s0), self.pre1(s1)]
        for i in range(ENAS_NODES):
            node = 0
            for k, j in pairs[2 * i:2 * i + 2]:
                op = self.ops[f"{i}_{j}_{k}"]
                h = op(states[j])
                if drop_prob > 0 and self.training and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                node = node + h
            states.append(node)
        loose, w = enas_loose_ends(pairs), self.conv.weight
        if self.pairs is None:  # the columns of the loose ends, node-major
            w = w.view(self.C, ENAS_NODES, self.C, 1, 1)[:, [n - 2 for n in loose]].reshape(self.C, -1, 1, 1)
        return self.bn(F.conv2d(F.relu(torch.cat([states[n] for n in loose], 1)), w))


class EnasNetwork(nn.Module):
    """ENAS micro macro-architecture: stem 3x3 conv to 3C + BN, `layers` cells (reductions, channels doubled, at
    layers//3 and 2*layers//3; every cell outputs C_cell channels), global average pooling, linear.
    genotype None: the single-path search supernet (cells with non-affine BN), forward(x, arch) -> logits with arch
    {"normal": pairs, "reduce": pairs} of (op index, input), one sample for all normal cells and one for both
    reduction cells; only the ops named there run. A genotype: its evaluation network (affine BN, auxiliary head after
    cell 2*layers//3, drop path self.drop_path_prob on non-identity ops), forward(x) -> (logits, aux or None)."""

    def __init__(self, genotype=None, C=16, layers=8, num_classes=10, auxiliary=False, in_channels=3):
        super().__init__()
        if layers < 3:
            raise SpaceError(f"an ENAS network needs >= 3 cells (reductions at layers//3 and 2*layers//3), got {layers}")
        self.genotype, self.drop_path_prob, self.auxiliary_head = genotype, 0.0, None
        fixed = {ct: None if genotype is None else [(ENAS_OPS.index(op), j) for op, j in getattr(genotype, ct)]
                 for ct in ("normal", "reduce")}
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 3 * C, 3, padding=1, bias=False), nn.BatchNorm2d(3 * C))
        C_pp, C_p, C_cell, reduction_prev = 3 * C, 3 * C, C, False
        self.kinds, self.cells = [], nn.ModuleList()
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_cell *= 2 if reduction else 1
            self.kinds.append("reduce" if reduction else "normal")
            self.cells.append(EnasCell(C_pp, C_p, C_cell, reduction, reduction_prev, genotype is not None,
                                       fixed[self.kinds[-1]]))
            C_pp, C_p, reduction_prev = C_p, C_cell, reduction
            if i == 2 * layers // 3 and auxiliary:
                self.aux_index, self.auxiliary_head = i, AuxiliaryHeadCIFAR(C_p, num_classes)
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x, arch=None):
        s0 = s1 = self.stem(x)
        aux = None
        for i, (kind, cell) in enumerate(zip(self.kinds, self.cells)):
            s0, s1 = s1, cell(s0, s1, None if arch is None else arch[kind], self.drop_path_prob)
            if self.auxiliary_head is not None and self.training and i == self.aux_index:
                aux = self.auxiliary_head(s1)
        logits = self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))
        return logits if self.genotype is None else (logits, aux)


def enas_params_limited_C(genotype, limit_M=4.0, layers=20, num_classes=10, in_channels=3, C_max=128) -> int:
    """ASNG-NAS's retraining rule: the largest C in [0, C_max) whose evaluation network has <= limit_M million
    parameters without the auxiliary head, by binary search (built on the meta device: no memory, no init)."""
    lo, hi = -1, C_max
    while hi - lo > 1:
        mid = (lo + hi) // 2
        with torch.device("meta"):
            n = count_parameters(EnasNetwork(genotype, max(mid, 1), layers, num_classes, False, in_channels))
        lo, hi = (mid, hi) if mid > 0 and n / 1e6 <= limit_M else (lo, mid)
    if lo < 1:
        raise SpaceError(f"no channel count gives an ENAS network of <= {limit_M}M parameters")
    return lo


@dataclass(frozen=True)
class EnasGenotype:
    """ENAS micro cells: per cell type 10 (op, input) pairs, two per node (inputs 0, 1 = the cell inputs, node k =
    k + 2; the two inputs of a node may coincide); the loose ends are concatenated."""

    normal: tuple
    reduce: tuple
    space = "enas"

    def __post_init__(self):
        for ct in ("normal", "reduce"):
            pairs = getattr(self, ct)
            if len(pairs) != 2 * ENAS_NODES:
                raise GenotypeError(f"ENAS genotype: {ct} needs {2 * ENAS_NODES} (op, input) pairs, got {len(pairs)}")
            for n, p in enumerate(pairs):
                if len(p) != 2 or not isinstance(p[1], int) or isinstance(p[1], bool) or not 0 <= p[1] < 2 + n // 2:
                    raise GenotypeError(f"ENAS genotype: {ct}[{n}] = {p!r} is not (op, input < {2 + n // 2})")
            _check_ops([p[0] for p in pairs], ENAS_OPS, f"ENAS genotype {ct}")

    def to_json(self) -> dict:
        return {"space": "enas", "normal": [list(p) for p in self.normal], "reduce": [list(p) for p in self.reduce]}

    @classmethod
    def from_json(cls, d: dict) -> "EnasGenotype":
        try:
            parts = {}
            for ct in ("normal", "reduce"):
                pairs = [_json_list(p, f"ENAS genotype {ct}") for p in _json_list(d[ct], f"ENAS genotype {ct}")]
                if any(len(p) != 2 for p in pairs):
                    raise GenotypeError(f"ENAS genotype {ct}: every entry must be [op, input], got {pairs}")
                parts[ct] = tuple((_json_str(op, f"ENAS genotype {ct}"), _json_int(j, f"ENAS genotype {ct} input"))
                                  for op, j in pairs)
            return cls(**parts)
        except KeyError as err:
            raise GenotypeError(f"malformed ENAS genotype JSON: no key {err}") from err

    def __str__(self):
        return f"EnasGenotype(normal={list(self.normal)}, reduce={list(self.reduce)})"

    def dot_lines(self) -> list[str]:
        lines = []
        for ct in ("normal", "reduce"):
            name = lambda j: f'"{ct}:c_{{k-2}}"' if j == 0 else f'"{ct}:c_{{k-1}}"' if j == 1 else f'"{ct}:{j - 2}"'
            lines.append(f'  subgraph cluster_{ct} {{ label="{ct} cell";')
            lines += [f'    {name(j)} -> "{ct}:{n // 2}" [label="{op}"];' for n, (op, j) in enumerate(getattr(self, ct))]
            lines += [f'    "{ct}:{c - 2}" -> "{ct}:c_{{k}}";' for c in enas_loose_ends(getattr(self, ct))] + ["  }"]
        return lines


class EnasSpace:
    """The ENAS micro space as ASNG-NAS encodes it: per cell type and node i four categoricals, input_a and input_b
    over the 2 + i earlier states and op_a, op_b over the 5 ops (40 variables, sum of (K - 1) = 140), in the official
    order (per node input_a, input_b, op_a, op_b; normal cells first). It is its own set of search variables
    (names, categories, decode, genotype, as algos/asng.py's ArchVariables)."""

    name, default_layers, integers = "enas", 8, ()
    ops = {"normal": ENAS_OPS, "reduce": ENAS_OPS}

    def __init__(self):
        keys = [(ct, i, v) for ct in ("normal", "reduce") for i in range(ENAS_NODES) for v in ("in_a", "in_b", "op_a", "op_b")]
        self.names = [f"{ct}/node{i}/{v}" for ct, i, v in keys]
        self.groups = [ct for ct, _, _ in keys]
        self.categories = [2 + i if v.startswith("in") else len(ENAS_OPS) for _, i, v in keys]

    def decode(self, idx, z=None) -> dict:
        """One index per variable -> {cell type: 10 (op index, input) pairs}."""
        idx, per = [int(k) for k in idx], 4 * ENAS_NODES
        return {ct: tuple(p for b in range(c * per, (c + 1) * per, 4) for p in ((idx[b + 2], idx[b]), (idx[b + 3], idx[b + 1])))
                for c, ct in enumerate(("normal", "reduce"))}

    def genotype(self, idx, z=None) -> EnasGenotype:
        return EnasGenotype(**{ct: tuple((ENAS_OPS[k], j) for k, j in p) for ct, p in self.decode(idx).items()})

    def supernet(self, C=16, layers=None, num_classes=10, in_channels=3) -> EnasNetwork:
        return EnasNetwork(None, C, self.default_layers if layers is None else layers, num_classes, False, in_channels)


GENOTYPE_TYPES["enas"] = EnasGenotype


# ===== 8. convolutional auto-encoder space (ASNG-NAS's inpainting space) ====
# Facts from shirakawas/ASNG-NAS inpainting/inpainting_int/cae_model.py and inpainting/common/operations.py.
def _fit_channels(x: torch.Tensor, C: int) -> torch.Tensor:
    """Zero-pad or cut x to C channels (a unit built for more channels than its input gets, e.g. the image)."""
    return F.pad(x, (0, 0, 0, 0, 0, C - x.shape[1])) if x.shape[1] < C else x[:, :C]


class CAENetwork(nn.Module):
    """A chain of conv units (Conv -> ReLU; stride 2 without skip, stride 1 with one) mirrored by deconv units
    (ConvTranspose -> (+ the matching conv output when skip) -> ReLU) and a 3x3 output deconv, no bias anywhere.
    A stride-2 unit meeting a 1-pixel map is passed over. Supernet (`space` given): units for every node, skip flag
    and kernel with max-channel weights, of which a layer uses the first `channels` output channels; forward(x,
    chain) with chain a tuple of (node, skip, kernel, channels). Fixed (`genotype` given): units of exactly the
    genotype's sizes; forward(x)."""

    def __init__(self, space=None, genotype=None, in_channels=3):
        super().__init__()
        conv = lambda i, o, k, s: nn.Conv2d(i, o, k, s, k // 2, bias=False)
        deconv = lambda i, o, k, s: nn.ConvTranspose2d(i, o, k, s, k // 2, output_padding=s - 1, bias=False)
        self.space, self.layers, self.enc, self.dec = space, None, nn.ModuleDict(), nn.ModuleDict()
        if genotype is None:
            C = space.ch_range[1]
            for node in range(space.cols):
                for skip in (0, 1):
                    for k in space.k_sizes:
                        self.enc[f"{node}_{skip}_{k}"] = conv(C, C, k, 2 - skip)
                        self.dec[f"{node}_{skip}_{k}"] = deconv(C, C, k, 2 - skip)
            self.out = deconv(C, in_channels, 3, 1)
            return
        self.layers = tuple((t, skip, k, ch) for t, (k, ch, skip) in enumerate(genotype.layers))
        chs = [in_channels] + [ch for k, ch, skip in genotype.layers]
        for t, skip, k, ch in self.layers:  # a deconv takes the next layer's output (the last: its own conv's)
            self.enc[f"{t}_{skip}_{k}"] = conv(chs[t], ch, k, 2 - skip)
            self.dec[f"{t}_{skip}_{k}"] = deconv(chs[min(t + 2, len(chs) - 1)], ch, k, 2 - skip)
        self.out = deconv(chs[1] if len(chs) > 1 else in_channels, in_channels, 3, 1)

    def forward(self, x, chain=None):
        h, ran, skips = x, [], []
        for node, skip, k, ch in self.layers if chain is None else chain:
            if not skip and min(h.shape[-2:]) == 1:
                continue
            unit = self.enc[f"{node}_{skip}_{k}"]
            h = F.relu(unit(_fit_channels(h, unit.in_channels))[:, :ch])
            ran.append((node, skip, k, ch))
            if skip:
                skips.append(h)
        for node, skip, k, ch in reversed(ran):
            unit = self.dec[f"{node}_{skip}_{k}"]
            h = unit(_fit_channels(h, unit.in_channels))[:, :ch]
            h = F.relu(h + skips.pop() if skip else h)
        return self.out(_fit_channels(h, self.out.in_channels))


@dataclass(frozen=True)
class CAEGenotype:
    """The active chain of an auto-encoder: per encoder layer (kernel, channels, skip), input side first."""

    layers: tuple
    space = "cae"

    def __post_init__(self):
        for t, layer in enumerate(self.layers):
            if (len(layer) != 3 or any(isinstance(v, bool) or not isinstance(v, int) for v in layer[:2])
                    or layer[0] < 1 or layer[0] % 2 == 0 or layer[1] < 1 or not isinstance(layer[2], bool)):
                raise GenotypeError(f"CAE genotype: layer {t} = {layer!r} is not (odd kernel, channels >= 1, skip bool)")

    def to_json(self) -> dict:
        return {"space": "cae", "layers": [list(layer) for layer in self.layers]}

    @classmethod
    def from_json(cls, d: dict) -> "CAEGenotype":
        if "layers" not in d:
            raise GenotypeError("malformed CAE genotype JSON: no key 'layers'")
        return cls(tuple(tuple(_json_list(layer, "CAE genotype layer")) for layer in _json_list(d["layers"], "CAE layers")))

    def __str__(self):
        return "CAE(" + " ".join(f"{'S' if s else 'D'}{k}x{k}:{ch}" for k, ch, s in self.layers) + ")"

    def dot_lines(self) -> list[str]:
        names = ["input"] + [f"conv{t} {k}x{k} {ch}{' skip' if s else ' /2'}" for t, (k, ch, s) in enumerate(self.layers)]
        lines = [f'  "{a}" -> "{b}";' for a, b in zip(names, names[1:] + ["deconv chain -> output"])]
        return lines + [f'  "{names[t + 1]}" -> "deconv chain -> output" [style=dashed, label="skip"];'
                        for t, (_, _, s) in enumerate(self.layers) if s]


class CAESpace:
    """ASNG-NAS's inpainting space with categorical and integer variables (main_inpainting_int.py: 20 columns, one
    row, level-back 5, kernels (1, 3, 5), channels 64..256). Conv node i: a categorical skip flag (2), an integer
    kernel index in [1, len(k_sizes)], an integer channel count in ch_range, and a categorical input among the
    min(i + 1, level_back) previous positions (position 0 is the image, p >= 1 node p - 1); the output node: a
    categorical input among the last min(cols + 1, level_back) positions. Only nodes on the path from the output back
    to the image are active. It is its own set of search variables (names, categories, integers, decode, genotype)."""

    name = "cae"

    def __init__(self, cols=20, k_sizes=(1, 3, 5), ch_range=(64, 256), level_back=5):
        if cols < 1 or not 1 <= ch_range[0] < ch_range[1] or level_back < 1 or len(k_sizes) < 2:
            raise SpaceError(f"CAE space: need cols >= 1, 1 <= min < max channels, >= 2 kernels; got {cols}, {ch_range}, {k_sizes}")
        self.cols, self.k_sizes, self.ch_range, self.level_back = cols, tuple(k_sizes), tuple(ch_range), level_back
        self.categories = [k for i in range(cols) for k in (2, min(i + 1, level_back))] + [min(cols + 1, level_back)]
        self.integers = [r for _ in range(cols) for r in ((1, len(k_sizes)), self.ch_range)]
        self.names = [f"node{i}/{v}" for i in range(cols) for v in ("skip", "input")] + ["output/input"]
        self.groups = ["cae"] * len(self.categories)

    def decode(self, cat, z) -> tuple:
        """Categorical indices and (continuous) integer samples -> the active (node, skip, kernel, channels), input
        first; integers are clipped to their ranges and rounded (half to even, as numpy)."""
        cat = [int(c) for c in cat]
        lo, hi = torch.tensor(self.integers, dtype=torch.float64).T
        z = torch.round(torch.minimum(torch.maximum(torch.as_tensor(z, dtype=torch.float64), lo), hi)).long().tolist()
        first = lambda i: i - self.level_back + 1 if i >= self.level_back else 0  # lowest input position of node i
        active, p = [], first(self.cols) + cat[-1]
        while p > 0:
            active.append(p - 1)
            p = first(p - 1) + cat[2 * (p - 1) + 1]
        return tuple((n, cat[2 * n], self.k_sizes[z[2 * n] - 1], z[2 * n + 1]) for n in reversed(active))

    def genotype(self, cat, z) -> CAEGenotype:
        return CAEGenotype(tuple((k, ch, bool(skip)) for _, skip, k, ch in self.decode(cat, z)))

    def supernet(self, in_channels=3) -> CAENetwork:
        return CAENetwork(self, None, in_channels)


GENOTYPE_TYPES["cae"] = CAEGenotype


# ===================================================================== NB101 graph hash ====
def nb101_hash(spec: NB101Spec) -> str:
    """NAS-Bench-101's look-up key of a cell: the MD5 module hash of the pruned spec, equal for isomorphic cells.
    Labels: input -1, output -2, an op its index in NB101_OPS. Each vertex starts as the MD5 of the text
    `(out-degree, in-degree, label)`; then, once per vertex, every vertex becomes the MD5 of its in-neighbours'
    hashes sorted and joined, '|', its out-neighbours' likewise, '|', its own hash; the key is the MD5 of the
    sorted list's Python text. Facts: google-research/nasbench lib/graph_util.py (hash_module),
    lib/model_spec.py (hash_spec, labels), lib/config.py (available_ops order)."""
    import hashlib

    def md5(text: str) -> str:
        return hashlib.md5(text.encode("utf-8")).hexdigest()

    spec = spec.pruned()
    m, n = spec.matrix, len(spec.matrix)
    labels = [-1] + [NB101_OPS.index(op) for op in spec.ops[1:-1]] + [-2]
    h = [md5(str((sum(m[v]), sum(m[u][v] for u in range(n)), labels[v]))) for v in range(n)]
    for _ in range(n):
        h = [md5("".join(sorted(h[u] for u in range(n) if m[u][v])) + "|"
                 + "".join(sorted(h[w] for w in range(n) if m[v][w])) + "|" + h[v]) for v in range(n)]
    return md5(str(sorted(h)))


# ======================================================= 9. the DARTS recurrent cell space (--space rnn) ====
# Facts from the official DARTS code, quark0/darts rnn/ (model.py, model_search.py, genotypes.py, utils.py,
# train_search.py); no code copied. Cell: s0 = h + sigmoid(c0) * (tanh(h0) - h) with [c0, h0] = [x_t, h_{t-1}] W0;
# node i: [c, h] = s_j W_i, s_i = s_j + sigmoid(c) * (f(h) - s_j), one input j and one activation f per node
# (highway gate); output = mean of the nodes in concat. The search cell mixes every (j, f) and batch-normalises
# (no affine) s0 and every node with one shared BatchNorm.
RNN_OPS = ["none", "tanh", "relu", "sigmoid", "identity"]
RNN_STEPS = 8
RNN_INIT_RANGE = 0.04  # every weight ~ U(-0.04, 0.04), decoder bias 0 (rnn/model.py INITRANGE)
_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda v: v}


@dataclass(frozen=True)
class RecurrentGenotype:
    """DARTS recurrent cell: recurrent[i] = (activation, input) of node i + 1, the input an earlier node (0 = s0,
    the state made from x_t and h_{t-1}); the cell's output h_t is the mean of the nodes in concat."""

    recurrent: tuple
    concat: tuple
    space = "rnn"

    def __post_init__(self):
        n = len(self.recurrent)
        for i, pair in enumerate(self.recurrent):
            if len(pair) != 2 or isinstance(pair[1], bool) or not isinstance(pair[1], int) or not 0 <= pair[1] <= i:
                raise GenotypeError(f"recurrent genotype: recurrent[{i}] = {pair!r} is not (activation, input <= {i})")
        _check_ops([p[0] for p in self.recurrent], RNN_OPS[1:], "recurrent genotype")
        if n == 0 or not self.concat or any(not 0 <= c <= n for c in self.concat) or len(set(self.concat)) != len(self.concat):
            raise GenotypeError(f"recurrent genotype: needs >= 1 node and distinct concat nodes in 0..{n}, got "
                                f"{n} nodes, concat {list(self.concat)}")

    def to_json(self) -> dict:
        return {"space": "rnn", "recurrent": [list(p) for p in self.recurrent], "concat": list(self.concat)}

    @classmethod
    def from_json(cls, d: dict) -> "RecurrentGenotype":
        try:
            pairs = [_json_list(p, "recurrent genotype") for p in _json_list(d["recurrent"], "recurrent genotype")]
            if any(len(p) != 2 for p in pairs):
                raise GenotypeError(f"recurrent genotype: every entry must be [activation, input], got {pairs}")
            return cls(tuple((_json_str(op, "recurrent genotype"), _json_int(j, "recurrent genotype input")) for op, j in pairs),
                       tuple(_json_int(c, "recurrent concat") for c in _json_list(d["concat"], "recurrent concat")))
        except KeyError as err:
            raise GenotypeError(f"malformed recurrent genotype JSON: no key {err}") from err

    def __str__(self):
        return f"Genotype(recurrent={list(self.recurrent)}, concat={list(self.concat)})"

    def dot_lines(self) -> list[str]:
        lines = ['  "x_t, h_{t-1}" -> "0" [label="W0, highway (tanh)"];']
        lines += [f'  "{j}" -> "{i + 1}" [label="{op}"];' for i, (op, j) in enumerate(self.recurrent)]
        return lines + [f'  "{c}" -> "h_t (mean)";' for c in self.concat]


GENOTYPE_TYPES["rnn"] = RecurrentGenotype
_RNN_CONCAT = tuple(range(1, RNN_STEPS + 1))
PUBLISHED.update({  # rnn/genotypes.py DARTS_V1 (first order) and DARTS_V2 (second order, the paper's PTB cell)
    "DARTS_V1_RNN": RecurrentGenotype(_pairs("relu", 0, "relu", 1, "tanh", 2, "relu", 3, "relu", 4, "identity", 1,
                                             "relu", 5, "relu", 1), _RNN_CONCAT),
    "DARTS_V2_RNN": RecurrentGenotype(_pairs("sigmoid", 0, "relu", 1, "relu", 1, "identity", 1, "tanh", 2,
                                             "sigmoid", 5, "tanh", 3, "relu", 5), _RNN_CONCAT),
})
# NASP's PTB cell (its Table 3) is published neither in xujinfan/NASP-codes (CNN code only) nor as text we could
# read, so it is not listed.


def _dropout_mask(shape, p: float, like: torch.Tensor) -> torch.Tensor:
    """Bernoulli(1 - p) / (1 - p) (rnn/utils.py mask2d, LockedDropout, embedded_dropout)."""
    return like.new_empty(shape).bernoulli_(1 - p).div_(1 - p)


def _locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Variational dropout of a (T, B, D) sequence: one mask per sequence, the same at every time step."""
    return x * _dropout_mask((1, x.size(1), x.size(2)), p, x) if training and p > 0 else x


class RecurrentCell(nn.Module):
    """The DARTS recurrent cell run over a sequence. With a genotype: the discrete cell (evaluation model). Without
    (search): forward takes `arch`, either an (n_edges, n_ops) weight matrix (rows: node 1's inputs 0, then node
    2's inputs 0..1, ...; columns: `ops`), which mixes every input and activation of every node (PAPER: DARTS Eq. 2),
    or a tuple of (activation, input) pairs, which runs only that single path (NASP's discrete A_bar)."""

    def __init__(self, ninp: int, nhid: int, dropouth: float, dropoutx: float, genotype=None,
                 ops: Sequence[str] = RNN_OPS, steps: int = RNN_STEPS):
        super().__init__()
        _check_ops(ops, RNN_OPS, "recurrent space")
        self.nhid, self.dropouth, self.dropoutx, self.genotype, self.ops = nhid, dropouth, dropoutx, genotype, list(ops)
        steps = len(genotype.recurrent) if genotype is not None else steps
        self.W0 = nn.Parameter(torch.empty(ninp + nhid, 2 * nhid).uniform_(-RNN_INIT_RANGE, RNN_INIT_RANGE))
        self.Ws = nn.ParameterList([nn.Parameter(torch.empty(nhid, 2 * nhid).uniform_(-RNN_INIT_RANGE, RNN_INIT_RANGE))
                                    for _ in range(steps)])
        self.bn = nn.BatchNorm1d(nhid, affine=False) if genotype is None else None  # search cell only

    def forward(self, x: torch.Tensor, h: torch.Tensor, arch=None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (T, B, ninp), h (B, nhid) -> (every step's output (T, B, nhid), the last one)."""
        arch = self.genotype.recurrent if arch is None else arch
        train = self.training
        x_mask = _dropout_mask((x.size(1), x.size(2)), self.dropoutx, x) if train and self.dropoutx > 0 else None
        h_mask = _dropout_mask((x.size(1), self.nhid), self.dropouth, x) if train and self.dropouth > 0 else None
        outputs = []
        for x_t in x:  # the same masks at every time step (variational dropout)
            h = self.step(x_t, h, x_mask, h_mask, arch)
            outputs.append(h)
        return torch.stack(outputs), h

    def _bn(self, s):
        return s if self.bn is None else self.bn(s)

    def step(self, x, h_prev, x_mask, h_mask, arch) -> torch.Tensor:
        m = (lambda v, mask: v if mask is None else v * mask)
        c0, h0 = torch.cat([m(x, x_mask), m(h_prev, h_mask)], -1).mm(self.W0).chunk(2, -1)
        s0 = self._bn(h_prev + c0.sigmoid() * (h0.tanh() - h_prev))
        if torch.is_tensor(arch):
            return self._mixture(s0, h_mask, arch)
        states = [s0]
        for i, (op, j) in enumerate(arch):
            c, hh = m(states[j], h_mask).mm(self.Ws[i]).chunk(2, -1)
            states.append(self._bn(states[j] + c.sigmoid() * (_ACTIVATIONS[op](hh) - states[j])))
        concat = self.genotype.concat if self.genotype is not None else range(1, len(self.Ws) + 1)
        return torch.stack([states[c] for c in concat]).mean(0)

    def _mixture(self, s0, h_mask, weights) -> torch.Tensor:
        states, row = s0.unsqueeze(0), 0
        for i, W in enumerate(self.Ws):
            ch = (states if h_mask is None else states * h_mask).matmul(W)  # (i + 1, B, 2 nhid): every input j
            c, hh = ch.chunk(2, -1)
            c, w = c.sigmoid(), weights[row:row + i + 1]
            s = torch.zeros_like(s0)
            for k, op in enumerate(self.ops):
                if op != "none":  # `none` contributes 0 (its weight still takes a share of the softmax)
                    s = s + (w[:, k, None, None] * (states + c * (_ACTIVATIONS[op](hh) - states))).sum(0)
            states, row = torch.cat([states, self._bn(s).unsqueeze(0)]), row + i + 1
        return states[1:].mean(0)  # the search cell averages all its nodes (rnn/model_search.py CONCAT = 8)


class RNNModel(nn.Module):
    """DARTS' language model (rnn/model.py RNNModel): embedding -> one recurrent cell -> decoder whose weight is the
    embedding's (tied, so emsize = nhid). Dropouts: dropoute removes whole words from the embedding matrix, dropouti
    and dropout are variational masks on the embedded input and on the cell's output, dropoutx / dropouth the
    cell's own masks on x_t and on every state it multiplies. genotype None: the search model (RecurrentCell)."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, genotype=None, dropout=0.75, dropouth=0.25, dropoutx=0.75,
                 dropouti=0.2, dropoute=0.1, ops: Sequence[str] = RNN_OPS, steps: int = RNN_STEPS):
        super().__init__()
        if ninp != nhid:
            raise SpaceError(f"the DARTS language model ties its decoder to the embedding: emsize ({ninp}) must "
                             f"equal nhid ({nhid})")
        self.nhid, self.dropout, self.dropouti, self.dropoute = nhid, dropout, dropouti, dropoute
        self.encoder = nn.Embedding(ntoken, ninp)
        self.cell = RecurrentCell(ninp, nhid, dropouth, dropoutx, genotype, ops, steps)
        self.decoder = nn.Linear(nhid, ntoken)
        self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -RNN_INIT_RANGE, RNN_INIT_RANGE)
        nn.init.zeros_(self.decoder.bias)

    def init_hidden(self, batch_size: int) -> torch.Tensor:
        return self.encoder.weight.new_zeros(batch_size, self.nhid)

    def forward(self, x: torch.Tensor, hidden: torch.Tensor, arch=None):
        """x (T, B) token ids, hidden (B, nhid); arch: the search cell's weights or path ({'recurrent': ...} or bare).
        Returns (logits (T, B, ntoken), last hidden, raw cell outputs, dropped cell outputs)."""
        arch = arch["recurrent"] if isinstance(arch, dict) else arch
        emb_w = self.encoder.weight
        if self.training and self.dropoute > 0:
            emb_w = emb_w * _dropout_mask((emb_w.size(0), 1), self.dropoute, emb_w)
        emb = _locked_dropout(F.embedding(x, emb_w), self.dropouti, self.training)
        raw, hidden = self.cell(emb, hidden, arch)
        out = _locked_dropout(raw, self.dropout, self.training)
        return self.decoder(out), hidden, raw, out


def lm_loss(model, x, y, hidden, arch=None, ar: float = 0.0, tar: float = 0.0):
    """(training loss, NLL per token, next hidden). `model` is an RNNModel or any callable like it (a functional
    call with other weights). ar: activation regularisation ar * mean(dropped output^2); tar: temporal activation
    regularisation tar * mean((h_t - h_{t-1})^2) of the raw outputs (rnn/train.py --alpha, --beta)."""
    logits, hidden, raw, dropped = model(x, hidden, arch)
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
    loss = nll + ar * dropped.pow(2).mean() if ar else nll
    return (loss + tar * (raw[1:] - raw[:-1]).pow(2).mean() if tar else loss), nll, hidden


def lm_weight_step(model, opt, batch, hidden, arch, clip: float, ar: float = 0.0, tar: float = 0.0):
    """One SGD step of the language model on a window (x, y): loss = NLL + AR / TAR terms, gradient norm clipped to
    `clip` (rnn/train.py, train_search.py). Returns (NLL, the next hidden state, detached)."""
    opt.zero_grad(set_to_none=True)
    loss, nll, hidden = lm_loss(model, *batch, hidden, arch, ar, tar)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return nll.item(), hidden.detach()


@torch.no_grad()
def evaluate_lm(model, source: torch.Tensor, bptt: int, arch=None) -> float:
    """Mean NLL per predicted token of a batchified stream (T, B): eval mode, windows of bptt, hidden carried on.
    (rnn/train.py divides the sum by T, one row more than it predicts; we divide by the rows predicted.)"""
    model.eval()
    hidden, total, rows = model.init_hidden(source.size(1)), 0.0, 0
    for i in range(0, source.size(0) - 1, bptt):
        n = min(bptt, source.size(0) - 1 - i)
        _, nll, hidden = lm_loss(model, source[i:i + n], source[i + 1:i + 1 + n], hidden, arch)
        total, rows = total + nll.item() * n, rows + n
    return total / rows


class RecurrentSpace:
    """The DARTS recurrent cell space: 8 nodes, node i chooses one of its i earlier nodes and one activation;
    one architecture group 'recurrent' of shape (36, n_ops)."""

    name, steps = "rnn", RNN_STEPS

    def __init__(self, ops=RNN_OPS):
        _check_ops(ops, RNN_OPS, "recurrent space")
        self.ops = {"recurrent": list(ops)}
        self.node_slices = [(i * (i + 1) // 2, (i + 1) * (i + 2) // 2) for i in range(self.steps)]
        self.n_edges = self.node_slices[-1][1]

    def arch_shapes(self) -> dict:
        return {"recurrent": (self.n_edges, len(self.ops["recurrent"]))}

    def supernet(self, ntoken: int, ninp: int = 300, nhid: int = 300, **dropouts) -> RNNModel:
        return RNNModel(ntoken, ninp, nhid, None, ops=self.ops["recurrent"], steps=self.steps, **dropouts)

    def derive(self, weights: dict) -> RecurrentGenotype:
        """rnn/model_search.py genotype(): per node the input whose strongest non-`none` weight is largest (ties:
        the lower input), with that strongest non-`none` activation; concat = all 8 nodes."""
        ops = self.ops["recurrent"]
        w = weights["recurrent"].detach().float().cpu()
        allowed = [k for k, n in enumerate(ops) if n != "none"]
        pairs = []
        for start, end in self.node_slices:
            best_w, best_k = w[start:end][:, allowed].max(dim=1)
            j = max(range(end - start), key=lambda r: (best_w[r].item(), -r))
            pairs.append((ops[allowed[best_k[j]]], j))
        return RecurrentGenotype(tuple(pairs), tuple(range(1, self.steps + 1)))
