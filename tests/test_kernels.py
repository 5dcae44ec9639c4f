"""Exactness of the custom conv (dense, depthwise), pooling and attention kernels against plain JAX references.

Values, reverse-mode gradients (``jax.vjp``), forward-mode tangents (``jax.jvp``) and ``vmap`` over ``jvp`` are
compared on small random inputs covering strides 1/2, dilation 1/2, kernels 1/3/5/7x1, odd and even sizes.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ghn_jax.nets import kernels
from ghn_jax.nets.kernels import attention, avg_pool2d, conv2d, depthwise_conv2d, max_pool2d
from ghn_jax.nets.layers import torch_conv

TOL = dict(rtol=1e-5, atol=1e-5)


def _lax_depthwise(x, w, stride, padding, dilation):
    return lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2, rhs_dilation=(dilation,) * 2,
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[-1],
                                    precision=lax.Precision.HIGHEST)


def _lax_conv(x, w, stride, padding, dilation):
    return lax.conv_general_dilated(x, w, (stride, stride), padding, rhs_dilation=(dilation,) * 2,
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=lax.Precision.HIGHEST)


def _lax_max_pool(x, k, s, p):
    return nn.max_pool(x, (k, k), (s, s), [(p, p)] * 2)


def _lax_avg_pool(x, k, s, p):
    return nn.avg_pool(x, (k, k), (s, s), [(p, p)] * 2, count_include_pad=False)


def _derivatives(fun, args, cotangent, tangents):
    """(value, vjp of ``cotangent``, jvp of ``tangents``) of ``fun``, all in one jitted call (one compile)."""
    y, vjp = jax.vjp(fun, *args)
    return y, vjp(cotangent), jax.jvp(fun, args, tangents)[1]


def _check(fast, ref, *args):
    """Values, vjp (random cotangent) and jvp (random tangents) of ``fast`` vs the lax reference ``ref``."""
    y_shape = jax.eval_shape(ref, *args).shape
    g = jax.random.normal(jax.random.key(7), y_shape)
    tangents = tuple(jax.random.normal(jax.random.key(8 + i), a.shape) for i, a in enumerate(args))
    run = jax.jit(_derivatives, static_argnums=0)
    y_fast, grads_fast, tan_fast = run(fast, args, g, tangents)
    y_ref, grads_ref, tan_ref = run(ref, args, g, tangents)
    np.testing.assert_allclose(y_fast, y_ref, **TOL)
    for a, b in zip(grads_fast, grads_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tan_fast, tan_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('k,stride,dilation,size', [(3, 1, 1, 8), (3, 2, 1, 7), (3, 2, 2, 8), (5, 1, 2, 7),
                                                    (5, 2, 2, 9), (5, 2, 1, 6)])
def test_depthwise_conv(k, stride, dilation, size):
    x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 3))
    w = jax.random.normal(jax.random.key(1), (k, k, 1, 3))
    padding = dilation * (k - 1) // 2 if dilation == 1 else k - k % 2  # SepConv / DilConv paddings
    _check(lambda x, w: depthwise_conv2d(x, w, stride, padding, dilation),
           lambda x, w: _lax_depthwise(x, w, stride, padding, dilation), x, w)


@pytest.mark.parametrize('kernel,stride,dilation,size', [((3, 3), 1, 1, 8), ((1, 1), 2, 1, 7), ((1, 1), 1, 1, 8),
                                                         ((7, 1), 1, 1, 8), ((5, 5), 2, 2, 9), ((3, 3), 2, 1, 6)])
def test_dense_conv(kernel, stride, dilation, size):
    """Including 1x1 convs, which are computed as one matmul (stride 2: of the strided input)."""
    x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 3))
    w = jax.random.normal(jax.random.key(1), kernel + (3, 5))
    padding = tuple((dilation * (k - 1) // 2,) * 2 for k in kernel)
    _check(lambda x, w: conv2d(x, w, stride, padding, dilation),
           lambda x, w: _lax_conv(x, w, stride, padding, dilation), x, w)


@pytest.mark.parametrize('kernel,stride,dilation', [((3, 3), 1, 1), ((3, 3), 2, 2), ((7, 1), 1, 1)])
def test_dense_conv_filter_gradient_of_stacked_taps(kernel, stride, dilation):
    """C_in a multiple of 64 takes the other filter-gradient form (one matmul of all taps stacked)."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 7, 64))
    w = 0.1 * jax.random.normal(jax.random.key(1), kernel + (64, 5))
    padding = tuple((dilation * (k - 1) // 2,) * 2 for k in kernel)
    _check(lambda x, w: conv2d(x, w, stride, padding, dilation),
           lambda x, w: _lax_conv(x, w, stride, padding, dilation), x, w)


def test_filter_gradients_over_batch_chunks(monkeypatch):
    """Filter gradients summed over batch chunks (the CPU path for large maps) equal the lax ones; 6 images in
    chunks of at most 4 come as two chunks of 3."""
    chunk_sizes = []
    whole_batch = kernels._sum_over_batch_chunks

    def small_chunks(fn, x, g, **_):
        record = lambda a, b: chunk_sizes.append(a.shape[0]) or fn(a, b)  # noqa: E731
        return whole_batch(record, x, g, chunk_bytes=4 * x[0].size * x.dtype.itemsize, min_bytes=0)

    monkeypatch.setattr(kernels, '_sum_over_batch_chunks', small_chunks)
    x = jax.random.normal(jax.random.key(0), (6, 9, 10, 3))   # shapes no other test compiles the kernels for
    _check(lambda x, w: conv2d(x, w, 1, 1), lambda x, w: _lax_conv(x, w, 1, ((1, 1), (1, 1)), 1),
           x, jax.random.normal(jax.random.key(1), (3, 3, 3, 4)))
    _check(lambda x, w: depthwise_conv2d(x, w, 2, 2, 2), lambda x, w: _lax_depthwise(x, w, 2, 2, 2),
           x, jax.random.normal(jax.random.key(2), (3, 3, 1, 3)))
    assert chunk_sizes and set(chunk_sizes) == {3}


@pytest.mark.parametrize('k,stride,padding,size', [(3, 1, 1, 8), (3, 2, 1, 7), (2, 2, 0, 6), (5, 2, 2, 9)])
def test_pools(k, stride, padding, size):
    x = jax.random.normal(jax.random.key(2), (2, size, size + 1, 3))
    _check(lambda x: max_pool2d(x, k, stride, padding), lambda x: _lax_max_pool(x, k, stride, padding), x)
    _check(lambda x: avg_pool2d(x, k, stride, padding), lambda x: _lax_avg_pool(x, k, stride, padding), x)


def _primitives(fun, x) -> set[str]:
    """Primitive names staged by ``fun(x)``, inside jitted and custom-JVP calls too."""
    names = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            names.add(eqn.primitive.name)
            for key in ('jaxpr', 'call_jaxpr'):
                sub = eqn.params.get(key)
                if sub is not None:
                    walk(getattr(sub, 'jaxpr', sub))
    walk(jax.make_jaxpr(lambda x: fun(x))(x).jaxpr)   # a new function each time: make_jaxpr caches by function
    return names


def test_pools_compute_with_taps_and_stage_reduce_window_for_graphs():
    """Executed pools are the max/sum of window taps (faster on XLA:CPU); under ``pools_as_reduce_window`` (graph
    tracing) they stage ``reduce_window``, which the graph tracer reads as pool nodes. Both give the lax values."""
    x = jax.random.normal(jax.random.key(5), (2, 7, 8, 3))
    cases = ((lambda x: max_pool2d(x, 3, 2, 1), lambda x: _lax_max_pool(x, 3, 2, 1), 'reduce_window_max'),
             (lambda x: avg_pool2d(x, 3, 1, 1), lambda x: _lax_avg_pool(x, 3, 1, 1), 'reduce_window_sum'))
    for pool, ref, prim in cases:
        assert prim not in _primitives(pool, x)
        np.testing.assert_allclose(pool(x), ref(x), **TOL)
        with kernels.pools_as_reduce_window():
            assert prim in _primitives(pool, x)
            np.testing.assert_allclose(pool(x), ref(x), **TOL)
        assert prim not in _primitives(pool, x)   # the staged form is neither left on nor cached for execution


def test_max_pool_ties_pick_first_maximum():
    """After a ReLU many windows are all zero: the gradient must go to one element, as lax/torch do."""
    x = jax.nn.relu(jax.random.normal(jax.random.key(3), (2, 8, 8, 4))).at[:, :4].set(0.0)
    _check(lambda x: max_pool2d(x, 3, 2, 1), lambda x: _lax_max_pool(x, 3, 2, 1), x)
    _check(lambda x: max_pool2d(x, 3, 1, 1), lambda x: _lax_max_pool(x, 3, 1, 1), x)


def test_vmap_of_jvp():
    """Forward gradients vmap jvp over tangents; linear_call needs the batching rule installed by kernels.py."""
    x = jax.random.normal(jax.random.key(4), (2, 8, 8, 3))
    w = jax.random.normal(jax.random.key(5), (3, 3, 1, 3))
    ts = jax.random.normal(jax.random.key(6), (4,) + x.shape)

    def f(x, w, pool, dw):
        return pool(dw(x, w, 2, 1, 1), 3, 1, 1)

    w_dense = jax.random.normal(jax.random.key(9), (3, 3, 3, 3))

    def fast(x):
        x = conv2d(x, w_dense, 1, 1, 1)
        return f(x, w, lambda *a: max_pool2d(*a) + avg_pool2d(*a), depthwise_conv2d)

    def ref(x):
        x = _lax_conv(x, w_dense, 1, [(1, 1)] * 2, 1)
        return f(x, w, lambda *a: _lax_max_pool(*a) + _lax_avg_pool(*a), _lax_depthwise)

    got = jax.jit(jax.vmap(lambda t: jax.jvp(fast, (x,), (t,))[1]))(ts)
    want = jax.jit(jax.vmap(lambda t: jax.jvp(ref, (x,), (t,))[1]))(ts)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # reverse mode under vmap (per-example gradients) also works
    gx = jax.jit(jax.vmap(jax.grad(lambda x: jnp.sum(fast(x[None]) ** 2))))(x)
    gx_ref = jax.jit(jax.vmap(jax.grad(lambda x: jnp.sum(ref(x[None]) ** 2))))(x)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-4)


def _plain_attention(q, k, v, scale):
    scores = jnp.einsum('bihd,bjhd->bhij', q, k, precision=lax.Precision.HIGHEST) * scale
    return jnp.einsum('bhij,bjhd->bihd', jax.nn.softmax(scores, axis=-1), v, precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize('shape,chunk', [((2, 16, 2, 4), 1 << 20), ((3, 10, 2, 3), 200), ((5, 9, 3, 2), 81 * 4)])
def test_attention(shape, chunk, monkeypatch):
    """One chunk, and several: 6 (batch x head) rows in chunks of 2, 15 rows in chunks of 3 (4 does not divide 15)."""
    monkeypatch.setattr(kernels, 'ATTENTION_CHUNK_ELEMENTS', chunk)
    q, k, v = (jax.random.normal(jax.random.key(10 + i), shape) for i in range(3))
    _check(lambda q, k, v: attention(q, k, v, 0.7), lambda q, k, v: _plain_attention(q, k, v, 0.7), q, k, v)


def test_attention_partial_derivatives_and_vmap():
    """Gradients w.r.t. a subset of q, k, v (the others are symbolic zeros) and vmap over jvp (forward gradients)."""
    q, k, v = (jax.random.normal(jax.random.key(20 + i), (2, 12, 2, 4)) for i in range(3))
    for argnums in [(0,), (1,), (2,), (0, 2)]:
        loss = lambda f: (lambda *a: jnp.sum(jnp.sin(f(*a, 0.5))))
        got = jax.jit(jax.grad(loss(attention), argnums))(q, k, v)
        want = jax.jit(jax.grad(loss(_plain_attention), argnums))(q, k, v)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    ts = jax.random.normal(jax.random.key(30), (3,) + q.shape)
    tangent = lambda f: jax.jit(jax.vmap(lambda t: jax.jvp(lambda q: f(q, k, v, 0.5), (q,), (t,))[1]))
    np.testing.assert_allclose(tangent(attention)(ts), tangent(_plain_attention)(ts), rtol=1e-4, atol=1e-5)


def test_attention_keeps_no_score_matrix_for_the_backward_pass():
    """Residuals of the linearisation are q, k, v, the output and row log-sum-exps: O(tokens), not O(tokens^2)."""
    q = k = v = jnp.ones((2, 64, 2, 4))
    residuals = jax.linearize(lambda q: attention(q, k, v, 0.5), q)[1]
    sizes = [leaf.size for leaf in jax.tree_util.tree_leaves(residuals) if hasattr(leaf, 'size')]
    assert sizes and max(sizes) <= q.size, sizes
    plain = jax.linearize(lambda q: _plain_attention(q, k, v, 0.5), q)[1]
    assert max(leaf.size for leaf in jax.tree_util.tree_leaves(plain) if hasattr(leaf, 'size')) >= 2 * 2 * 64 * 64


@pytest.mark.parametrize('groups', [6, 1, 3])
def test_torch_conv_module_matches_nn_conv(groups):
    """torch_conv's FastConv (depthwise, dense, grouped) keeps nn.Conv's params (names, shapes, init) and outputs."""
    x = jax.random.normal(jax.random.key(9), (2, 9, 9, 6))
    fast = torch_conv(6, 5, 2, 4, dilation=2, groups=groups, bias=True)
    ref = nn.Conv(6, (5, 5), strides=(2, 2), padding=[(4, 4)] * 2, kernel_dilation=(2, 2),
                  feature_group_count=groups, use_bias=True)
    p_fast, p_ref = jax.jit(fast.init)(jax.random.key(0), x), jax.jit(ref.init)(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, p_fast) == jax.tree.map(jnp.shape, p_ref)
    for a, b in zip(jax.tree.leaves(p_fast), jax.tree.leaves(p_ref)):
        np.testing.assert_array_equal(a, b)
    assert isinstance(fast, nn.Conv)
    np.testing.assert_allclose(jax.jit(fast.apply)(p_ref, x), jax.jit(ref.apply)(p_ref, x), rtol=1e-5, atol=1e-5)
