"""Activity-perturbed forward gradients with local losses (Ren et al., ICLR 2023).

Plain forward gradients perturb all d weights at once, so the estimate's
variance grows with d. Ren, Kornblith, Liao and Hinton ("Scaling Forward
Gradient With Local Losses") reduce it in two ways, both implemented here:

* Activity perturbation (FG-A): perturb the pre-activations z = layer(h_in)
  with a tangent u, get the per-example directional derivative
  (grad_z loss . u) with one JVP, form the activity-gradient estimate
  g_z = (grad_z loss . u) u and turn it into the layer's weight gradient with
  the layer's own local vector-Jacobian product (for a dense layer
  h_in^T g_z). Per example the perturbed dimension is the layer width, not the
  number of weights.
* Local losses: every block has its own classifier head on its output
  (global average pooling for feature maps, then a linear layer) and its input
  is a stop-gradient, so each block learns greedily from a local signal. The
  feature map can further be split into channel groups and spatial patches,
  each with its own copy of the loss ("replicated" aggregator): the head sees
  the full pooled features, but the directional derivative of copy (patch,
  group) only contains the tangent of that patch and group. Smaller groups,
  smaller variance.

Everything in the network body is forward-mode: the only reverse-mode
products are the single-layer weight VJPs and the exact gradient of each
linear head from its own (stop-gradient) input, both local computations that
need no backpropagation through the network.

`LocalLossNet` is an ordinary Flax classifier: `net.apply({'params': p}, x)`
returns the logits of its last layer and never touches the heads, so the same
parameters train with backprop, plain forward gradients or `local_fg_grad`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ghn_jax.train import forward_grad

PyTree = Any


# ---------------------------------------------------------------------------
# Parameter-free block outputs (hashable module-level functions).
# ---------------------------------------------------------------------------


def identity(z: jax.Array) -> jax.Array:
    """Output block: the pre-activations are the logits."""
    return z


def relu(z: jax.Array) -> jax.Array:
    return nn.relu(z)


def relu_maxpool(z: jax.Array) -> jax.Array:
    """ReLU then 2x2 max-pooling with stride 2 (NHWC)."""
    return nn.max_pool(nn.relu(z), (2, 2), strides=(2, 2))


def _flatten_for(layer: nn.Module, h: jax.Array) -> jax.Array:
    """Dense layers take feature maps flattened per example."""
    if isinstance(layer, nn.Dense) and h.ndim > 2:
        return h.reshape(h.shape[0], -1)
    return h


def _pool(h: jax.Array) -> jax.Array:
    """Head input: global average pooling for feature maps, identity otherwise."""
    return h.mean(axis=(1, 2)) if h.ndim == 4 else h


class LocalLossNet(nn.Module):
    """Feed-forward classifier cut into blocks z_l = layers[l](h_{l-1}), h_l = posts[l](z_l).

    Attributes:
      layers: parametric layers (`nn.Dense` or `nn.Conv`), stored as
        `layers_{l}` in the parameters.
      posts: parameter-free maps (activation, pooling); the last one is
        normally `identity` so that the last layer's output is the logits.
      num_classes: classes of the local heads `head_{l}` (one per block except
        the last).
    """

    layers: tuple[nn.Module, ...]
    posts: tuple[Callable[[jax.Array], jax.Array], ...]
    num_classes: int

    def setup(self):
        if len(self.layers) != len(self.posts):
            raise ValueError("layers and posts must have the same length")
        self.heads = tuple(nn.Dense(self.num_classes, name=f"head_{i}") for i in range(len(self.layers) - 1))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        for layer, post in zip(self.layers, self.posts):
            h = post(layer(_flatten_for(layer, h)))
        return h

    def init_with_heads(self, key: jax.Array, x: jax.Array) -> PyTree:
        """Initialises the body and all local heads (plain `init` creates only the body)."""
        return self.init(key, x, method=LocalLossNet._all_blocks)["params"]

    def _all_blocks(self, x: jax.Array) -> jax.Array:
        h = x
        for i, (layer, post) in enumerate(zip(self.layers, self.posts)):
            h = post(layer(_flatten_for(layer, h)))
            if i < len(self.heads):
                self.heads[i](_pool(h))
        return h


def make_logreg(num_classes: int = 10) -> LocalLossNet:
    """Logistic regression on flattened inputs."""
    return LocalLossNet(layers=(nn.Dense(num_classes),), posts=(identity,), num_classes=num_classes)


def make_mlp(hidden: Sequence[int] = (1024, 1024), num_classes: int = 10) -> LocalLossNet:
    """ReLU MLP; the default is the paper's 784-1024-1024-10 net."""
    layers = tuple(nn.Dense(w) for w in hidden) + (nn.Dense(num_classes),)
    posts = (relu,) * len(hidden) + (identity,)
    return LocalLossNet(layers=layers, posts=posts, num_classes=num_classes)


