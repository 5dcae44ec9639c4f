"""From decoded blocks to parameter tensors: modulo tiling (spec 5.4) and GHN-2 normalisation (spec 5.5).

Each function builds one tensor directly in the Flax layout. Tiling is written in PyTorch index order
``W[o, i, y, x] = P[o mod R, i mod C, y, x]`` and then transposed. Functions are jitted per (kind, shape), so
architectures that share layer shapes share compiled code and no architecture triggers a compile of its own.
"""
from __future__ import annotations

import functools
import gc
import math
import sys
import threading
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np


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
    """Flax dense kernel ``(I, O)`` from decoded block ``start`` (also the classifier, from its class block)."""
    w = _tile_to(blocks[start].T, shape)
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


# ------------------------------------------------------------------------------------------------------------------
# Host (numpy) versions, for inference: the same tensors without compiling anything.
#
# The jitted functions above compile once per (kind, shape): a ResNet-50 needs ~35 compiles (seconds) the first time.
# Prediction does not need gradients, so :func:`~ghn_jax.hypernet.ghn.assemble_host` uses these instead; they do the
# same indexing (bit-identical) and the same normalisation (sigmoid/tanh agree to float32 rounding). Tests check
# that both paths agree.
# ------------------------------------------------------------------------------------------------------------------

def _np_tile_to(x: np.ndarray, shape: tuple[int, ...], alloc: Allocator = None) -> np.ndarray:
    """numpy ``_tile_to``: repeat ``x`` along every axis to cover ``shape``, crop; a fresh C-contiguous array.

    Written in one pass (a broadcast assignment into a ``(reps_0, s_0, reps_1, s_1, ...)`` view) rather than with
    ``np.tile``, which copies once per axis: the tensors of a ResNet-50 are ~94 MB, so passes over memory dominate.
    """
    if x.ndim > 1 and shape[-1] > x.shape[-1]:
        # Tile the last axis into a small block first: the big write below then copies whole rows of the output
        # (contiguous runs of shape[-1] or more floats) instead of runs of the block's row.
        x = _np_tile_once(x, tuple(x.shape[:-1]) + (shape[-1],), np.empty)
    return _np_tile_once(x, shape, alloc or aligned_empty)


def _np_tile_once(x: np.ndarray, shape: tuple[int, ...], alloc: Callable) -> np.ndarray:
    full, interleaved = _tiles(shape, x.shape)
    cropped = full != tuple(shape)
    out = np.empty(full, x.dtype) if cropped else alloc(full, x.dtype)
    out.reshape(interleaved)[...] = x.reshape(tuple(d for s in x.shape for d in (1, s)))
    if cropped:
        crop = alloc(tuple(shape), x.dtype)
        crop[...] = out[tuple(slice(0, t) for t in shape)]
        out = crop
    return out


