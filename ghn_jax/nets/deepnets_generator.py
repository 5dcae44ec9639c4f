"""DeepNets-1M architecture generator (spec section 7.2-7.5), deterministic and file-free.

``sample(split, index, seed)`` draws architecture ``index`` of a DeepNets-1M split from a random stream derived
only from ``(seed, split, index)``, so every architecture can be drawn on its own, in any order, on any machine.
The distribution follows the reference generator: the DARTS-style genotype sampler over 15 candidate ops, the
per-split ranges of cells and steps, the rejection rules (cse/conv constraints, parameter budget, networks whose
output is cut off by ``none`` ops) and, for the train split, the width re-sampling of the training loader.
The architectures are *not* the ones of the released dataset files (those depend on the PyTorch random stream).

Also here, because the generator needs them: an exact parameter counter (:func:`count_params`) for the
``Network`` family and ResNet-50, and an analytic graph-node counter (:func:`count_graph_nodes`,
:func:`graph_node_counts`) that reproduces the node set of the reference's graph construction (dead ops pruned,
one-input sums/concats removed), except that ``msa`` and ``cse`` blocks always get their node (spec 1.4).
Checked against 2,000 networks of the reference generator: parameter counts (CIFAR-10 and ImageNet inputs) equal
in every case, node counts equal for every network without ``msa``/``cse`` (elsewhere the reference's positional
msa/cse tests drop some of those nodes).

Output schema (as ``golden/ghn2/*/arch.json``)::

    {'family': 'ppuda.deepnets1m.net.Network',
     'genotype': {'normal': [[op, input], ...], 'normal_concat': [...], 'reduce': [...], 'reduce_concat': [...]},
     'network_args': {C, num_classes, n_cells, ks, is_imagenet_input, stem_pool, stem_type, norm, preproc,
                      C_mult, fc_layers, fc_dim, glob_avg, auxiliary},
     'num_classes': int, 'input_size': [3, H, W],
     'source': {'split', 'index', 'seed', 'generator_meta': {'num_nodes', 'num_params': {'cifar10', 'imagenet'}}}}

``generator_meta`` describes the generator-time network (C=32, fc_dim=256, 10 classes), like the reference's meta
files; the train split's width re-sampling reads its parameter counts.

Command line: ``python -m ghn_jax.nets.deepnets_generator --split test --n 10 --out DIR``.
"""
from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import json
import os
import zlib
from typing import Any, Optional, Sequence

import numpy as np

# The 15 candidate ops of the genotype sampler, in the reference order (the order fixes the masks below).
CANDIDATE_OPS = ('none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3', 'sep_conv_5x5',
                 'dil_conv_3x3', 'dil_conv_5x5', 'conv_1x1', 'conv_7x1_1x7', 'conv_3x3', 'conv_5x5', 'conv_7x7',
                 'msa', 'cse')
_FIRST_PARAM_OP = CANDIDATE_OPS.index('sep_conv_3x3')  # `only_pool` masks this op and every later one
_MASKED_LOGIT = -1000.0

# The 15 graph primitives (node types) in the reference order.
GRAPH_PRIMITIVES = ('max_pool', 'avg_pool', 'sep_conv', 'dil_conv', 'conv', 'msa', 'cse', 'sum', 'concat', 'input',
                    'bias', 'bn', 'ln', 'pos_enc', 'glob_avg')

SPLITS = ('train', 'val', 'test', 'wide', 'deep', 'dense', 'bnfree', 'predefined', 'search')
SPLIT_SIZES = {'train': 1_000_000, 'val': 500, 'test': 500, 'wide': 100, 'deep': 100, 'dense': 100, 'bnfree': 100,
               'predefined': 2, 'search': 100_000}
DATASETS = ('cifar10', 'imagenet')

NETWORK_FAMILY = 'ppuda.deepnets1m.net.Network'
GENERATOR_C = 32         # width at which the generator builds, counts and rejects networks
GENERATOR_FC_DIM = 256
GENERATOR_CLASSES = 10

# Train-time width re-sampling (spec 7.4).
TRAIN_WIDTHS = tuple(range(32, 129, 16))       # 32, 48, ..., 128
TRAIN_FC_DIMS = tuple(range(64, 513, 64))      # 64, 128, ..., 512

VIT_GENOTYPE = {'normal': [['none', 0], ['msa', 1]], 'normal_concat': [2],
                'reduce': [['none', 0], ['avg_pool_3x3', 1]], 'reduce_concat': [2]}

