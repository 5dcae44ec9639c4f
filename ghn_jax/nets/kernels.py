"""Fast XLA:CPU kernels for the slow ops of DeepNets-1M target networks: convs (dense, depthwise), pools, attention.

Why: on XLA:CPU ``lax.conv_general_dilated(feature_group_count=C)`` is 10-70x slower than a shift-and-multiply
formulation in the forward pass; the backward passes of depthwise conv and of ``reduce_window`` pooling
(``select_and_scatter``) are several times slower than the hand-written ones below (see
``docs/target_net_execution.md``, "Kernel findings", and ``benchmarks/kernels.py``); and the filter gradient of a
dense conv at 32x32 resolution is 4-15x slower than one matmul per kernel tap.

How: every op is a :func:`jax.custom_jvp` whose tangent is a :func:`jax.custom_derivatives.linear_call`, i.e. a
linear map with a hand-written transpose. This gives the custom *backward* pass (what a ``custom_vjp`` would give)
while keeping *forward-mode* differentiation working: target networks must stay differentiable under ``jax.jvp``
(forward gradients, local losses), which a ``custom_vjp`` forbids. ``linear_call`` has no batching rule in jax
0.10, so :func:`_linear_call_batch` adds one that evaluates the linear map vmapped (used by ``vmap`` over ``jvp``).

Backward passes:

* dense conv, w.r.t. x: XLA's own transpose; w.r.t. w: one (C_in x C_out) matmul per kernel tap, or one matmul
  of the stacked taps when C_in is a multiple of 64;
* depthwise conv, w.r.t. x: a "full" correlation of the stride-dilated cotangent with the flipped kernel (one pad
  and k^2 shifted slices); w.r.t. w: k^2 per-channel reductions;
* both filter gradients are summed over cache-sized batch chunks on CPU (:func:`_sum_over_batch_chunks`);
* max-pool: the index of the first maximum of every window (the tie-break of ``lax.reduce_window`` and torch) is
  kept from the forward pass; the cotangent is scattered back with k^2 slices of the padded cotangent and index;
* avg-pool: the cotangent divided by the window counts goes through the same full correlation (with ones);
* attention: scores are recomputed chunk by chunk from q, k and the forward pass's row log-sum-exps
  (:func:`attention`), never stored.

Pools compute their values as the max or sum of the k^2 window taps, 1.6-9x faster than ``lax.reduce_window`` on
XLA:CPU at stride 1. The graph tracer reads pool nodes from ``reduce_window`` primitives, so while it traces a
network (:func:`pools_as_reduce_window`) the pools stage the same ``lax.reduce_window`` calls as
``flax.linen.max_pool``/``avg_pool``. Values are identical to the lax versions up to float32 summation order.

Layouts: NHWC activations, kernels ``(kh, kw, C_in / groups, C_out)`` as Flax stores them.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.custom_derivatives import SymbolicZero, linear_call

Pair = tuple[int, int]
Padding = tuple[tuple[int, int], tuple[int, int]]


# -- linear_call batching ----------------------------------------------------------------------------------------

def _linear_call_batch(args, dims, *, callee, **_):
    """Batching rule for ``linear_call``: evaluate the linear function itself under ``vmap``.

    The batched result is plain JAX code, still differentiable (with JAX's own transpose) if ever needed.
    """
    from jax.extend import core as jcore
    from jax._src.interpreters import batching  # noqa: internal registry, no public API for batching rules
    not_mapped = getattr(batching, 'not_mapped', None)
    in_axes = [None if d is not_mapped else d for d in dims]
    outs = jax.vmap(lambda *a: jcore.jaxpr_as_fun(callee)(*a), in_axes=in_axes)(*args)
    return list(outs), [0] * len(outs)


def _register_linear_call_batching() -> None:
    """Install :func:`_linear_call_batch` unless this jax version already has a batching rule."""
    from jax._src.custom_derivatives import linear_call_p
    from jax._src.interpreters import batching
    if linear_call_p not in batching.fancy_primitive_batchers:
        batching.primitive_batchers[linear_call_p] = _linear_call_batch


_register_linear_call_batching()


# -- helpers -----------------------------------------------------------------------------------------------------

def _one_call(kernel, n_arrays: int, n_static: int):
    """``kernel(*arrays, *geometry)`` as one jitted call with static geometry, traced once per shape.

    Eagerly (the glue between per-op executables, tests) its dozens of slices then dispatch as one cached executable
    instead of one by one, which had made max/avg-pool the slowest part of a per-op network step; and tracing a
    network (graph building) reuses the kernel's traced body for every repeat of a shape instead of retracing it.
    """
    def call(*args):
        return kernel(*args)
    return jax.jit(call, static_argnums=tuple(range(n_arrays, n_arrays + n_static)))


def _pair(v: int | Sequence[int]) -> Pair:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def _padding(p) -> Padding:
    """int, (ph, pw) or ((top, bottom), (left, right)) -> ((top, bottom), (left, right))."""
    if isinstance(p, (int, np.integer)):
        return ((int(p), int(p)), (int(p), int(p)))
    a, b = p
    a = (int(a), int(a)) if isinstance(a, (int, np.integer)) else (int(a[0]), int(a[1]))
    b = (int(b), int(b)) if isinstance(b, (int, np.integer)) else (int(b[0]), int(b[1]))
    return (a, b)


def _out_size(n: int, k: int, s: int, pad: tuple[int, int], d: int) -> int:
    return (n + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1


def _taps(xp: jax.Array, kernel: Pair, stride: Pair, dilation: Pair, out_hw: Pair):
    """Yield ((i, j), xp[:, i*dh :: sh, j*dw :: sw]) cut to the output size, for every kernel tap."""
    n, _, _, c = xp.shape
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            start = (0, i * dilation[0], j * dilation[1], 0)
            limit = (n, start[1] + (out_hw[0] - 1) * stride[0] + 1, start[2] + (out_hw[1] - 1) * stride[1] + 1, c)
            yield (i, j), lax.slice(xp, start, limit, (1, stride[0], stride[1], 1))


def _pad_hw(x: jax.Array, padding: Padding, value: float = 0.0) -> jax.Array:
    cfg = ((0, 0, 0), (padding[0][0], padding[0][1], 0), (padding[1][0], padding[1][1], 0), (0, 0, 0))
    return lax.pad(x, jnp.asarray(value, x.dtype), cfg)


def _window_taps(x: jax.Array, kernel: Pair, stride: Pair, padding: Padding, fill: float = 0.0) -> list:
    """The k^2 strided slices of x padded with ``fill`` that the windows of a pool read, one per kernel tap."""
    out_hw = tuple(_out_size(x.shape[1 + a], kernel[a], stride[a], padding[a], 1) for a in range(2))
    return [tap for _, tap in _taps(_pad_hw(x, padding, fill), kernel, stride, (1, 1), out_hw)]


_STAGING = threading.local()   # .reduce_window: pools stage lax.reduce_window in this thread


@contextlib.contextmanager
def pools_as_reduce_window() -> Iterator[None]:
    """While active (in this thread), pools stage ``lax.reduce_window``, the primitive the graph tracer
    (:mod:`ghn_jax.graphs`) reads as a pool node; otherwise they compute with window taps, faster on XLA:CPU.
    The choice is a static argument of the pools' jitted calls, so neither form is cached for the other."""
    previous = getattr(_STAGING, 'reduce_window', False)
    _STAGING.reduce_window = True
    try:
        yield
    finally:
        _STAGING.reduce_window = previous


def _staged_as_reduce_window() -> bool:
    return getattr(_STAGING, 'reduce_window', False)


def _dilated_padding(out_hw: Pair, in_hw: Pair, kernel: Pair, stride: Pair, padding: Padding, dilation: Pair):
    """``lax.pad`` config that dilates a cotangent of spatial size ``out_hw`` by the stride (zeros in between) and
    pads it so that the flipped kernel tap (i, j) reads the slice starting at ((k-1-i)*d, (k-1-j)*d) of size
    ``in_hw``: the layout of every transpose of a strided window op below."""
    lo = [(kernel[a] - 1) * dilation[a] - padding[a][0] for a in range(2)]
    hi = [in_hw[a] + padding[a][0] - ((out_hw[a] - 1) * stride[a] + 1) for a in range(2)]
    return ((0, 0, 0), (lo[0], hi[0], stride[0] - 1), (lo[1], hi[1], stride[1] - 1), (0, 0, 0))


def _full_correlation(g: jax.Array, taps: dict[Pair, jax.Array | None], in_hw: Pair, kernel: Pair, stride: Pair,
                      padding: Padding, dilation: Pair) -> jax.Array:
    """Transpose of ``sum_ij tap_ij(pad(x)) * w_ij`` w.r.t. x: dx[h] = sum_ij gd[h + pad - i*d] * w_ij.

    ``gd`` is the cotangent dilated by the stride (zeros in between); it is padded once so that every tap is a
    plain slice of size ``in_hw``. ``taps[(i, j)]`` is the per-channel weight of tap (i, j), or None for 1.
    """
    cfg = _dilated_padding(g.shape[1:3], in_hw, kernel, stride, padding, dilation)
    gp = lax.pad(g, jnp.zeros((), g.dtype), cfg)
    n, c = g.shape[0], g.shape[3]
    dx = None
    for (i, j), w in taps.items():
        a, b = (kernel[0] - 1 - i) * dilation[0], (kernel[1] - 1 - j) * dilation[1]
        term = lax.slice(gp, (0, a, b, 0), (n, a + in_hw[0], b + in_hw[1], c))
        if w is not None:
            term = term * w
        dx = term if dx is None else dx + term
    return dx


def _sum_over_batch_chunks(fn, x: jax.Array, g: jax.Array, chunk_bytes: int = 1 << 20, min_bytes: int = 0
                           ) -> jax.Array:
    """``fn(x, g)`` for a filter gradient that sums over the batch, computed as a sum over batch chunks of about
    ``chunk_bytes`` of ``x`` (a ``lax.scan``), on CPU only.

    A filter gradient reads the input and the cotangent once per kernel tap; over a whole batch of 32x32 maps
    (8 MB and more) every pass goes to memory, over a chunk of ~1 MB they stay in the core's cache. Accelerators
    (and maps under ``min_bytes``) take the whole batch at once.
    """
    n = x.shape[0]
    image_bytes = max(1, x.size // n * x.dtype.itemsize)
    chunk = max(1, min(n, chunk_bytes // image_bytes))
    while n % chunk:
        chunk -= 1
    if chunk == n or x.size * x.dtype.itemsize < min_bytes or jax.default_backend() != 'cpu':
        return fn(x, g)
    split = lambda a: a.reshape((n // chunk, chunk) + a.shape[1:])  # noqa: E731
    total = jax.eval_shape(fn, split(x)[0], split(g)[0])
    return lax.scan(lambda acc, xg: (acc + fn(*xg), None), jnp.zeros(total.shape, total.dtype),
                    (split(x), split(g)))[0]


def _bilinear_kernel(apply, grad_x, grad_w):
    """``apply(x, w, stride, padding, dilation)``, a map linear in x and in w (a convolution), as one jitted call
    whose JVP differentiates it with the hand-written gradients.

    Each tangent term is a ``linear_call`` whose transpose is ``grad_x(w, g, in_hw, *geometry)`` or
    ``grad_w(x, g, kernel_hw, *geometry)``: reverse mode then runs those instead of XLA's own transposes.
    """
    kernel_fn = jax.custom_jvp(apply, nondiff_argnums=(2, 3, 4))

    def jvp(stride, padding, dilation, primals, tangents):
        x, w = primals
        tx, tw = tangents
        geometry = (stride, padding, dilation)
        y = apply(x, w, *geometry)
        in_hw, kernel = x.shape[1:3], w.shape[:2]
        ty = None
        if not isinstance(tx, SymbolicZero):
            ty = linear_call(lambda w_, t: apply(t, w_, *geometry),
                             lambda w_, g: grad_x(w_, g, in_hw, *geometry), w, tx)
        if not isinstance(tw, SymbolicZero):
            tyw = linear_call(lambda x_, t: apply(x_, t, *geometry),
                              lambda x_, g: grad_w(x_, g, kernel, *geometry), x, tw)
            ty = tyw if ty is None else ty + tyw
        return y, jnp.zeros_like(y) if ty is None else ty

    kernel_fn.defjvp(jvp, symbolic_zeros=True)
    return _one_call(kernel_fn, 2, 3)


# -- depthwise conv ----------------------------------------------------------------------------------------------

def _dw_apply(x: jax.Array, w: jax.Array, stride: Pair, padding: Padding, dilation: Pair) -> jax.Array:
    """Shift-and-multiply depthwise conv: sum over taps of a strided slice of the padded input times w[i, j]."""
    kernel = w.shape[:2]
    out_hw = tuple(_out_size(x.shape[1 + a], kernel[a], stride[a], padding[a], dilation[a]) for a in range(2))
    y = None
    for (i, j), tap in _taps(_pad_hw(x, padding), kernel, stride, dilation, out_hw):
        term = tap * w[i, j, 0]
        y = term if y is None else y + term
    return y


def _dw_grad_x(w: jax.Array, g: jax.Array, in_hw: Pair, stride: Pair, padding: Padding, dilation: Pair) -> jax.Array:
    kernel = w.shape[:2]
    taps = {(i, j): w[i, j, 0] for i in range(kernel[0]) for j in range(kernel[1])}
    return _full_correlation(g, taps, in_hw, kernel, stride, padding, dilation)


def _dw_grad_w(x: jax.Array, g: jax.Array, kernel: Pair, stride: Pair, padding: Padding,
               dilation: Pair) -> jax.Array:
    """dw[i, j, 0, c] = sum_{n, h, w} tap_ij(pad(x)) * g: k^2 per-channel reductions (in cache-sized batch chunks
    for maps of 6 MB and more: ~1.5x faster on XLA:CPU at 32x32)."""
    def reductions(x, g):
        sums = [jnp.sum(tap * g, axis=(0, 1, 2))
                for _, tap in _taps(_pad_hw(x, padding), kernel, stride, dilation, g.shape[1:3])]
        return jnp.stack(sums).reshape(kernel[0], kernel[1], 1, x.shape[3])
    return _sum_over_batch_chunks(reductions, x, g, min_bytes=6 << 20)


_depthwise_call = _bilinear_kernel(_dw_apply, _dw_grad_x, _dw_grad_w)


def depthwise_conv2d(x: jax.Array, w: jax.Array, stride: int | Sequence[int] = 1, padding=0,
                     dilation: int | Sequence[int] = 1) -> jax.Array:
    """Depthwise 2-D conv (torch ``Conv2d(C, C, k, groups=C)`` without bias) of an NHWC map.

    Args:
      x: (N, H, W, C) input.
      w: (kh, kw, 1, C) kernel, as ``nn.Conv(features=C, feature_group_count=C)`` stores it.
      stride, dilation: int or (h, w).
      padding: int, (ph, pw) or ((top, bottom), (left, right)), zero padding.
    Returns (N, Ho, Wo, C), equal to ``lax.conv_general_dilated(..., feature_group_count=C)`` up to rounding.
    """
    if w.ndim != 4 or w.shape[2] != 1 or w.shape[3] != x.shape[3]:
        raise ValueError(f'depthwise kernel must be (kh, kw, 1, C={x.shape[3]}), got {w.shape}')
    return _depthwise_call(x, w, _pair(stride), _padding(padding), _pair(dilation))


# -- dense conv --------------------------------------------------------------------------------------------------

def _conv_apply(x: jax.Array, w: jax.Array, stride: Pair, padding: Padding, dilation: Pair) -> jax.Array:
    return lax.conv_general_dilated(x, w, stride, padding, rhs_dilation=dilation,
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _conv_grad_x(w: jax.Array, g: jax.Array, in_hw: Pair, stride: Pair, padding: Padding,
                 dilation: Pair) -> jax.Array:
    """XLA's own transpose of the conv w.r.t. its input (as fast as the forward on XLA:CPU)."""
    x_shape = jax.ShapeDtypeStruct((g.shape[0],) + tuple(in_hw) + (w.shape[2],), g.dtype)
    return jax.linear_transpose(lambda t: _conv_apply(t, w, stride, padding, dilation), x_shape)(g)[0]


def _conv_grad_w(x: jax.Array, g: jax.Array, kernel: Pair, stride: Pair, padding: Padding,
                 dilation: Pair) -> jax.Array:
    """dw[i, j] = tap_ij(pad(x))^T g summed over (n, h, w), in cache-sized batch chunks (1.2-2x faster on XLA:CPU
    than the whole batch at once).

    Two forms, chosen by what XLA:CPU runs faster (``benchmarks/kernels.py``, 3x3 convs at batch 64): one
    (C_in x C_out) matmul per kernel tap, or, when C_in is a multiple of 64, one matmul of all taps stacked
    (k^2 C_in x C_out), 1.1-1.4x faster there (e.g. 64x16x16x64: 10.4 -> 7.5 ms) but 1.2-2x slower at C_in of
    16, 32, 48 or 96.
    """
    stacked = x.shape[3] % 64 == 0

    def filter_gradient(x, g):
        taps = [tap for _, tap in _taps(_pad_hw(x, padding), kernel, stride, dilation, g.shape[1:3])]
        if stacked:
            return jnp.einsum('tnhwc,nhwd->tcd', jnp.stack(taps), g).reshape(tuple(kernel) + (x.shape[3], g.shape[3]))
        g2 = g.reshape(-1, g.shape[3])  # plain 2-D matmuls: ~25% faster on XLA:CPU than the 4-D einsum
        per_tap = [tap.reshape(-1, x.shape[3]).T @ g2 for tap in taps]
        return jnp.stack(per_tap).reshape(tuple(kernel) + (x.shape[3], g.shape[3]))
    return _sum_over_batch_chunks(filter_gradient, x, g)


_conv_call = _bilinear_kernel(_conv_apply, _conv_grad_x, _conv_grad_w)


def conv2d(x: jax.Array, w: jax.Array, stride: int | Sequence[int] = 1, padding=0,
           dilation: int | Sequence[int] = 1) -> jax.Array:
    """Dense 2-D conv (torch ``Conv2d`` without bias, groups=1) of an NHWC map; kernel (kh, kw, C_in, C_out).

    The forward pass is XLA's conv; the filter gradient is one matmul per kernel tap instead of XLA:CPU's
    conv-based filter gradient, which is pathologically slow at 32x32 resolution (4-15x slower; 2.1 s against
    0.14 s for a 7x1 conv at C=64, batch 64).
    """
    if w.ndim != 4 or w.shape[2] != x.shape[3]:
        raise ValueError(f'conv kernel must be (kh, kw, C_in={x.shape[3]}, C_out), got {w.shape}')
    stride, padding = _pair(stride), _padding(padding)
    if w.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0)):
        return _pointwise_call(x, w, stride)
    return _conv_call(x, w, stride, padding, _pair(dilation))


def _pointwise(x: jax.Array, w: jax.Array, stride: Pair) -> jax.Array:
    """A 1x1 conv as one (N*H*W x C_in) @ (C_in x C_out) matmul: on XLA:CPU ~2x faster forward and backward than
    the convolution (whose gradients are matmuls here too, from plain autodiff of ``dot_general``)."""
    if stride != (1, 1):
        x = x[:, ::stride[0], ::stride[1]]
    n, h, wd, c = x.shape
    return (x.reshape(n * h * wd, c) @ w.reshape(c, w.shape[3])).reshape(n, h, wd, w.shape[3])


_pointwise_call = jax.jit(_pointwise, static_argnums=2)


# -- max pool ----------------------------------------------------------------------------------------------------

def _max_pool_lax(x: jax.Array, kernel: Pair, stride: Pair, padding: Padding) -> jax.Array:
    """The reference (and traced primal): ``reduce_window`` max with -inf padding, as ``flax.linen.max_pool``."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1,) + kernel + (1,), (1,) + stride + (1,),
                             ((0, 0),) + padding + ((0, 0),))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool(x: jax.Array, kernel: Pair, stride: Pair, padding: Padding, reduce_window: bool) -> jax.Array:
    if reduce_window:
        return _max_pool_lax(x, kernel, stride, padding)
    return functools.reduce(jnp.maximum, _window_taps(x, kernel, stride, padding, -jnp.inf))


def _select_taps(index: jax.Array, t: jax.Array, kernel: Pair, stride: Pair, padding: Padding) -> jax.Array:
    """Linear map t -> t at the selected tap of every window (tap number ``index``, row-major)."""
    out = None
    for (i, j), tap in _taps(_pad_hw(t, padding), kernel, stride, (1, 1), index.shape[1:3]):
        term = jnp.where(index == i * kernel[1] + j, tap, 0)
        out = term if out is None else out + term
    return out


def _scatter_taps(index: jax.Array, g: jax.Array, in_hw: Pair, kernel: Pair, stride: Pair,
                  padding: Padding) -> jax.Array:
    """Transpose of :func:`_select_taps`: each window's cotangent goes back to its selected input position.

    dx[h] = sum over taps t of gd[h + pad - t] where the dilated index equals t (``gd``: the cotangent dilated by
    the stride, zeros between). The dilated cotangent and index are built once and held (an optimisation
    barrier): left to itself XLA:CPU fuses the pads into the k^2 slices that read them and recomputes them (5-7x
    slower), and under one jit with the forward it also recomputes every window's index k^2 times (~20x slower).
    """
    cfg = _dilated_padding(g.shape[1:3], in_hw, kernel, stride, padding, (1, 1))
    gp, ip = lax.optimization_barrier((lax.pad(g, jnp.zeros((), g.dtype), cfg),
                                       lax.pad(index, jnp.asarray(-1, index.dtype), cfg)))
    n, c = g.shape[0], g.shape[3]
    dx = None
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            start = (0, kernel[0] - 1 - i, kernel[1] - 1 - j, 0)
            limit = (n, start[1] + in_hw[0], start[2] + in_hw[1], c)
            term = jnp.where(lax.slice(ip, start, limit) == i * kernel[1] + j, lax.slice(gp, start, limit), 0)
            dx = term if dx is None else dx + term
    return dx


def _max_pool_jvp(kernel, stride, padding, _reduce_window, primals, tangents):
    (x,), (tx,) = primals, tangents
    taps = _window_taps(x, kernel, stride, padding, -jnp.inf)
    y = functools.reduce(jnp.maximum, taps)
    # first tap (row-major) equal to the window max: the element lax.reduce_window's JVP and torch pick.
    dtype = jnp.int8 if len(taps) < 127 else jnp.int32
    index = jnp.full(y.shape, len(taps), dtype)
    for t in reversed(range(len(taps))):
        index = jnp.where(taps[t] == y, jnp.asarray(t, dtype), index)
    if isinstance(tx, SymbolicZero):
        return y, jnp.zeros_like(y)
    in_hw = x.shape[1:3]
    ty = linear_call(lambda idx, t: _select_taps(idx, t, kernel, stride, padding),
                     lambda idx, g: _scatter_taps(idx, g, in_hw, kernel, stride, padding), index, tx)
    return y, ty


_max_pool.defjvp(_max_pool_jvp, symbolic_zeros=True)
_max_pool_call = _one_call(_max_pool, 1, 4)


def max_pool2d(x: jax.Array, kernel: int | Sequence[int], stride: int | Sequence[int], padding=0) -> jax.Array:
    """torch ``MaxPool2d(kernel, stride, padding)`` of an NHWC map (implicit -inf padding).

    Gradients go to the first maximum of each window in row-major order, like ``lax.reduce_window`` and torch.
    """
    return _max_pool_call(x, _pair(kernel), _pair(stride), _padding(padding), _staged_as_reduce_window())


# -- avg pool ----------------------------------------------------------------------------------------------------

def _window_counts(in_hw: Pair, kernel: Pair, stride: Pair, padding: Padding, include_pad: bool) -> np.ndarray:
    """(1, Ho, Wo, 1) number of elements averaged by each window (a trace-time numpy constant)."""
    counts = []
    for a in range(2):
        n_out = _out_size(in_hw[a], kernel[a], stride[a], padding[a], 1)
        starts = np.arange(n_out) * stride[a] - padding[a][0]
        if include_pad:
            counts.append(np.full(n_out, kernel[a]))
        else:
            counts.append(np.minimum(starts + kernel[a], in_hw[a]) - np.maximum(starts, 0))
    return (counts[0][:, None] * counts[1][None, :]).astype(np.float32)[None, :, :, None]


def _avg_pool_values(x: jax.Array, kernel: Pair, stride: Pair, padding: Padding, include_pad: bool,
                     reduce_window: bool = False) -> jax.Array:
    """Window sums divided by the window counts. The sums are a sum of the window taps (1.6-9x faster on XLA:CPU at
    stride 1) or, while graphs are traced, ``reduce_window``: with a Python scalar init it is the
    reduce_window_sum primitive that the graph tracer reads as avg_pool."""
    if reduce_window:
        sums = lax.reduce_window(x, 0.0, lax.add, (1,) + kernel + (1,), (1,) + stride + (1,),
                                 ((0, 0),) + padding + ((0, 0),))
    else:
        sums = functools.reduce(jnp.add, _window_taps(x, kernel, stride, padding))
    return sums / _window_counts(x.shape[1:3], kernel, stride, padding, include_pad).astype(x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4, 5))
def _avg_pool(x: jax.Array, kernel: Pair, stride: Pair, padding: Padding, include_pad: bool,
              reduce_window: bool) -> jax.Array:
    return _avg_pool_values(x, kernel, stride, padding, include_pad, reduce_window)


def _avg_pool_transpose(g: jax.Array, in_hw: Pair, kernel: Pair, stride: Pair, padding: Padding,
                        include_pad: bool) -> jax.Array:
    g = g / _window_counts(in_hw, kernel, stride, padding, include_pad).astype(g.dtype)
    taps = {(i, j): None for i in range(kernel[0]) for j in range(kernel[1])}
    return _full_correlation(g, taps, in_hw, kernel, stride, padding, (1, 1))


def _avg_pool_jvp(kernel, stride, padding, include_pad, _reduce_window, primals, tangents):
    (x,), (tx,) = primals, tangents
    y = _avg_pool_values(x, kernel, stride, padding, include_pad)
    if isinstance(tx, SymbolicZero):
        return y, jnp.zeros_like(y)
    in_hw = x.shape[1:3]
    ty = linear_call(lambda _, t: _avg_pool_values(t, kernel, stride, padding, include_pad),
                     lambda _, g: _avg_pool_transpose(g, in_hw, kernel, stride, padding, include_pad), (), tx)
    return y, ty


_avg_pool.defjvp(_avg_pool_jvp, symbolic_zeros=True)
_avg_pool_call = _one_call(_avg_pool, 1, 5)


def avg_pool2d(x: jax.Array, kernel: int | Sequence[int], stride: int | Sequence[int], padding=0,
               count_include_pad: bool = False) -> jax.Array:
    """torch ``AvgPool2d(kernel, stride, padding, count_include_pad)`` of an NHWC map.

    DeepNets-1M uses ``count_include_pad=False``: border windows average only their in-image elements.
    """
    return _avg_pool_call(x, _pair(kernel), _pair(stride), _padding(padding), bool(count_include_pad),
                          _staged_as_reduce_window())


# -- multi-head self-attention -----------------------------------------------------------------------------------

#: Attention scores held at once (groups x queries x keys floats): 4 MB chunks stay in the CPU caches.
ATTENTION_CHUNK_ELEMENTS = 1 << 20
#: ``checkpoint_name`` of attention's output and row log-sum-exps, all its backward pass needs besides q, k, v: a
#: ``jax.checkpoint`` policy that keeps them never runs the attention forward twice.
ATTENTION_OUTPUT = 'attention_output'


def _attention_groups(x: jax.Array) -> jax.Array:
    """(b, n, h, d) -> (chunks, g, n, d): one (query x key) score matrix per batch element and head, g per chunk."""
    b, n, h, d = x.shape
    rows = b * h
    g = max(1, min(rows, ATTENTION_CHUNK_ELEMENTS // (n * n)))
    while rows % g:
        g -= 1
    return x.transpose(0, 2, 1, 3).reshape(rows // g, g, n, d)


def _attention_ungroup(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    b, n, h, d = shape
    return x.reshape(b, h, n, d).transpose(0, 2, 1, 3)


def _scores(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
    return jnp.einsum('gid,gjd->gij', q, k) * scale


def _chunked(fn, *arrays: jax.Array, transposed: tuple[bool, ...] = ()):
    """``fn`` over the (g, n, ...) chunks of (b, n, h, ...) arrays, one chunk at a time; results back in that layout.

    Outputs flagged in ``transposed`` come as (g, d, n) and are transposed once after the loop: inside it, XLA:CPU
    computes ``p^T a`` 3-5x faster as ``a^T p`` left in that layout.
    """
    shape = arrays[0].shape
    out = lax.map(lambda a: fn(*a), tuple(_attention_groups(a.reshape(shape[:3] + (-1,))) for a in arrays))
    single = not isinstance(out, tuple)
    out = (out,) if single else out
    out = [jnp.swapaxes(o, -1, -2) if i < len(transposed) and transposed[i] else o for i, o in enumerate(out)]
    ungroup = lambda o: _attention_ungroup(o, shape[:3] + (o.shape[-1],)).reshape(shape[:3] + o.shape[3:])
    return ungroup(out[0]) if single else tuple(ungroup(o) for o in out)


def _attention_forward(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> tuple[jax.Array, jax.Array]:
    """The output and the (b, n, h, 1) log-sum-exp of every score row (later passes need no max or sum over keys)."""
    def one(q, k, v):
        s = _scores(q, k, scale)
        m = jnp.max(s, axis=-1, keepdims=True)
        e = jnp.exp(s - m)
        total = jnp.sum(e, axis=-1, keepdims=True)
        return (e @ v) / total, m + jnp.log(total)
    return _chunked(one, q, k, v)


def _attention_probs(q: jax.Array, k: jax.Array, lse: jax.Array, scale: float) -> jax.Array:
    return jnp.exp(_scores(q, k, scale) - lse)


def _attention_tangent(scale: float, present: tuple[bool, ...], res: tuple, tangents: tuple) -> jax.Array:
    """d softmax(q k^T s) v = P' v + P dv, with P' = P * (S' - rowsum(P * S')) and S' = (dq k^T + q dk^T) s.

    ``present`` says which of (dq, dk, dv) are given (the others are zero and left out of ``tangents``).
    """
    def one(q, k, v, o, lse, *ts):
        tq, tk, tv = _expand(present, ts)
        p = _attention_probs(q, k, lse, scale)
        out = 0.0
        if tq is not None or tk is not None:
            ds = 0.0
            if tq is not None:
                ds = ds + _scores(tq, k, scale)
            if tk is not None:
                ds = ds + _scores(q, tk, scale)
            out = (p * (ds - jnp.sum(p * ds, axis=-1, keepdims=True))) @ v
        return out + p @ tv if tv is not None else out
    return _chunked(one, *res, *tangents)


def _attention_transpose(scale: float, present: tuple[bool, ...], res: tuple, g: jax.Array) -> tuple:
    """The backward pass of attention, recomputing each chunk's scores instead of keeping them (flash-style)."""
    def one(q, k, v, o, lse, g):
        p = _attention_probs(q, k, lse, scale)
        dp = jnp.einsum('gid,gjd->gij', g, v)
        ds = p * (dp - jnp.sum(g * o, axis=-1, keepdims=True)) * scale
        grads = (ds @ k, jnp.einsum('gid,gij->gdj', q, ds), jnp.einsum('gid,gij->gdj', g, p))  # dq, dk^T, dv^T
        return tuple(t for t, keep in zip(grads, present) if keep)
    transposed = tuple(t for t, keep in zip((False, True, True), present) if keep)
    return _chunked(one, *res, g, transposed=transposed)


def _expand(present: tuple[bool, ...], given: tuple) -> list:
    it = iter(given)
    return [next(it) if keep else None for keep in present]


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    return _attention_forward(q, k, v, scale)[0]


def _attention_jvp(scale, primals, tangents):
    out, lse = (checkpoint_name(a, ATTENTION_OUTPUT) for a in _attention_forward(*primals, scale))
    present = tuple(not isinstance(t, SymbolicZero) for t in tangents)
    if not any(present):
        return out, jnp.zeros_like(out)
    given = tuple(t for t, keep in zip(tangents, present) if keep)
    res = (*primals, out, lse)
    t_out = linear_call(lambda r, t: _attention_tangent(scale, present, r, t),
                        lambda r, g: _attention_transpose(scale, present, r, g), res, given)
    return out, t_out


_attention.defjvp(_attention_jvp, symbolic_zeros=True)
_attention_call = _one_call(_attention, 3, 1)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    """softmax(q k^T * scale) v per batch element and head; q, k, v and the result are (batch, tokens, heads, dim).

    Equal to the plain two-einsum formulation up to float32 rounding, but the (tokens x tokens) scores are made
    and consumed in cache-sized chunks and never kept: at 32x32 maps (1,024 tokens, batch 64, 8 heads) the plain
    form writes and reads 2 GB of scores per pass, 8x slower forward on a 2-core CPU, and keeps them for the
    backward pass, which here recomputes them chunk by chunk instead (as flash attention does).
    """
    if not q.shape == k.shape == v.shape or q.ndim != 4:
        raise ValueError(f'attention needs equal (batch, tokens, heads, dim) q, k, v; got {q.shape}, {k.shape}, '
                         f'{v.shape}')
    return _attention_call(q, k, v, float(scale))
