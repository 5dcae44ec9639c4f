"""Tests for ghn_jax.train.forward_grad: estimator statistics, determinism, API."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ghn_jax.train import forward_grad as fg


def _mlp_params(key, sizes):
    params = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        k = jax.random.fold_in(key, i)
        params.append({"w": jax.random.normal(k, (a, b)) / math.sqrt(a), "b": 0.1 * jax.random.normal(k, (b,))})
    return params


def _mlp_loss(params, x, y):
    h = x
    for p in params[:-1]:
        h = jnp.tanh(h @ p["w"] + p["b"])
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _problem(sizes, batch=16, seed=0):
    key = jax.random.key(seed)
    params = _mlp_params(key, sizes)
    x = jax.random.normal(jax.random.fold_in(key, 100), (batch, sizes[0]))
    y = jnp.arange(batch) % sizes[-1]
    return params, x, y


_true_grad = jax.jit(jax.grad(_mlp_loss))
_cosine = jax.jit(fg.tree_cosine)


def _cosines(vfg, params, x, y, true, keys):
    return jax.vmap(lambda k: fg.tree_cosine(vfg(params, x, y, key=k)[1], true))(keys)


@pytest.fixture(scope="module")
def small_problem_means():
    """Means of 100 d single-tangent estimates (d = 92), one compile for all distributions."""
    params, x, y = _problem((6, 8, 4))
    d = fg.tree_size(params)
    keys = jax.random.split(jax.random.key(1), 100 * d)

    @jax.jit
    def means():
        out = {}
        for dist in ("rademacher", "gaussian", "rank1"):
            vfg = fg.value_and_fwd_grad(_mlp_loss, distribution=dist)
            ests = jax.vmap(lambda k: vfg(params, x, y, key=k)[1])(keys)
            out[dist] = jax.tree.map(lambda a: a.mean(0), ests)
        return out

    return params, x, y, d, means()


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian", "rank1"])
def test_mean_of_100d_estimates_matches_grad(small_problem_means, distribution):
    params, x, y, d, means = small_problem_means
    assert d <= 1000
    true = _true_grad(params, x, y)
    assert _cosine(means[distribution], true) >= 0.99


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian", "rank1"])
def test_error_of_the_mean_is_unbiased_noise(small_problem_means, distribution):
    params, x, y, d, means = small_problem_means
    true = _true_grad(params, x, y)
    num = 100 * d
    total_sq = sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(true))
    var_scale = 2.0 if distribution == "gaussian" else 1.0  # per-coordinate Var <= scale * |grad|^2
    errs_sq = 0.0
    for est, ref in zip(jax.tree.leaves(means[distribution]), jax.tree.leaves(true)):
        err = float(jnp.linalg.norm(est - ref))
        errs_sq += err**2
        # Every leaf is within 3 standard errors of an unbiased mean of `num` draws.
        assert err <= 3 * math.sqrt(ref.size * var_scale * total_sq / num)
    # The total relative error is the theoretical sqrt(d / K) (= 10% at K = 100 d),
    # so a per-leaf error below 5% needs K of several hundred d.
    ratio = math.sqrt(errs_sq / total_sq) / math.sqrt(d / num)
    assert 0.7 < ratio < 1.3


@pytest.fixture(scope="module")
def cosine_stats():
    """Cosines to the true gradient for several estimators (d = 525 and d = 174).

    Each statistic is its own jitted program: a single program holding all of them (vmaps over 1,000 keys) once
    wedged XLA:CPU's runtime for good in CI (every thread idle, the result never ready).
    """
    params, x, y = _problem((20, 20, 5))
    true = _true_grad(params, x, y)
    small = _problem((12, 10, 4))
    small_true = _true_grad(*small)
    keys = jax.random.split(jax.random.key(4), 1000)

    def cosines(vfg, problem, ref, ks):
        return jax.block_until_ready(jax.jit(lambda k: _cosines(vfg, *problem, ref, k))(ks))

    out = {}
    for dist in ("rademacher", "gaussian"):
        out[f"single_{dist}"] = cosines(fg.value_and_fwd_grad(_mlp_loss, distribution=dist), (params, x, y), true, keys)
    for k in (4, 16, 64):
        vfg = fg.value_and_fwd_grad(_mlp_loss, num_tangents=k, distribution="gaussian")
        out[f"mean_{k}"] = cosines(vfg, (params, x, y), true, keys[:100])
    for reduction in ("mean", "projection"):
        vfg = fg.value_and_fwd_grad(_mlp_loss, num_tangents=32, distribution="gaussian", reduction=reduction)
        out[f"k32_{reduction}"] = cosines(vfg, small, small_true, keys[:100])
    vfg = fg.value_and_fwd_grad(_mlp_loss, num_tangents=32, distribution="gaussian", reduction="projection")
    ests = jax.jit(jax.vmap(lambda k: vfg(*small, key=k)[1]))(keys[:400])
    out["projection_mean"] = jax.block_until_ready(jax.tree.map(lambda a: a.mean(0), ests))
    return fg.tree_size(params), small_true, out


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_single_tangent_cosine_is_about_0p8_over_sqrt_d(cosine_stats, distribution):
    d, _, stats = cosine_stats
    cos = stats[f"single_{distribution}"]
    assert float(cos.min()) >= 0.0  # g . grad = (grad . v)^2 >= 0: never an ascent direction.
    expected = math.sqrt(2 / (math.pi * d))  # ~0.8 / sqrt(d)
    assert abs(float(cos.mean()) / expected - 1) < 0.12


def test_cosine_grows_like_sqrt_k_over_d(cosine_stats):
    d, _, stats = cosine_stats
    means = [float(stats["single_gaussian"].mean())]
    for k in (4, 16, 64):
        means.append(float(stats[f"mean_{k}"].mean()))
        lower = 0.8 if k == 4 else 0.9  # E|cos| approaches sqrt(K / (K + d)) from below as K grows.
        assert lower < means[-1] / math.sqrt(k / (k + d)) < 1.1, (k, means[-1])
    assert means == sorted(means)


def test_projection_beats_mean_at_equal_k_and_stays_unbiased(cosine_stats):
    _, small_true, stats = cosine_stats
    assert float(stats["k32_projection"].mean()) > float(stats["k32_mean"].mean()) + 0.03
    # Scaled by d / K the projection is unbiased for Gaussian tangents: the mean of
    # many estimates points along the gradient with the gradient's norm.
    mean = stats["projection_mean"]
    assert _cosine(mean, small_true) >= 0.98
    norm = lambda t: math.sqrt(sum(float(jnp.sum(a**2)) for a in jax.tree.leaves(t)))  # noqa: E731
    assert abs(norm(mean) / norm(small_true) - 1) < 0.1


@pytest.mark.parametrize("distribution", ["rademacher", "rank1"])
def test_value_is_exact_and_estimate_is_d_times_tangent(distribution):
    params, x, y = _problem((5, 7, 3))
    key = jax.random.key(3)

    @jax.jit
    def run():
        value, est = fg.value_and_fwd_grad(_mlp_loss, distribution=distribution)(params, x, y, key=key)
        v = fg.sample_tangent(key, (params,), distribution)[0]
        loss, deriv = jax.jvp(lambda p: _mlp_loss(p, x, y), (params,), (v,))
        return value, est, loss, deriv, v

    value, est, loss, deriv, v = run()
    np.testing.assert_allclose(value, loss, rtol=1e-6)
    # The estimate regenerates the very tangent the JVP used: g = (grad . v) v.
    for e, t in zip(jax.tree.leaves(est), jax.tree.leaves(v)):
        np.testing.assert_allclose(e, deriv * t, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("distribution", ["rademacher", "rank1"])
def test_deterministic_given_key_and_different_across_keys(distribution):
    params, x, y = _problem((5, 7, 3))
    vfg = jax.jit(fg.value_and_fwd_grad(_mlp_loss, num_tangents=3, distribution=distribution))
    _, a = vfg(params, x, y, key=jax.random.key(8))
    _, b = vfg(params, x, y, key=jax.random.key(8))
    _, c = vfg(params, x, y, key=jax.random.key(9))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.allclose(a[0]["w"], c[0]["w"])


def test_tangent_moments_and_independence():
    like = {"a": jnp.zeros((300, 200)), "b": jnp.zeros((60000,))}
    options = [(d, g) for d in ("rademacher", "gaussian") for g in ("hash", "jax")]
    draws = jax.jit(lambda k: [fg.sample_tangent(k, like, d, g) for d, g in options])(jax.random.key(10))
    for (dist, gen), v in zip(options, draws):
        a, b = np.asarray(v["a"]).ravel(), np.asarray(v["b"])
        for s in (a, b):
            assert abs(s.mean()) < 0.02 and abs(s.var() - 1) < 0.02, (dist, gen)
        if dist == "rademacher":
            assert set(np.unique(a)) == {-1.0, 1.0}
        else:
            assert abs(np.mean(a**4) - 3) < 0.1, (dist, gen)  # Gaussian kurtosis.
        # Neighbours and the two leaves are uncorrelated.
        assert abs(np.mean(a[1:] * a[:-1])) < 0.02 and abs(np.mean(a[:60000] * b)) < 0.02, (dist, gen)


@pytest.mark.parametrize("generator", ["hash", "jax"])
def test_rank1_tangents_are_signs_of_rank_one_with_identity_covariance(generator):
    like = {"w": jnp.zeros((4, 3)), "b": jnp.zeros((5,))}
    keys = jax.random.split(jax.random.key(11), 4000)
    draws = jax.jit(jax.vmap(lambda k: fg.sample_tangent(k, like, "rank1", generator)))(keys)
    w, b = np.asarray(draws["w"]), np.asarray(draws["b"])
    assert set(np.unique(w)) == {-1.0, 1.0} and set(np.unique(b)) == {-1.0, 1.0}
    assert all(np.linalg.matrix_rank(m) == 1 for m in w[:20])
    # E[v v^T] = I over all 17 coordinates: unbiased estimates, uncorrelated entries.
    flat = np.concatenate([w.reshape(len(w), -1), b], axis=1)
    np.testing.assert_allclose(flat.T @ flat / len(flat), np.eye(17), atol=0.06)


def test_jax_generator_with_rbg_key():
    params, x, y = _problem((5, 7, 3))
    vfg = jax.jit(fg.value_and_fwd_grad(_mlp_loss, generator="jax"))
    _, a = vfg(params, x, y, key=jax.random.key(0, impl="unsafe_rbg"))
    _, b = vfg(params, x, y, key=jax.random.key(0, impl="unsafe_rbg"))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) and float(jnp.abs(leaf).max()) > 0 for leaf in jax.tree.leaves(a))


def test_clipping_bounds_the_directional_derivative():
    params, x, y = _problem((5, 7, 3))
    key = jax.random.key(11)

    @jax.jit
    def run(clip):
        v = fg.sample_tangent(key, (params,))[0]
        _, deriv = jax.jvp(lambda p: _mlp_loss(p, x, y), (params,), (v,))
        _, est = fg.value_and_fwd_grad(_mlp_loss, clip=clip)(params, x, y, key=key)
        return deriv, v, est

    deriv, _, _ = run(1e9)
    clip = 0.25 * abs(float(deriv))
    _, v, est = run(clip)
    for e, t in zip(jax.tree.leaves(est), jax.tree.leaves(v)):
        np.testing.assert_allclose(e, np.sign(deriv) * clip * t, rtol=1e-5)


def test_argnums_tuple_and_has_aux():
    def f(a, b, scale):
        out = jnp.sum(a**2) + scale * jnp.sum(jnp.sin(b))
        return out, {"double": 2 * out}

    a, b = jnp.arange(3.0), jnp.ones((2, 2))

    @jax.jit
    def run(key):
        both = fg.value_and_fwd_grad(f, argnums=(0, 1), has_aux=True, num_tangents=4)(a, b, 3.0, key=key)
        only_b = fg.fwd_grad(f, argnums=1, has_aux=True)(a, b, 3.0, key=key)
        return both, only_b

    ((value, aux), (ga, gb)), (grad_b, aux_b) = run(jax.random.key(12))
    assert ga.shape == a.shape and gb.shape == b.shape and grad_b.shape == b.shape
    np.testing.assert_allclose(value, f(a, b, 3.0)[0], rtol=1e-6)
    np.testing.assert_allclose(aux["double"], 2 * value, rtol=1e-6)
    np.testing.assert_allclose(aux_b["double"], 2 * value, rtol=1e-6)


def test_axis_name_averages_directional_derivatives_over_shards():
    params, x, y = _problem((5, 7, 3), batch=8)
    key = jax.random.key(13)
    sharded = fg.value_and_fwd_grad(_mlp_loss, axis_name="data")

    @jax.jit
    def run():
        _, full = fg.value_and_fwd_grad(_mlp_loss)(params, x, y, key=key)
        _, per_shard = jax.vmap(lambda xs, ys: sharded(params, xs, ys, key=key), axis_name="data")(
            x.reshape(2, 4, -1), y.reshape(2, 4)
        )
        return full, per_shard

    full, per_shard = run()
    for shard in range(2):
        jax.tree.map(lambda f_, s: np.testing.assert_allclose(f_, s[shard], rtol=1e-4, atol=1e-6), full, per_shard)


def test_exp_decay_schedule_and_optax_step():
    schedule = fg.exp_decay_schedule()
    np.testing.assert_allclose(schedule(0), 2e-4, rtol=1e-6)
    np.testing.assert_allclose(schedule(10_000), 2e-4 * math.exp(-1), rtol=1e-5)
    np.testing.assert_allclose(fg.exp_decay_schedule(1.0, 0.5)(2), math.exp(-1), rtol=1e-6)
    # The estimate goes straight into optax: the first SGD update is -eta_0 * g.
    params, x, y = _problem((5, 7, 3))
    key = jax.random.key(14)
    opt = optax.sgd(schedule)
    step = fg.make_train_step(_mlp_loss, opt, grad="fg")
    new, _, _ = step(params, opt.init(params), key, x, y)
    _, est = jax.jit(fg.value_and_fwd_grad(_mlp_loss))(params, x, y, key=key)
    jax.tree.map(lambda n, p, g: np.testing.assert_allclose(n, p - 2e-4 * g, rtol=1e-5, atol=1e-8), new, params, est)


@pytest.mark.parametrize("grad", ["bp", "fg"])
def test_train_step_reduces_loss(grad):
    params, x, y = _problem((6, 8, 4), batch=32)
    opt = optax.sgd(0.5 if grad == "bp" else 0.02)
    step = fg.make_train_step(_mlp_loss, opt, grad=grad, **({} if grad == "bp" else {"num_tangents": 8}))
    loss_fn = jax.jit(_mlp_loss)
    state = opt.init(params)
    first = float(loss_fn(params, x, y))
    for i in range(100):
        params, state, _ = step(params, state, jax.random.key(i), x, y)
    assert float(loss_fn(params, x, y)) < 0.8 * first


def test_rejects_bad_options():
    with pytest.raises(ValueError):
        fg.value_and_fwd_grad(_mlp_loss, distribution="uniform")
    with pytest.raises(ValueError):
        fg.value_and_fwd_grad(_mlp_loss, reduction="median")
    with pytest.raises(ValueError):
        fg.value_and_fwd_grad(_mlp_loss, num_tangents=0)
    with pytest.raises(TypeError):
        fg.sample_tangent(jax.random.key(0), {"n": jnp.arange(3)})
    with pytest.raises(ValueError):
        fg.make_train_step(_mlp_loss, optax.sgd(0.1), grad="bp", num_tangents=2)