def make_cnn(channels: int = 64, fc: int = 1024, num_classes: int = 10) -> LocalLossNet:
    """The paper's CNN: 4 valid 3x3 convs (2 max-pools), FC `fc`, FC classes (1.17M params on 28x28)."""
    conv = lambda: nn.Conv(channels, (3, 3), padding="VALID")  # noqa: E731
    layers = (conv(), conv(), conv(), conv(), nn.Dense(fc), nn.Dense(num_classes))
    posts = (relu, relu_maxpool, relu, relu_maxpool, relu, identity)
    return LocalLossNet(layers=layers, posts=posts, num_classes=num_classes)


def body_params(params: PyTree) -> PyTree:
    """The parameters `net.apply` uses (drops the local heads)."""
    return {k: v for k, v in params.items() if not k.startswith("head_")}


# ---------------------------------------------------------------------------
# Activity-perturbed local forward gradient.
# ---------------------------------------------------------------------------


def _one_hot_ranges(n: int, parts: int) -> jax.Array:
    """(n, parts) 0/1 matrix assigning index i to part i * parts // n."""
    return jax.nn.one_hot(jnp.arange(n) * parts // n, parts, dtype=jnp.float32)


def _patch_masks(z_shape: Sequence[int], num_patches: int) -> jax.Array:
    """(P*P, 1, H, W, 1) 0/1 masks splitting the spatial grid of z into P x P patches."""
    _, h, w, _ = z_shape
    ph, pw = _one_hot_ranges(h, num_patches), _one_hot_ranges(w, num_patches)
    masks = jnp.einsum("hp,wq->pqhw", ph, pw).reshape(-1, 1, h, w, 1)
    return masks


def _copy_tangents(post, z, u, num_patches: int, num_groups: int) -> jax.Array:
    """Tangent of the pooled head input restricted to each (patch, channel group).

    Patches are taken on z; each patch's tangent goes through `post` by its own
    JVP, so any spatial post (pooling, odd sizes) keeps the copies exact. Posts
    must act per channel. Returns (copies, B, C), copies = patches * groups;
    summing over copies gives the tangent of the full pooled features.
    """
    if z.ndim == 4:
        masks = _patch_masks(z.shape, num_patches)
        t_h = jax.vmap(lambda m: jax.jvp(post, (z,), (u * m,))[1])(masks)  # (P*P, B, H', W', C)
        per_patch = t_h.mean(axis=(2, 3))
    else:
        per_patch = jax.jvp(post, (z,), (u,))[1][None]  # (1, B, C)
    gmask = _one_hot_ranges(per_patch.shape[-1], num_groups).T  # (G, C)
    copies = per_patch[:, None] * gmask[None, :, None, :]  # (P*P, G, B, C)
    return copies.reshape(-1, *copies.shape[2:])


def _spread(derivs: jax.Array, z_shape: Sequence[int], num_patches: int, num_groups: int) -> jax.Array:
    """Maps per-copy directional derivatives (copies, B) back onto every element of z."""
    c = z_shape[-1]
    gmask = _one_hot_ranges(c, num_groups)  # (C, G)
    if len(z_shape) == 4:
        _, h, w, _ = z_shape
        d = derivs.reshape(num_patches, num_patches, num_groups, -1)  # (P, P, G, B)
        ph, pw = _one_hot_ranges(h, num_patches), _one_hot_ranges(w, num_patches)
        return jnp.einsum("pqgb,hp,wq,cg->bhwc", d, ph, pw, gmask)
    return jnp.einsum("gb,cg->bc", derivs.reshape(num_groups, -1), gmask)


def _per_example_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def local_fg_grad(
    net: LocalLossNet,
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    distribution: forward_grad.Distribution = "rademacher",
    num_groups: int = 1,
    num_patches: int = 1,
    generator: forward_grad.Generator = "hash",
) -> tuple[jax.Array, PyTree, dict[str, jax.Array]]:
    """Activity-perturbed forward gradient of every block's local loss.

    Args:
      net: the network; `params` must contain the heads (`init_with_heads`).
      x, y: a batch of inputs and integer labels.
      key: PRNG key for the activity tangents.
      distribution, generator: as in `forward_grad.sample_tangent`.
      num_groups: channel groups per hidden block, each with its own loss copy.
      num_patches: spatial patches per side for feature-map blocks.

    Returns:
      (loss, grads, aux): the network's mean cross-entropy, a gradient estimate
      shaped like `params` (body from FG-A, heads exact and local) and
      `aux['local_losses']`, the mean loss of every block.
    """
    num_blocks = len(net.layers)
    grads, local_losses = {}, []
    h = x
    for i in range(num_blocks):
        layer, post = net.layers[i], net.posts[i]
        last = i == num_blocks - 1
        h_in = jax.lax.stop_gradient(_flatten_for(layer, h))
        p_i = params[f"layers_{i}"]
        layer_fn = lambda p, inp, layer=layer: layer.apply({"params": p}, inp)  # noqa: E731
        z, layer_vjp = jax.vjp(lambda p: layer_fn(p, h_in), p_i)
        u = forward_grad.sample_tangent(jax.random.fold_in(key, i), z, distribution, generator)
        h_out = post(z)

        if last:
            head_p, groups, patches = None, 1, 1
            loss_of_feats = lambda s: _per_example_ce(s, y)  # noqa: E731
            feats = h_out
        else:
            head_p, groups, patches = params[f"head_{i}"], num_groups, num_patches
            head = nn.Dense(net.num_classes)
            loss_of_feats = lambda s, hp=head_p, head=head: _per_example_ce(head.apply({"params": hp}, s), y)  # noqa: E731
            feats = jax.lax.stop_gradient(_pool(h_out))

        # One forward-mode derivative per loss copy and example.
        tangents = _copy_tangents(post, z, u, patches if z.ndim == 4 else 1, groups)
        derivs = jax.vmap(lambda t: jax.jvp(loss_of_feats, (feats,), (t,))[1])(tangents)  # (copies, B)
        g_z = _spread(derivs, z.shape, patches, groups) * u / z.shape[0]
        (grads[f"layers_{i}"],) = layer_vjp(g_z.astype(z.dtype))

        local_losses.append(loss_of_feats(feats).mean())
        if not last:
            grads[f"head_{i}"] = jax.grad(_head_loss)(head_p, net.num_classes, feats, y)
        h = h_out
    aux = {"local_losses": jnp.stack(local_losses)}
    return local_losses[-1], grads, aux


def _head_loss(head_params: PyTree, num_classes: int, feats: jax.Array, y: jax.Array) -> jax.Array:
    """Mean cross-entropy of a local linear head on (stop-gradient) pooled features."""
    logits = nn.Dense(num_classes).apply({"params": head_params}, feats)
    return _per_example_ce(logits, y).mean()


def make_local_train_step(
    net: LocalLossNet,
    optimizer: optax.GradientTransformation,
    *,
    donate: bool = False,
    **options,
) -> Callable[..., tuple[PyTree, optax.OptState, jax.Array]]:
    """Jitted step `(params, opt_state, key, x, y) -> (params, opt_state, loss)` with `local_fg_grad`."""

    def step(params, opt_state, key, x, y):
        loss, grads, _ = local_fg_grad(net, params, x, y, key=key, **options)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1) if donate else ())