_MAX_ATTEMPTS = 100_000  # rejection-sampling guard; real acceptance rates are far higher


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """Ranges of the generator for one split (spec 7.3)."""
    min_steps: int = 1
    medium_steps: int = 2           # max steps of a net deeper than its depth threshold
    max_steps: int = 4
    min_layers: int = 4
    deep_thresholds: tuple[int, ...] = (7, 8, 9, 10)
    max_layers: int = 18
    max_params: int = 10 ** 7


def split_config(split: str) -> SplitConfig:
    """Generator ranges of a split (``wide`` uses ``test``'s; ``predefined`` has none)."""
    if split == 'deep':
        return SplitConfig(min_layers=10, deep_thresholds=(18,), max_layers=36, max_params=10 ** 8)
    if split == 'dense':
        return SplitConfig(min_steps=2, medium_steps=6, max_steps=10, max_params=10 ** 8)
    if split == 'search':
        return SplitConfig(medium_steps=3, max_steps=6, min_layers=6, deep_thresholds=(10,), max_layers=20)
    if split in ('train', 'val', 'test', 'wide', 'bnfree'):
        return SplitConfig()
    raise ValueError(f'no generator for split {split!r}; splits: {SPLITS}')


# --------------------------------------------------------------------------------------------------------------
# Genotype sampler (spec 7.2)
# --------------------------------------------------------------------------------------------------------------

def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _parse_cell(weights: np.ndarray, steps: int, allow_none: bool) -> list[list]:
    """DARTS-style discretisation: per step keep the 2 inputs with the strongest best op, each with that op."""
    allowed = np.ones(len(CANDIDATE_OPS), dtype=bool)
    allowed[CANDIDATE_OPS.index('none')] = allow_none
    pairs, row = [], 0
    for step in range(steps):
        n_inputs = step + 2
        w = np.where(allowed, weights[row:row + n_inputs], -np.inf)
        strength = w.max(axis=1)
        inputs = np.argsort(-strength, kind='stable')[:2]
        for j in inputs:
            pairs.append([CANDIDATE_OPS[int(np.argmax(w[j]))], int(j)])
        row += n_inputs
    return pairs


def sample_genotype(rng: np.random.Generator, steps: int = 1, only_pool: bool = False, drop_concat: bool = True,
                    allow_none: bool = True, allow_transformer: bool = False) -> dict[str, list]:
    """Sample a genotype: random op logits (scale 1e-3) per (edge, op) for the normal and the reduce cell.

    ``only_pool`` restricts the reduce cell to none/max/avg/skip; ``allow_transformer=False`` forbids ``msa``;
    ``allow_none=False`` excludes ``none`` from both the input and the op choice; ``drop_concat`` keeps each
    intermediate state in the (shared) concat list with probability 0.5, always keeping the last one.
    """
    if steps < 1:
        raise ValueError(f'steps must be >= 1, got {steps}')
    n_edges = sum(2 + i for i in range(steps))
    logits = {cell: 1e-3 * rng.standard_normal((n_edges, len(CANDIDATE_OPS))) for cell in ('normal', 'reduce')}
    if only_pool:
        logits['reduce'][:, _FIRST_PARAM_OP:] = _MASKED_LOGIT
    if not allow_transformer:
        for cell_logits in logits.values():
            cell_logits[:, CANDIDATE_OPS.index('msa')] = _MASKED_LOGIT
    normal = _parse_cell(_softmax(logits['normal']), steps, allow_none)
    reduce = _parse_cell(_softmax(logits['reduce']), steps, allow_none)
    last = steps + 1
    if drop_concat:
        concat = [i for i in range(2, last + 1) if i == last or rng.random() > 0.5]
    else:
        concat = list(range(2, last + 1))
    return {'normal': normal, 'normal_concat': concat, 'reduce': reduce, 'reduce_concat': list(concat)}


def _genotype_ops(genotype: dict) -> list[str]:
    return [op for op, _ in genotype['normal']] + [op for op, _ in genotype['reduce']]


def is_vit_genotype(genotype: dict) -> bool:
    """A genotype with any ``msa`` op builds a ViT-style network (conv-stride stem, positional encoding)."""
    return 'msa' in _genotype_ops(genotype)


