"""From decoded blocks to parameter tensors: modulo tiling (spec 5.4) and GHN-2 normalisation (spec 5.5).

Each function builds one tensor directly in the Flax layout. Tiling is written in PyTorch index order
``W[o, i, y, x] = P[o mod R, i mod C, y, x]`` and then transposed. Functions are jitted per (kind, shape), so
architectures that share layer shapes share compiled code and no architecture triggers a compile of its own.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def _tile_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Repeat ``x`` along every axis until it covers ``shape``, then crop (= index modulo the block size)."""
    reps = tuple(math.ceil(t / s) for t, s in zip(shape, x.shape))
    return jnp.tile(x, reps)[tuple(slice(0, t) for t in shape)]


def weight_scale(torch_shape: tuple[int, ...]) -> float | None:
    """GHN-2 fan-in scale sqrt(beta / fan_in), or None for positional encodings (left unchanged)."""
    if len(torch_shape) == 4 and torch_shape[0] == 1 and torch_shape[2] >= 11:
        return None
    fan_in = math.prod(torch_shape[1:])
    beta = 1.0 if len(torch_shape) == 4 and (torch_shape[1] == 1 or torch_shape[2] < torch_shape[3]) else 2.0
    return math.sqrt(beta / fan_in)


@functools.partial(jax.jit, static_argnames=('shape', 'normalize'))
def conv_kernel(blocks: jax.Array, start: jax.Array, shape: tuple[int, ...], normalize: bool) -> jax.Array:
    """Flax conv kernel ``(kh, kw, I, O)`` from ``kh*kw`` consecutive decoded (64_out, 64_in) blocks."""
    kh, kw, i, o = shape
    blk = jax.lax.dynamic_slice_in_dim(blocks, start, kh * kw, 0).reshape(kh, kw, *blocks.shape[1:])
    w = _tile_to(jnp.swapaxes(blk, 2, 3), shape)
    scale = weight_scale((o, i, kh, kw))
    return w * scale if (normalize and scale is not None) else w


@functools.partial(jax.jit, static_argnames=('shape', 'normalize'))
def dense_kernel(blocks: jax.Array, start: jax.Array, shape: tuple[int, ...], normalize: bool) -> jax.Array:
    """Flax dense kernel ``(I, O)`` from the (64_out, 64_in) block at position (0, 0)."""
    w = _tile_to(blocks[start].T, shape)
    return w * weight_scale((shape[1], shape[0])) if normalize else w


@functools.partial(jax.jit, static_argnames=('shape', 'normalize'))
def classifier_kernel(cls_blocks: jax.Array, graph: jax.Array, shape: tuple[int, ...], normalize: bool
                      ) -> jax.Array:
    """Flax classifier kernel ``(I, num_classes)`` from the (num_classes, 64_in) classifier block."""
    w = _tile_to(cls_blocks[graph].T, shape)
    return w * weight_scale((shape[1], shape[0])) if normalize else w


@functools.partial(jax.jit, static_argnames=('shape',))
def pos_encoding(blocks: jax.Array, start: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Flax positional encoding ``(1, s, s, C)``: output row 0 of the s*s blocks, never normalised."""
    _, s1, s2, c = shape
    blk = jax.lax.dynamic_slice_in_dim(blocks, start, s1 * s2, 0).reshape(s1, s2, *blocks.shape[1:])
    return _tile_to(blk[:, :, 0, :], (s1, s2, c))[None]


@functools.partial(jax.jit, static_argnames=('size', 'kind', 'normalize'))
def vector(rows: jax.Array, index: jax.Array, size: int, kind: str, normalize: bool) -> jax.Array:
    """1-D parameter from a decoded row: ``gain`` -> 2 sigmoid(w/2); ``bias``/``shift`` -> tanh(w/5)."""
    w = _tile_to(rows[index], (size,))
    if not normalize:
        return w
    return 2.0 * jax.nn.sigmoid(0.5 * w) if kind == 'gain' else jnp.tanh(0.2 * w)
