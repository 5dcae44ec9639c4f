"""The DeepNets-1M ``Network`` family (DARTS-style cell networks, spec section 7.1) in Flax linen.

Every submodule is named after the PyTorch attribute path of the reference implementation (``cells.3``,
``_ops.1``, ``op.2`` ...), so a parameter path such as ``('cells.3', '_ops.1', 'op.2', 'kernel')`` is the PyTorch
name ``cells.3._ops.1.op.2.weight`` with the leaf renamed (see :mod:`ghn_jax.nets.torch_names`). Names never depend
on construction order.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ghn_jax.nets import kernels
from ghn_jax.nets.layers import PosEnc, avg_pool, global_avg_pool, max_pool, norm_layer, relu, torch_conv

OP_NAMES = ('none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3',
            'dil_conv_5x5', 'conv_1x1', 'conv_7x1_1x7', 'conv_3x3', 'conv_5x5', 'conv_7x7', 'msa', 'cse')


@dataclasses.dataclass(frozen=True)
class Genotype:
    """A cell description: lists of ``(op_name, input_state_index)`` pairs, two per step, and concat states."""
    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> 'Genotype':
        pairs = lambda ops: tuple((str(o), int(i)) for o, i in ops)
        return cls(pairs(d['normal']), tuple(int(i) for i in d['normal_concat']),
                   pairs(d['reduce']), tuple(int(i) for i in d['reduce_concat']))

    def to_dict(self) -> dict[str, Any]:
        return {'normal': [list(p) for p in self.normal], 'normal_concat': list(self.normal_concat),
                'reduce': [list(p) for p in self.reduce], 'reduce_concat': list(self.reduce_concat)}

    @property
    def ops(self) -> list[str]:
        return [o for o, _ in self.normal + self.reduce]


DARTS = Genotype(
    normal=(('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
            ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)),
    normal_concat=(2, 3, 4, 5),
    reduce=(('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1),
            ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)),
    reduce_concat=(2, 3, 4, 5))
VIT = Genotype(normal=(('none', 0), ('msa', 1)), normal_concat=(2,),
               reduce=(('none', 0), ('avg_pool_3x3', 1)), reduce_concat=(2,))


def parse_op(op: str) -> tuple[str, int]:
    """``'sep_conv_5x5'`` -> ``('sep_conv', 5)``; ``'conv_7x1_1x7'`` -> ``('conv2', 7)``; ``'msa'`` -> ``('msa', 0)``."""
    parts, kernel, n_kernels = [], 0, 0
    for token in op.split('_'):
        dims = token.split('x')
        if len(dims) == 2 and all(d.isdigit() for d in dims):
            kernel, n_kernels = max(kernel, *map(int, dims)), n_kernels + 1
        else:
            parts.append(token)
    return '_'.join(parts) + ('2' if n_kernels > 1 else ''), kernel


# --------------------------------------------------------------------------------------------------------------
# Ops. Sequential indices in layer names follow the reference's nn.Sequential positions (ReLUs count).
# --------------------------------------------------------------------------------------------------------------

def _maybe_norm(norm, features, name, x):
    layer = norm_layer(norm, features, name)
    return x if layer is None else layer(x)


class ReLUConvBN(nn.Module):
    """ReLU -> conv (k x k, or 1 x k then k x 1 when ``double``) -> BN."""
    c_out: int
    kernel: int = 1
    stride: int = 1
    norm: str | None = 'bnorm'
    double: bool = False

    @nn.compact
    def __call__(self, x):
        x = relu(x)
        c_in, k, p, s = x.shape[-1], self.kernel, self.kernel // 2, self.stride
        if self.double:
            x = torch_conv(c_in, (1, k), (1, s), (0, p), name='op.1')(x)
            x = torch_conv(self.c_out, (k, 1), (s, 1), (p, 0), name='op.2')(x)
            return _maybe_norm(self.norm, self.c_out, 'op.3', x)
        x = torch_conv(self.c_out, k, s, p, name='op.1')(x)
        return _maybe_norm(self.norm, self.c_out, 'op.2', x)


class DilConv(nn.Module):
    """ReLU -> depthwise k x k conv with dilation 2 -> 1x1 conv -> BN."""
    c_out: int
    kernel: int
    stride: int = 1
    norm: str | None = 'bnorm'

    @nn.compact
    def __call__(self, x):
        c_in = x.shape[-1]
        x = relu(x)
        x = torch_conv(c_in, self.kernel, self.stride, self.kernel - self.kernel % 2, dilation=2, groups=c_in,
                       name='op.1')(x)
        x = torch_conv(self.c_out, 1, name='op.2')(x)
        return _maybe_norm(self.norm, self.c_out, 'op.3', x)


class SepConv(nn.Module):
    """Two stacks of ReLU -> depthwise k x k -> 1x1 conv -> BN (the first depthwise conv has the stride)."""
    c_out: int
    kernel: int
    stride: int = 1
    norm: str | None = 'bnorm'

    @nn.compact
    def __call__(self, x):
        c_in, k = x.shape[-1], self.kernel
        x = relu(x)
        x = torch_conv(c_in, k, self.stride, k // 2, groups=c_in, name='op.1')(x)
        x = torch_conv(c_in, 1, name='op.2')(x)
        x = _maybe_norm(self.norm, c_in, 'op.3', x)
        x = relu(x)
        x = torch_conv(c_in, k, 1, k // 2, groups=c_in, name='op.5')(x)
        x = torch_conv(self.c_out, 1, name='op.6')(x)
        return _maybe_norm(self.norm, self.c_out, 'op.7', x)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset 1x1 stride-2 convs whose outputs are concatenated, then BN."""
    c_out: int
    norm: str | None = 'bnorm'
    stride: int = 2

    @nn.compact
    def __call__(self, x):
        x = relu(x)
        shifted = x[:, 1:, 1:, :] if self.stride > 1 else x
        a = torch_conv(self.c_out // 2, 1, self.stride, name='conv_1')(x)
        b = torch_conv(self.c_out // 2, 1, self.stride, name='conv_2')(shifted)
        return _maybe_norm(self.norm, self.c_out, 'bn', jnp.concatenate([a, b], axis=-1))


class ChannelSE(nn.Module):
    """Channel squeeze-and-excitation: mean-pool -> fc1 + ReLU -> fc2 -> hard-swish gate -> multiply."""
    c_out: int
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        if c != self.c_out:
            raise ValueError(f'cse keeps the channel count, got {c} -> {self.c_out}')
        squeeze = jnp.mean(x, axis=(1, 2))
        gate = relu(nn.Dense(c // 2, name='fc1')(squeeze))
        gate = nn.hard_swish(nn.Dense(c, name='fc2')(gate))
        out = x * gate[:, None, None, :]
        return out[:, ::self.stride, ::self.stride] if self.stride > 1 else out


class Transformer(nn.Module):
    """Pre-LN transformer block over the H*W tokens of a map: 8-head attention and a GELU feed-forward."""
    c_out: int
    stride: int = 1
    heads: int = 8

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        tokens = x.reshape(b * h * w, c)  # 2-D: XLA:CPU's weight gradient of a 3-D dense layer is ~3x slower
        y = nn.LayerNorm(epsilon=1e-5, name='ln1')(tokens)
        qkv = nn.Dense(3 * c, use_bias=False, name='to_qkv')(y)
        q, k, v = (t.reshape(b, h * w, self.heads, c // self.heads) for t in jnp.split(qkv, 3, axis=-1))
        out = kernels.attention(q, k, v, (c // self.heads) ** -0.5).reshape(b * h * w, c)
        out = nn.Dense(self.c_out, name='to_out.0')(out) + tokens
        ff = nn.Dense(self.c_out, name='ff.net.0')(nn.LayerNorm(epsilon=1e-5, name='ln2')(out))
        out = nn.Dense(c, name='ff.net.3')(nn.gelu(ff, approximate=False)) + out
        out = out.reshape(b, h, w, c)
        return out[:, ::self.stride, ::self.stride] if self.stride > 1 else out


def _apply_op(op: str, c_out: int, stride: int, norm, name: str, x):
    kind, k = parse_op(op)
    if kind == 'skip_connect':
        return x if stride == 1 else FactorizedReduce(c_out, norm, name=name)(x)
    if kind == 'max_pool':
        return max_pool(x, k, stride, k // 2)
    if kind == 'avg_pool':
        return avg_pool(x, k, stride, k // 2)
    if kind in ('conv', 'conv2'):
        return ReLUConvBN(c_out, k, stride, norm, double=kind == 'conv2', name=name)(x)
    if kind == 'sep_conv':
        return SepConv(c_out, k, stride, norm, name=name)(x)
    if kind == 'dil_conv':
        return DilConv(c_out, k, stride, norm, name=name)(x)
    if kind == 'msa':
        return Transformer(c_out, stride, name=name)(x)
    if kind == 'cse':
        return ChannelSE(c_out, stride, name=name)(x)
    raise ValueError(f'unknown DeepNets-1M op {op!r}; known ops: {OP_NAMES}')


class Cell(nn.Module):
    """One cell: preprocess the two previous states, run ``steps`` two-branch sums, concat the chosen states."""
    genotype: Genotype
    c_out: int
    reduction: bool
    reduction_prev: bool
    norm: str | None = 'bnorm'
    preproc: bool = True
    is_vit: bool = False

    @nn.compact
    def __call__(self, s0, s1):
        if self.preproc:
            if s0 is not None:
                s0 = (FactorizedReduce(self.c_out, self.norm, name='preprocess0')(s0)
                      if self.reduction_prev and not self.is_vit
                      else ReLUConvBN(self.c_out, 1, 1, self.norm, name='preprocess0')(s0))
            if s1 is not None:
                s1 = ReLUConvBN(self.c_out, 1, 1, self.norm, name='preprocess1')(s1)
        elif s0 is not None and self.reduction_prev and not self.is_vit:
            s0 = s0[:, ::2, ::2]
        ops = self.genotype.reduce if self.reduction else self.genotype.normal
        concat = self.genotype.reduce_concat if self.reduction else self.genotype.normal_concat
        states = [s0, s1]
        for step in range(len(ops) // 2):
            total = None
            for j in (2 * step, 2 * step + 1):
                op, index = ops[j]
                h = states[index]
                if op == 'none' or h is None:
                    continue
                stride = 2 if (self.reduction and index < 2 and not self.is_vit) else 1
                h = _apply_op(op, self.c_out, stride, self.norm, f'_ops.{j}', h)
                total = h if total is None else total + h
            states.append(total)
        alive = [states[i] for i in concat if states[i] is not None]
        if not alive:
            return None
        if len(alive) < len(concat):   # states cut by `none` ops enter the concat as zeros, as in the reference
            zeros = alive[0] * 0.0
            alive = [zeros if states[i] is None else states[i] for i in concat]
        return jnp.concatenate(alive, axis=-1)


class Network(nn.Module):
    """A DeepNets-1M network (the reference's ``Network(**network_args, genotype=...)``), NHWC input."""
    genotype: Genotype
    C: int = 32
    num_classes: int = 10
    n_cells: int = 8
    ks: int = 3
    is_imagenet_input: bool = False
    stem_pool: bool = False
    stem_type: int = 0
    norm: str | None = 'bnorm'
    preproc: bool = True
    C_mult: int = 2
    fc_layers: int = 1
    fc_dim: int = 256
    glob_avg: bool = True

    @property
    def is_vit(self) -> bool:
        return 'msa' in self.genotype.ops

    def reduction_cells(self) -> list[int]:
        return [i for i in range(1, self.n_cells) if i in (self.n_cells // 3, 2 * self.n_cells // 3)]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if len(self.genotype.normal_concat) > 1 or self.C_mult > 1:
            if not self.preproc:
                raise ValueError('preproc=False requires one concat state and C_mult=1 (as in the reference)')
        C, norm = self.C, self.norm
        if self.is_vit:
            k = 16 if self.is_imagenet_input else 3
            x = torch_conv(C, k, k, int(k < 4), name='stem0')(x)
            s0 = s1 = PosEnc(C, 14 if self.is_imagenet_input else 11, name='pos_enc')(x)
        elif self.stem_type == 0:
            c_stem = C * (3 if (self.preproc and not self.is_imagenet_input) else 1)
            x = torch_conv(c_stem, self.ks, 4 if self.is_imagenet_input else 1, self.ks // 2, name='stem.0')(x)
            x = _maybe_norm(norm, c_stem, 'stem.1', x)
            s0 = s1 = max_pool(x, 3, 2, 1) if self.stem_pool else x
        elif self.stem_type == 1:
            stride = 2 if self.is_imagenet_input else 1
            x = torch_conv(C // 2, self.ks, stride, self.ks // 2, name='stem0.0')(x)
            x = relu(_maybe_norm(norm, C // 2, 'stem0.1', x))
            x = torch_conv(C, 3, stride, 1, name='stem0.3')(x)
            s0 = _maybe_norm(norm, C, 'stem0.4', x)
            x = torch_conv(C, 3, 2, 1, name='stem1.1')(relu(s0))
            s1 = _maybe_norm(norm, C, 'stem1.2', x)
        else:
            raise ValueError(f'stem_type must be 0 or 1, got {self.stem_type}')

        steps = len(self.genotype.normal_concat)
        reductions = self.reduction_cells()
        c_curr, reduction_prev = C, self.stem_type == 1
        for i in range(self.n_cells):
            reduction = i in reductions
            c_curr *= self.C_mult if reduction else 1
            next_mult = self.C_mult if (i + 1 in reductions and steps == 1 and not self.preproc) else 1
            cell = Cell(self.genotype, c_curr * next_mult, reduction, reduction_prev, norm, self.preproc,
                        self.is_vit, name=f'cells.{i}')
            s0, s1 = s1, cell(s0, s1)
            reduction_prev = reduction
        if s1 is None:
            raise ValueError('invalid architecture: the last cell has no output (all its inputs are `none` ops)')

        # Flatten in PyTorch's (C, H, W) order so that classifier weights map one-to-one to the reference's.
        out = global_avg_pool(s1) if self.glob_avg else jnp.transpose(s1, (0, 3, 1, 2))
        out = out.reshape(out.shape[0], -1)
        if self.fc_layers > 1:
            out = relu(nn.Dense(self.fc_dim, name='classifier.0')(out))
            for j in range(self.fc_layers - 2):
                out = relu(nn.Dense(self.fc_dim, name=f'classifier.{3 * (j + 1)}')(out))
            return nn.Dense(self.num_classes, name=f'classifier.{3 * (self.fc_layers - 1)}')(out)
        return nn.Dense(self.num_classes, name='classifier.0')(out)


NETWORK_ARGS = ('C', 'num_classes', 'n_cells', 'ks', 'is_imagenet_input', 'stem_pool', 'stem_type', 'norm',
                'preproc', 'C_mult', 'fc_layers', 'fc_dim', 'glob_avg')


def network_from_args(genotype: Genotype | dict, **network_args: Any) -> Network:
    """Build a :class:`Network` from reference ``network_args`` (unknown reference-only keys are ignored)."""
    if isinstance(genotype, dict):
        genotype = Genotype.from_dict(genotype)
    kwargs = {k: network_args[k] for k in NETWORK_ARGS if k in network_args and network_args[k] is not None}
    if 'norm' in network_args:
        kwargs['norm'] = network_args['norm']
    return Network(genotype=genotype, **kwargs)


def vit(num_classes: int = 10, imagenet: bool = False, C: int = 128, n_cells: int = 12) -> Network:
    """The reference's ViT-style ``Network`` (paper: C=128, 12 cells, no preprocessing, C_mult 1)."""
    return Network(genotype=VIT, C=C, num_classes=num_classes, n_cells=n_cells, is_imagenet_input=imagenet,
                   preproc=False, C_mult=1, glob_avg=True, fc_layers=1)


def darts(num_classes: int = 10, C: int = 36, n_cells: int = 20, imagenet: bool = False) -> Network:
    """DARTS-V2 network built from the ``DARTS`` genotype."""
    return Network(genotype=DARTS, C=C, num_classes=num_classes, n_cells=n_cells, is_imagenet_input=imagenet,
                   stem_type=1 if imagenet else 0, C_mult=2, preproc=True)
