"""Tests for ghn_jax.train.local_losses: activity-perturbed local forward gradients (Ren et al. 2023)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ghn_jax.train import forward_grad as fg
from ghn_jax.train import local_losses as ll


def _tiny_cnn():
    conv = lambda c: nn.Conv(c, (3, 3), padding="VALID")  # noqa: E731
    return ll.LocalLossNet(
        layers=(conv(4), conv(6), nn.Dense(3)), posts=(ll.relu, ll.relu_maxpool, ll.identity), num_classes=3
    )


def _exact_local_grads(net, params, x, y):
    """Reference: backprop of each block's local loss with stop-gradient block inputs."""

    def total(p):
        h, losses = x, []
        for i, (layer, post) in enumerate(zip(net.layers, net.posts)):
            h_in = jax.lax.stop_gradient(ll._flatten_for(layer, h))
            h = post(layer.apply({"params": p[f"layers_{i}"]}, h_in))
            if i < len(net.layers) - 1:
                logits = nn.Dense(net.num_classes).apply({"params": p[f"head_{i}"]}, ll._pool(h))
            else:
                logits = h
            losses.append(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())
        return sum(losses)

    return jax.grad(total)(params)


CASES = {
    "mlp": (lambda: ll.make_mlp(hidden=(8, 6), num_classes=3), (5, 7), {}),
    "cnn_groups_patches": (_tiny_cnn, (3, 7, 7, 2), {"num_groups": 2, "num_patches": 2}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mean_estimate_equals_exact_local_gradient(case):
    make, shape, options = CASES[case]
    net = make()
    x = jax.random.normal(jax.random.key(0), shape)
    y = jnp.arange(shape[0]) % 3
    params = net.init_with_heads(jax.random.key(1), x)
    exact = jax.jit(lambda p: _exact_local_grads(net, p, x, y))(params)
    keys = jax.random.split(jax.random.key(2), 1500)

    @jax.jit
    def mean_estimate():
        ests = jax.vmap(lambda k: ll.local_fg_grad(net, params, x, y, key=k, **options)[1])(keys)
        return jax.tree.map(lambda a: a.mean(0), ests)

    mean = mean_estimate()
    assert jax.tree.structure(mean) == jax.tree.structure(exact)
    for name in exact:
        cos = float(fg.tree_cosine(mean[name], exact[name]))
        assert cos >= 0.99, (name, cos)
        if name.startswith("head_"):  # Heads are exact, not estimated.
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), mean[name], exact[name])


def test_loss_and_local_losses_and_body_params():
    net = ll.make_mlp(hidden=(8,), num_classes=3)
    x = jax.random.normal(jax.random.key(0), (4, 5))
    y = jnp.array([0, 1, 2, 0])
    params = net.init_with_heads(jax.random.key(1), x)
    assert set(params) == {"layers_0", "layers_1", "head_0"}
    body = ll.body_params(params)
    assert set(body) == {"layers_0", "layers_1"}
    local = jax.jit(lambda p, k: ll.local_fg_grad(net, p, x, y, key=k))
    loss, _, aux = local(params, jax.random.key(3))
    ref = optax.softmax_cross_entropy_with_integer_labels(net.apply({"params": body}, x), y).mean()
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    assert aux["local_losses"].shape == (2,)
    # Plain init creates exactly the body, so the same parameters train with BP or FG as well.
    assert jax.tree.structure(net.init(jax.random.key(1), x)["params"]) == jax.tree.structure(body)


def test_local_train_step_learns_synthetic_task():
    net = ll.make_mlp(hidden=(32,), num_classes=4)
    x = jax.random.normal(jax.random.key(0), (64, 10))
    y = jnp.argmax(x[:, :4], axis=1)
    params = net.init_with_heads(jax.random.key(1), x)
    opt = optax.sgd(0.1, momentum=0.9)
    step = ll.make_local_train_step(net, opt)
    state = opt.init(params)
    loss_fn = jax.jit(lambda p: optax.softmax_cross_entropy_with_integer_labels(net.apply({"params": p}, x), y).mean())
    first = float(loss_fn(ll.body_params(params)))
    for i in range(150):
        params, state, _ = step(params, state, jax.random.key(i), x, y)
    assert float(loss_fn(ll.body_params(params))) < 0.6 * first
