"""Tests for ghn_jax.train.rank1_jvp: equal to jax.jvp on the dense tangent, without materialising it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ghn_jax.train import rank1_jvp as r1


def _factors(params, seed=0):
    """Random Rank1 factors for every leaf of >= 2 dims, dense tangents for the others."""
    leaves, tree = jax.tree.flatten(params)
    out = []
    for i, leaf in enumerate(leaves):
        ka, kb = jax.random.split(jax.random.fold_in(jax.random.key(seed), i))
        if leaf.ndim >= 2:
            out.append(r1.Rank1(jax.random.normal(ka, leaf.shape[:-1]), jax.random.normal(kb, leaf.shape[-1:])))
        else:
            out.append(jax.random.normal(ka, leaf.shape))
    return jax.tree.unflatten(tree, out)


class _Net(nn.Module):
    """Dense and conv layers in the layouts the fast path recognises (and one it does not)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3), strides=2, padding="SAME", name="conv_s2")(x))
        x = nn.relu(nn.Conv(6, (3, 3), kernel_dilation=2, padding="VALID", name="conv_dil")(x))
        x = nn.Conv(6, (1, 1), feature_group_count=2, name="conv_grouped")(x)  # dense fallback
        x = x.reshape(x.shape[0], -1)
        x = jnp.tanh(nn.Dense(7, name="dense")(x))
        return nn.Dense(3, name="head")(x)


def _net_problem():
    net = _Net()
    x = jax.random.normal(jax.random.key(1), (4, 12, 12, 3))
    params = net.init(jax.random.key(2), x)["params"]
    y = jnp.arange(4) % 3

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(net.apply({"params": p}, x), y).mean()

    return loss, params


def _weights_problem():
    """Weights used through an inner jit, transposed (fallback) and in a batched einsum."""
    k = jax.random.split(jax.random.key(3), 4)
    params = {"w1": jax.random.normal(k[0], (5, 6)), "w2": jax.random.normal(k[1], (4, 6)), "w3": jax.random.normal(k[2], (6, 2))}
    x = jax.random.normal(k[3], (3, 5))

    @jax.jit
    def inner(h, w):
        return jnp.sin(h @ w)

    def loss(p):
        h = inner(x, p["w1"])
        h = h @ p["w2"].T  # the Rank1 meets dot_general as a transposed rhs: dense fallback
        h = jnp.einsum("bi,ij->bj", jnp.cos(h @ p["w2"]), p["w3"])
        return jnp.sum(h**2)

    return loss, params


@pytest.mark.parametrize("problem", [_net_problem, _weights_problem])
def test_matches_jax_jvp_on_the_dense_tangent(problem):
    loss, params = problem()
    factors = _factors(params)
    dense = jax.tree.map(r1.dense, factors, is_leaf=lambda t: isinstance(t, r1.Rank1))
    ref_value, ref_deriv = jax.jit(lambda p, v: jax.jvp(loss, (p,), (v,)))(params, dense)
    value, deriv = jax.jit(lambda p, f: r1.jvp(loss, (p,), (f,)))(params, factors)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(deriv, ref_deriv, rtol=1e-4)


def test_weight_shaped_tangents_are_never_materialised():
    loss, params = _net_problem()
    jaxpr = jax.make_jaxpr(lambda p, f: r1.jvp(loss, (p,), (f,)))(params, _factors(params))
    fast = {"conv_s2", "conv_dil", "dense", "head"}
    shapes = {tuple(params[name]["kernel"].shape) for name in fast}
    made = [e.primitive.name for e in jaxpr.eqns for v in e.outvars if tuple(v.aval.shape) in shapes]
    assert made == [], made
    # The grouped conv is not a recognised layout: its tangent is materialised (once).
    grouped = tuple(params["conv_grouped"]["kernel"].shape)
    assert any(tuple(v.aval.shape) == grouped for e in jaxpr.eqns for v in e.outvars)


def test_vmapped_over_several_factor_sets():
    loss, params = _net_problem()
    stacked = jax.tree.map(lambda *t: jnp.stack(t), *[_factors(params, s) for s in range(3)])
    _, derivs = jax.jit(jax.vmap(lambda f: r1.jvp(loss, (params,), (f,))))(stacked)
    for s in range(3):
        _, one = r1.jvp(loss, (params,), (_factors(params, s),))
        np.testing.assert_allclose(derivs[s], one, rtol=1e-4)