def _tiles(shape: tuple[int, ...], block_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(uncropped tiled shape, its ``(reps_0, s_0, reps_1, s_1, ...)`` view) for tiling a block to ``shape``."""
    reps = tuple(math.ceil(t / s) for t, s in zip(shape, block_shape))
    full = tuple(r * s for r, s in zip(reps, block_shape))
    return full, tuple(d for r, s in zip(reps, block_shape) for d in (r, s))


_ALIGN = 64
#: ``alloc(shape, dtype)`` for the output of a host tiling function; None: :func:`aligned_empty`.
Allocator = Optional[Callable[[tuple[int, ...], Any], np.ndarray]]


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """``np.empty`` on a 64-byte boundary: ``jax.device_put`` on CPU then wraps the memory instead of copying it
    (a ResNet-50's 94 MB of predicted tensors cost ~0.1 s to copy). The array must not be written afterwards."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    offset = -raw.ctypes.data % _ALIGN
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


class BlockPool:
    """Hands out the memory blocks of earlier predictions again once nothing refers to them any more.

    A fresh block of a ResNet-50's 94 MB is mapped and zeroed by the kernel page by page as it is first written
    (~20-40 ms of the prediction on the 2-core machine, and up to ~0.4 s when the kernel must first compact memory
    for huge pages); a block that was written before costs only the writes. A block is free when its only
    reference is this pool: every tensor carved from it (and every jax array wrapping one without a copy) refers
    to it through its ``base``. At most ``keep`` blocks are tracked; an untracked block is freed with its last
    tensor. Thread-safe.
    """

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._owners: list[np.ndarray] = []   # the allocations (aligned views are carved from them)
        self._lock = threading.Lock()
        # The reference count of an array held only by a list, as _refcounts sees it (interpreters differ in how
        # they count loop variables, so it is measured, not assumed).
        self._free_count = _refcounts([np.empty(0, np.uint8)])[0]

    def take(self, nbytes: int) -> np.ndarray:
        """A 64-byte aligned uint8 block of ``nbytes``: a free tracked one if large enough, else a new one."""
        with self._lock:
            for attempt in range(2):
                for owner, refs in zip(self._owners, _refcounts(self._owners)):
                    offset = -owner.ctypes.data % _ALIGN
                    if refs == self._free_count and owner.nbytes - offset >= nbytes:   # no view of it is alive
                        return owner[offset:offset + nbytes]   # this view marks it taken before the lock is released
                if attempt == 0 and self._owners:
                    # jax releases the host arrays of deleted CPU buffers from a garbage-collection callback: a
                    # young-generation collection (cheap) lets the last prediction's dropped tensors go.
                    gc.collect(0)
            block = aligned_empty((nbytes,), np.uint8)
            self._owners.append(block.base)
            del self._owners[:-self.keep]
            return block


def _refcounts(arrays: list[np.ndarray]) -> list[int]:
    return [sys.getrefcount(a) for a in arrays]


class Arena:
    """One allocation carved into the tensors of one prediction (each 64-byte aligned, see :func:`aligned_empty`).

    The ~94 MB of a ResNet-50's tensors as one block: the kernel maps it in a few (transparent huge) pages,
    where ~160 separate allocations are each mapped and zeroed page by page when the previous prediction's memory
    has been returned to the system (the usual case in a loop): ~55 ms against ~27 ms to assemble. The tensors
    are views, so the block lives as long as any of them. With a :class:`BlockPool` the block may be one that an
    earlier prediction used and nothing refers to any more.
    """

    def __init__(self, shapes: list[tuple[int, ...]], dtype=np.float32, pool: BlockPool | None = None):
        self.dtype = np.dtype(dtype)
        nbytes = sum(self._padded(s) for s in shapes)
        self.buffer = pool.take(nbytes) if pool is not None else aligned_empty((nbytes,), np.uint8)
        self.offset = 0

    def prefault(self) -> 'Arena':
        """Touch every page now (one byte per 4 KiB), so that the kernel maps the block here rather than while the
        tensors are written: prediction does it in a helper thread while the GHN is compiled or runs (numpy releases
        the GIL for the write)."""
        self.buffer[::4096] = 0
        return self

    def _padded(self, shape: tuple[int, ...]) -> int:
        return -(-int(np.prod(shape)) * self.dtype.itemsize // _ALIGN) * _ALIGN

    def empty(self, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        """The next ``shape`` array of the block (``dtype`` must be the arena's)."""
        assert np.dtype(dtype) == self.dtype, (dtype, self.dtype)
        n = int(np.prod(shape)) * self.dtype.itemsize
        out = self.buffer[self.offset:self.offset + n].view(self.dtype).reshape(shape)
        self.offset += self._padded(shape)
        return out


def _scaled(x: np.ndarray, scale: float | None) -> np.ndarray:
    # Scaling the small block before tiling gives the same values as scaling the tiled tensor (same products).
    return x if scale is None else x * np.float32(scale)


def np_conv_kernel(blocks: np.ndarray, start: int, shape: tuple[int, ...], normalize: bool,
                   alloc: Allocator = None) -> np.ndarray:
    """numpy :func:`conv_kernel`."""
    kh, kw, i, o = shape
    blk = blocks[start:start + kh * kw].reshape(kh, kw, *blocks.shape[1:])
    scale = weight_scale((o, i, kh, kw)) if normalize else None
    return _np_tile_to(_scaled(np.swapaxes(blk, 2, 3), scale), shape, alloc)


def np_dense_kernel(blocks: np.ndarray, start: int, shape: tuple[int, ...], normalize: bool,
                    alloc: Allocator = None) -> np.ndarray:
    """numpy :func:`dense_kernel`."""
    scale = weight_scale((shape[1], shape[0])) if normalize else None
    return _np_tile_to(_scaled(blocks[start].T, scale), shape, alloc)


def np_pos_encoding(blocks: np.ndarray, start: int, shape: tuple[int, ...], alloc: Allocator = None) -> np.ndarray:
    """numpy :func:`pos_encoding`."""
    _, s1, s2, c = shape
    blk = blocks[start:start + s1 * s2].reshape(s1, s2, *blocks.shape[1:])
    return _np_tile_to(blk[:, :, 0, :], (s1, s2, c), alloc)[None]


def np_vector(rows: np.ndarray, index: int, size: int, kind: str, normalize: bool,
              alloc: Allocator = None) -> np.ndarray:
    """numpy :func:`vector` (normalised on the 64-row before tiling: the same values, fewer evaluations)."""
    w = rows[index]
    if normalize:
        w = (np.float32(2.0) / (np.float32(1.0) + np.exp(np.float32(-0.5) * w)) if kind == 'gain'
             else np.tanh(np.float32(0.2) * w)).astype(np.float32)
    return _np_tile_to(w, (size,), alloc)


# ------------------------------------------------------------------------------------------------------------------
# Host vector-Jacobian products of the numpy versions, for meta-training.
#
# Tiling repeats a block, so the gradient of the block is the sum of the gradient over all its tiles ("folding").
# Doing this in numpy means meta-training compiles nothing per layer shape either: with jitted tiling, every new
# (kind, shape) of a freshly sampled net cost a forward and a backward compile, most of the compiles of a step.
# ------------------------------------------------------------------------------------------------------------------

def np_fold_to(g: np.ndarray, block_shape: tuple[int, ...]) -> np.ndarray:
    """Transpose of :func:`_np_tile_to`: sum ``g`` over every tile of ``block_shape`` it was cropped from."""
    full, interleaved = _tiles(g.shape, block_shape)
    if full != g.shape:
        g = np.pad(g, [(0, f - t) for f, t in zip(full, g.shape)])
    return g.reshape(interleaved).sum(axis=tuple(range(0, 2 * len(block_shape), 2)), dtype=np.float32)


def np_conv_kernel_vjp(g: np.ndarray, block_shape: tuple[int, ...], shape: tuple[int, ...], normalize: bool
                       ) -> np.ndarray:
    """Cotangent of the ``kh*kw`` consecutive decoded blocks ``(kh*kw, out, in)`` that :func:`np_conv_kernel` read."""
    kh, kw, i, o = shape
    scale = weight_scale((o, i, kh, kw)) if normalize else None
    folded = _scaled(np_fold_to(g, (kh, kw, block_shape[1], block_shape[0])), scale)
    return np.swapaxes(folded, 2, 3).reshape(kh * kw, *block_shape)


def np_dense_kernel_vjp(g: np.ndarray, block_shape: tuple[int, ...], normalize: bool) -> np.ndarray:
    """Cotangent of the decoded block ``(out, in)`` that :func:`np_dense_kernel` / classifier kernels read."""
    scale = weight_scale((g.shape[1], g.shape[0])) if normalize else None
    return _scaled(np_fold_to(g, block_shape[::-1]), scale).T


def np_pos_encoding_vjp(g: np.ndarray, block_shape: tuple[int, ...]) -> np.ndarray:
    """Cotangent of the ``s*s`` decoded blocks that :func:`np_pos_encoding` read (only their output row 0)."""
    _, s1, s2, _ = g.shape
    cot = np.zeros((s1, s2, *block_shape), np.float32)
    cot[:, :, 0, :] = np_fold_to(g[0], (s1, s2, block_shape[1]))
    return cot.reshape(s1 * s2, *block_shape)


def np_vector_vjp(g: np.ndarray, row: np.ndarray, kind: str, normalize: bool) -> np.ndarray:
    """Cotangent of the decoded row that :func:`np_vector` read."""
    folded = np_fold_to(g, row.shape)
    if not normalize:
        return folded
    if kind == 'gain':  # d/dw 2 sigmoid(w/2) = sigmoid(w/2) (1 - sigmoid(w/2))
        s = np.float32(1.0) / (np.float32(1.0) + np.exp(np.float32(-0.5) * row))
        return (folded * s * (np.float32(1.0) - s)).astype(np.float32)
    t = np.tanh(np.float32(0.2) * row)  # d/dw tanh(w/5) = (1 - tanh^2) / 5
    return (folded * np.float32(0.2) * (np.float32(1.0) - t * t)).astype(np.float32)