def genotype_accepted(genotype: dict) -> bool:
    """The generator's structural rejection rules (spec 7.3 step 3); True if the genotype is kept."""
    ops = _genotype_ops(genotype)
    per_cell = [[op for op, _ in genotype[c]] for c in ('normal', 'reduce')]
    has_cse = 'cse' in ops
    has_conv = any('conv' in op for op in ops)
    two_cse = any(cell.count('cse') > 1 for cell in per_cell)
    two_large = any(sum(op in ('conv_5x5', 'conv_7x7') for op in cell) > 1 for cell in per_cell)
    if (has_cse and not has_conv) or two_cse or two_large:
        return False
    return has_cse or has_conv or 'msa' in ops


# --------------------------------------------------------------------------------------------------------------
# Walking the Network structure: exact parameter count and the graph sketch (spec 7.1, 1.6)
# --------------------------------------------------------------------------------------------------------------

def _parse_op(op: str) -> tuple[str, int]:
    """``'sep_conv_5x5'`` -> ``('sep_conv', 5)``, ``'conv_7x1_1x7'`` -> ``('conv2', 7)``, ``'cse'`` -> ``('cse', 0)``."""
    words, kernel, n_kernels = [], 0, 0
    for word in op.split('_'):
        dims = word.split('x')
        if len(dims) == 2 and all(d.isdigit() for d in dims):
            kernel, n_kernels = max(kernel, int(dims[0]), int(dims[1])), n_kernels + 1
        else:
            words.append(word)
    return '_'.join(words) + ('2' if n_kernels > 1 else ''), kernel


def _has_bn(norm: Optional[str]) -> bool:
    if norm in (None, '', 'none'):
        return False
    if str(norm).startswith('bn'):
        return True
    raise ValueError(f'unsupported norm {norm!r}')


class _Sketch:
    """A symbolic graph: nodes are primitive names with predecessor lists; refs are node indices."""

    def __init__(self) -> None:
        self.prims: list[str] = []
        self.preds: list[tuple[int, ...]] = []

    def add(self, prim: str, *preds: int) -> int:
        self.prims.append(prim)
        self.preds.append(preds)
        return len(self.prims) - 1

    def chain(self, x: int, prims: Sequence[str]) -> int:
        for prim in prims:
            x = self.add(prim, x)
        return x

    def merge(self, prim: str, refs: Sequence[int]) -> int:
        """A sum/concat node, unless all inputs come from one node (the reference drops such nodes)."""
        distinct = list(dict.fromkeys(refs))
        return distinct[0] if len(distinct) == 1 else self.add(prim, *distinct)

    def live_counts(self, output: int) -> collections.Counter:
        """Primitive counts of the nodes the output depends on (the nodes a backward trace reaches)."""
        seen, stack = {output}, [output]
        while stack:
            for p in self.preds[stack.pop()]:
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
        return collections.Counter(self.prims[i] for i in seen)


def _factorized_reduce(c_in: int, c_out: int, bn: bool) -> int:
    return 2 * c_in * (c_out // 2) + (2 * c_out if bn else 0)


def _op_params(op: str, c_in: int, c_out: int, stride: int, bn: bool) -> int:
    """Parameters of one cell op as the reference instantiates it."""
    kind, k = _parse_op(op)
    norm = (lambda c: 2 * c) if bn else (lambda c: 0)
    if kind in ('none', 'max_pool', 'avg_pool'):
        return 0
    if kind == 'skip_connect':
        return 0 if stride == 1 else _factorized_reduce(c_in, c_out, bn)
    if kind == 'conv':
        return c_in * c_out * k * k + norm(c_out)
    if kind == 'conv2':  # 1 x k conv (c_in -> c_in) then k x 1 conv (c_in -> c_out)
        return c_in * c_in * k + c_in * c_out * k + norm(c_out)
    if kind == 'sep_conv':
        return 2 * c_in * k * k + c_in * c_in + c_in * c_out + norm(c_in) + norm(c_out)
    if kind == 'dil_conv':
        return c_in * k * k + c_in * c_out + norm(c_out)
    if kind == 'msa':
        inner = (c_in // 8) * 8
        return (3 * c_in * inner + inner * c_out + c_out           # to_qkv (no bias), to_out
                + 2 * 2 * c_in                                      # ln1, ln2
                + c_in * c_out + c_out + c_out * c_in + c_in)       # feed-forward
    if kind == 'cse':
        half = c_in // 2
        return c_in * half + half + half * c_in + c_in
    raise ValueError(f'unknown DeepNets-1M op {op!r}; known: {CANDIDATE_OPS}')


def _op_nodes(g: _Sketch, x: int, op: str, stride: int, bn: bool) -> int:
    """Graph nodes of one cell op (spec 1.6); returns the op's output node."""
    kind, _ = _parse_op(op)
    b = ['bn'] if bn else []
    if kind in ('max_pool', 'avg_pool'):
        return g.add(kind, x)
    if kind == 'skip_connect':
        return x if stride == 1 else _fr_nodes(g, x, bn)
    if kind == 'conv':
        return g.chain(x, ['conv'] + b)
    if kind == 'conv2':
        return g.chain(x, ['conv', 'conv'] + b)
    if kind == 'sep_conv':
        return g.chain(x, ['sep_conv', 'conv'] + b + ['sep_conv', 'conv'] + b)
    if kind == 'dil_conv':
        return g.chain(x, ['dil_conv', 'conv'] + b)
    if kind == 'msa':
        attn = g.chain(x, ['ln', 'conv', 'msa', 'conv', 'bias'])
        res = g.add('sum', attn, x)
        ff = g.chain(res, ['ln', 'conv', 'bias', 'conv', 'bias'])
        return g.add('sum', ff, res)
    if kind == 'cse':
        gate = g.chain(x, ['conv', 'bias', 'conv', 'bias'])
        return g.add('cse', gate, x)
    raise ValueError(f'op {op!r} has no graph nodes')


def _fr_nodes(g: _Sketch, x: int, bn: bool) -> int:
    cat = g.add('concat', g.add('conv', x), g.add('conv', x))
    return g.add('bn', cat) if bn else cat


@dataclasses.dataclass
class _Walk:
    params: int = 0           # everything the reference instantiates
    params_run: int = 0       # only modules the forward pass runs (ops on `none`-cut states are skipped)
    output: Optional[int] = None
    sketch: _Sketch = dataclasses.field(default_factory=_Sketch)


def _split_arch(arch: dict) -> tuple[dict, dict]:
    """(genotype, network_args) from the golden schema or the flat bench schema; missing args get defaults."""
    genotype = arch['genotype']
    if isinstance(genotype, str):
        raise ValueError(f'genotype {genotype!r} is not a DeepNets-1M cell description')
    raw = arch.get('network_args') or {k: v for k, v in arch.items() if k != 'genotype'}
    args = {'num_classes': arch.get('num_classes', GENERATOR_CLASSES), 'ks': 3, 'is_imagenet_input': False,
            'stem_pool': False, 'stem_type': 0, 'norm': 'bnorm', 'preproc': True, 'C_mult': 2, 'fc_layers': 1,
            'fc_dim': 0, 'glob_avg': True, 'auxiliary': False}
    args.update({k: v for k, v in raw.items() if k in args or k in ('C', 'n_cells')})
    for key in ('C', 'n_cells'):
        if key not in args:
            raise KeyError(f'architecture description lacks {key!r}')
    return genotype, args


def _walk(arch: dict) -> _Walk:
    """Follow the reference ``Network`` constructor and forward pass once, counting params and sketching nodes."""
    genotype, a = _split_arch(arch)
    C, n_cells, imagenet = int(a['C']), int(a['n_cells']), bool(a['is_imagenet_input'])
    bn, preproc, c_mult = _has_bn(a['norm']), bool(a['preproc']), int(a['C_mult'])
    vit = is_vit_genotype(genotype)
    w = _Walk()
    g = w.sketch
    norm = (lambda c: 2 * c) if bn else (lambda c: 0)
    b = ['bn'] if bn else []

    def count(n: int, run: bool = True) -> None:
        w.params += n
        w.params_run += n if run else 0

    x = g.add('input')
    if vit:
        k = 16 if imagenet else 3
        count(3 * C * k * k + C * (14 if imagenet else 11) ** 2)
        s0 = s1 = g.add('sum', g.add('conv', x), g.add('pos_enc'))
        c_pp = c_p = C
    elif int(a['stem_type']) == 0:
        c_stem = C * (3 if (preproc and not imagenet) else 1)
        count(3 * c_stem * a['ks'] ** 2 + norm(c_stem))
        s0 = s1 = g.chain(x, ['conv'] + b + (['max_pool'] if a['stem_pool'] else []))
        c_pp = c_p = c_stem
    elif int(a['stem_type']) == 1:
        half = C // 2
        count(3 * half * a['ks'] ** 2 + norm(half) + half * C * 9 + norm(C) + C * C * 9 + norm(C))
        s0 = g.chain(x, ['conv'] + b + ['conv'] + b)
        s1 = g.chain(s0, ['conv'] + b)
        c_pp = c_p = C
    else:
        raise ValueError(f"stem_type must be 0 or 1, got {a['stem_type']}")

    def is_reduction(i: int) -> bool:
        return i > 0 and i in (n_cells // 3, 2 * n_cells // 3)

    concat_steps = len(genotype['normal_concat'])
    c_curr, reduction_prev = C, int(a['stem_type']) == 1
    for i in range(n_cells):
        reduction = is_reduction(i)
        c_curr *= c_mult if reduction else 1
        c_in = c_curr if preproc else c_p
        c_out = c_curr * (c_mult if (is_reduction(i + 1) and concat_steps == 1 and not preproc) else 1)
        states: list[Optional[int]] = [s0, s1]
        if preproc:
            if reduction_prev and not vit:
                count(_factorized_reduce(c_pp, c_out, bn), run=s0 is not None)
                states[0] = None if s0 is None else _fr_nodes(g, s0, bn)
            else:
                count(c_pp * c_out + norm(c_out), run=s0 is not None)
                states[0] = None if s0 is None else g.chain(s0, ['conv'] + b)
            count(c_p * c_out + norm(c_out), run=s1 is not None)
            states[1] = None if s1 is None else g.chain(s1, ['conv'] + b)
        ops = genotype['reduce' if reduction else 'normal']
        concat = genotype['reduce_concat' if reduction else 'normal_concat']
        for step in range(len(ops) // 2):
            refs = []
            for op, index in ops[2 * step: 2 * step + 2]:
                stride = 2 if (reduction and index < 2 and not vit) else 1
                h = states[index]
                run = op != 'none' and h is not None
                count(_op_params(op, c_in if index <= 1 else c_out, c_out, stride, bn), run=run)
                if run:
                    refs.append(_op_nodes(g, h, op, stride, bn))
            states.append(g.merge('sum', refs) if refs else None)
        alive = [states[j] for j in concat if states[j] is not None]
        out = g.merge('concat', [alive[0] if states[j] is None else states[j] for j in concat]) if alive else None
        s0, s1 = s1, out
        reduction_prev = reduction
        c_pp, c_p = c_p, len(concat) * c_curr
        if a['auxiliary'] and i == 2 * n_cells // 3:
            count(c_p * 128 + norm(128) + 128 * 768 * 4 + (0 if imagenet else norm(768))
                  + 768 * a['num_classes'] + a['num_classes'], run=False)

    if not a['glob_avg']:
        side = (7 if (a['stem_type'] == 1 or a['stem_pool']) else 14) if imagenet else \
            (4 if (a['stem_type'] == 1 or a['stem_pool']) else 8)
        c_p *= side ** 2
    fc_layers, fc_dim, n_cls = max(1, int(a['fc_layers'])), int(a['fc_dim']), int(a['num_classes'])
    dims = [c_p] + [fc_dim] * (fc_layers - 1) + [n_cls]
    count(sum(d_in * d_out + d_out for d_in, d_out in zip(dims[:-1], dims[1:])))
    if s1 is not None:
        y = g.add('glob_avg', s1) if a['glob_avg'] else s1
        w.output = g.chain(y, ['conv', 'bias'] * fc_layers)
    return w


def _resnet50_params(num_classes: int) -> int:
    """torchvision ResNet-50 with a 3x3 conv1 (the CIFAR adjustment; ImageNet's 7x7 conv1 adds 64*3*40)."""
    total, c_in = 64 * 3 * 9 + 2 * 64, 64
    for planes, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for j in range(blocks):
            total += c_in * planes + planes * planes * 9 + planes * 4 * planes + 2 * (2 * planes + 4 * planes)
            if j == 0:
                total += c_in * 4 * planes + 2 * 4 * planes
            c_in = 4 * planes
    return total + 2048 * num_classes + num_classes


def _is_resnet50(arch: dict) -> bool:
    return 'genotype' not in arch and str(arch.get('model', '')).split('.')[-1].lower() == 'resnet50'


def count_params(arch: dict, executed_only: bool = False) -> int:
    """Exact number of trainable parameters of the reference network described by ``arch``.

    Every module the PyTorch ``Network`` instantiates is counted (also ops that the graph prunes), like the
    reference's ``capacity``. ``executed_only=True`` leaves out the modules the forward pass never runs (ops and
    preprocessing fed by a state cut off by ``none`` ops, and an auxiliary head) -- the count of a lazily
    initialised Flax module. Accepts the golden (``network_args``) and the flat bench schema; missing arguments
    take the reference constructor's defaults, except ``is_imagenet_input`` (False) and ``num_classes`` (10).
    Also accepts the ResNet-50 description of the ``predefined`` split.
    """
    if _is_resnet50(arch):
        n = _resnet50_params(int(arch.get('num_classes', GENERATOR_CLASSES)))
        return n + (64 * 3 * (49 - 9) if not arch.get('adjust_net') else 0)
    w = _walk(arch)
    return w.params_run if executed_only else w.params


def graph_node_counts(arch: dict) -> dict[str, int]:
    """Per-primitive node counts of the reference graph of ``arch`` (``msa``/``cse`` nodes always emitted).

    Raises ValueError if the network has no output (every path cut by ``none`` ops).
    """
    if _is_resnet50(arch):
        stem_pool = 0 if arch.get('adjust_net') else 1
        counts = {'input': 1, 'conv': 54, 'bn': 53, 'sum': 16, 'glob_avg': 1, 'bias': 1, 'max_pool': stem_pool}
        return {k: v for k, v in counts.items() if v}
    w = _walk(arch)
    if w.output is None:
        raise ValueError('the network has no output: every path is cut by `none` ops')
    counts = w.sketch.live_counts(w.output)
    return {p: counts[p] for p in GRAPH_PRIMITIVES if counts[p]}


def count_graph_nodes(arch: dict) -> int:
    """Number of nodes of the reference graph of ``arch`` (see :func:`graph_node_counts`)."""
    return sum(graph_node_counts(arch).values())


def has_output(arch: dict) -> bool:
    """False if ``none`` ops cut every path to the classifier (the generator rejects such networks)."""
    return _is_resnet50(arch) or _walk(arch).output is not None


# --------------------------------------------------------------------------------------------------------------
# The generator (spec 7.3-7.5)
# --------------------------------------------------------------------------------------------------------------

def _rng_streams(split: str, index: int, seed: int, n: int) -> list[np.random.Generator]:
    """Independent generators determined only by ``(seed, split, index)``."""
    key = zlib.crc32(split.encode('ascii'))
    return [np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), key, int(index)]).spawn(n)]


def _network_args(n_cells: int, ks: int, stem_pool: bool, stem_type: int, norm: Optional[str], preproc: bool,
                  c_mult: int, fc_layers: int, glob_avg: bool) -> dict[str, Any]:
    return {'C': GENERATOR_C, 'num_classes': GENERATOR_CLASSES, 'n_cells': n_cells, 'ks': ks,
            'is_imagenet_input': False, 'stem_pool': stem_pool, 'stem_type': stem_type, 'norm': norm,
            'preproc': preproc, 'C_mult': c_mult, 'fc_layers': fc_layers, 'fc_dim': GENERATOR_FC_DIM,
            'glob_avg': glob_avg, 'auxiliary': False}


def _generate(split: str, rng: np.random.Generator) -> tuple[dict, dict, dict]:
    """Rejection-sample one generator-time network: (genotype, network_args at C=32 CIFAR, generator_meta)."""
    cfg = split_config(split)
    for _ in range(_MAX_ATTEMPTS):
        n_cells = int(rng.integers(cfg.min_layers, cfg.max_layers + 1))
        threshold = int(rng.choice(cfg.deep_thresholds))
        steps = int(rng.integers(cfg.min_steps, (cfg.max_steps if n_cells <= threshold else cfg.medium_steps) + 1))
        only_pool = bool(rng.random() > 0.5)
        drop_concat = bool(rng.random() > 0.5) if steps > 1 else False
        genotype = sample_genotype(rng, steps, only_pool=only_pool, drop_concat=drop_concat, allow_none=steps > 1,
                                   allow_transformer=True)
        ks = int(rng.choice([3, 5, 7]))
        if not genotype_accepted(genotype):
            continue
        vit = is_vit_genotype(genotype)
        c_mult = int(rng.choice([1, 2]))
        if steps > 1 or c_mult > 1:
            preproc = True
        elif split == 'search':
            preproc = bool((not vit and rng.random() > 0.2) or (vit and rng.random() > 0.8))
        else:
            preproc = bool(not vit or rng.random() > 0.8)
        glob_avg = bool(vit or n_cells > threshold or rng.random() > 0.1)
        if split == 'bnfree':
            norm = None
        elif split == 'search':
            norm = 'bnorm'
        elif n_cells <= cfg.min_layers + 1 and steps <= cfg.medium_steps:
            norm = 'bnorm' if rng.random() < 0.5 else None
        else:
            norm = 'bnorm'
        stem_type = int(rng.integers(0, 2))
        stem_pool = bool(stem_type == 0 and rng.random() > 0.5)
        fc_layers = int(rng.integers(1, 3))
        args = _network_args(n_cells, ks, stem_pool, stem_type, norm, preproc, c_mult, fc_layers, glob_avg)

        arch = {'genotype': genotype, 'network_args': args}
        walk = _walk(arch)
        if walk.output is None:  # disconnected: `none` ops cut the output
            continue
        n_cifar = walk.params
        n_imagenet = count_params({'genotype': genotype, 'network_args': {**args, 'is_imagenet_input': True}})
        if max(n_cifar, n_imagenet) > cfg.max_params:
            continue
        meta = {'num_nodes': sum(walk.sketch.live_counts(walk.output).values()),
                'num_params': {'cifar10': n_cifar, 'imagenet': n_imagenet}}
        return genotype, args, meta
    raise RuntimeError(f'no architecture accepted for split {split!r} after {_MAX_ATTEMPTS} attempts')


def resample_width(arch: dict, rng: np.random.Generator, dataset: str = 'cifar10') -> dict:
    """Train-time width sampling (spec 7.4): a copy of ``arch`` with new ``C`` and ``fc_dim``.

    Large or deep networks keep C=32; the smaller the generator-time network, the wider it may become.
    """
    genotype, args = arch['genotype'], arch['network_args']
    meta = arch.get('source', {}).get('generator_meta', {}).get('num_params', {})
    if dataset in meta:
        millions = meta[dataset] / 1e6
    else:
        base = {**args, 'C': GENERATOR_C, 'fc_dim': GENERATOR_FC_DIM, 'num_classes': GENERATOR_CLASSES,
                'is_imagenet_input': dataset == 'imagenet'}
        millions = count_params({'genotype': genotype, 'network_args': base}) / 1e6
    dense_conv = any(op in ('conv_5x5', 'conv_7x7') for op in _genotype_ops(genotype))
    n_cells = int(args['n_cells'])
    fc_dim = TRAIN_FC_DIMS[int(rng.integers(4))]
    if millions > 0.8 or not args['glob_avg'] or dense_conv or n_cells > 12:
        C = TRAIN_WIDTHS[0]
    elif millions > 0.4 or n_cells > 10:
        C = TRAIN_WIDTHS[int(rng.integers(2))]
    elif millions > 0.2 or n_cells > 8:
        C = TRAIN_WIDTHS[int(rng.integers(3))]
    else:
        C = TRAIN_WIDTHS[int(rng.integers(len(TRAIN_WIDTHS)))]
        if C <= 64:
            fc_dim = TRAIN_FC_DIMS[int(rng.integers(len(TRAIN_FC_DIMS)))]
    out = copy.deepcopy(arch)
    out['network_args'].update(C=int(C), fc_dim=int(fc_dim))
    return out


def _predefined(index: int, dataset: str, num_classes: int) -> dict:
    imagenet = dataset == 'imagenet'
    side = 224 if imagenet else 32
    if index == 0:
        return {'family': 'torchvision.models', 'model': 'resnet50', 'num_classes': num_classes,
                'adjust_net': not imagenet, 'input_size': [3, side, side]}
    # The reference's ViT: Network(C=128, n_cells=12, genotype=ViT, preproc=False, C_mult=1, glob_avg=True) with
    # the constructor defaults otherwise (it has no BN layer, and its head is one linear layer).
    args = {'C': 128, 'num_classes': num_classes, 'n_cells': 12, 'ks': 3, 'is_imagenet_input': imagenet,
            'stem_pool': False, 'stem_type': 0, 'norm': 'bnorm', 'preproc': False, 'C_mult': 1, 'fc_layers': 1,
            'fc_dim': GENERATOR_FC_DIM, 'glob_avg': True, 'auxiliary': False}
    return {'family': NETWORK_FAMILY, 'genotype': copy.deepcopy(VIT_GENOTYPE), 'network_args': args,
            'num_classes': num_classes, 'input_size': [3, side, side]}


def sample(split: str, index: int, seed: int = 1, *, dataset: str = 'cifar10', num_classes: Optional[int] = None,
           sample_width: bool = True) -> dict[str, Any]:
    """Architecture ``index`` of a DeepNets-1M ``split``, as an arch.json-style dict (see the module docstring).

    Deterministic in ``(split, index, seed)`` and independent of any other draw. ``dataset`` selects the input
    size (CIFAR-10 32x32 or ImageNet 224x224) and the default ``num_classes`` (10 / 1000); the architecture itself
    does not depend on it. Splits: train/val/test/bnfree/search (generator ranges of spec 7.3; bnfree has no
    normalisation), deep (10-36 cells), dense (2-10 steps per cell), wide (test architecture ``index`` with
    C x4 on CIFAR-10, x2 on ImageNet), predefined (0: ResNet-50, 1: the reference ViT). Generated networks have
    C=32 and fc_dim=256 (the generator's widths), except train, whose C/fc_dim are re-drawn as the reference's
    training loader does (``sample_width=False`` keeps the generator-time widths; :func:`resample_width` re-draws).
    """
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}; splits: {SPLITS}')
    if dataset not in DATASETS:
        raise ValueError(f'unknown dataset {dataset!r}; datasets: {DATASETS}')
    if not 0 <= int(index) < SPLIT_SIZES[split]:
        raise IndexError(f'index {index} out of range for split {split!r} ({SPLIT_SIZES[split]} architectures)')
    if int(seed) < 0:
        raise ValueError(f'seed must be non-negative, got {seed}')
    index, seed = int(index), int(seed)
    imagenet = dataset == 'imagenet'
    n_cls = int(num_classes) if num_classes is not None else (1000 if imagenet else 10)
    source = {'split': split, 'index': index, 'seed': seed}
    if split == 'predefined':
        return {**_predefined(index, dataset, n_cls), 'source': source}

    base_split = 'test' if split == 'wide' else split
    arch_rng, width_rng = _rng_streams(base_split, index, seed, 2)
    genotype, args, meta = _generate(base_split, arch_rng)
    args = {**args, 'num_classes': n_cls, 'is_imagenet_input': imagenet}
    if split == 'wide':
        args['C'] *= 2 if imagenet else 4
    side = 224 if imagenet else 32
    arch = {'family': NETWORK_FAMILY, 'genotype': genotype, 'network_args': args, 'num_classes': n_cls,
            'input_size': [3, side, side], 'source': {**source, 'generator_meta': meta}}
    if split == 'train' and sample_width:
        arch = resample_width(arch, width_rng, dataset)
    return arch


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> None:
    """Write ``n`` architectures of a split as JSON files and print their node/parameter statistics."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--split', default='test', choices=SPLITS)
    parser.add_argument('--n', type=int, default=10, help='number of architectures')
    parser.add_argument('--start', type=int, default=0, help='first index')
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--dataset', default='cifar10', choices=DATASETS)
    parser.add_argument('--out', default=None, help='directory for <split>_<index>.json files (omit: no files)')
    opts = parser.parse_args(argv)
    if opts.out:
        os.makedirs(opts.out, exist_ok=True)
    nodes, params = [], []
    stop = min(opts.start + opts.n, SPLIT_SIZES[opts.split])
    for index in range(opts.start, stop):
        arch = sample(opts.split, index, opts.seed, dataset=opts.dataset)
        nodes.append(count_graph_nodes(arch))
        params.append(count_params(arch))
        if opts.out:
            with open(os.path.join(opts.out, f'{opts.split}_{index:07d}.json'), 'w') as f:
                json.dump(arch, f, indent=1)
    if nodes:
        print(f'{opts.split}: {len(nodes)} architectures, nodes mean {np.mean(nodes):.1f} '
              f'(min {min(nodes)}, max {max(nodes)}), params mean {np.mean(params) / 1e6:.3f} M '
              f'(min {min(params) / 1e6:.3f}, max {max(params) / 1e6:.3f})')


if __name__ == '__main__':
    main()
