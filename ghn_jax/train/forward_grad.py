"""Forward gradients: gradient estimates from forward-mode AD only.

For a scalar loss f(theta) and a random tangent v with independent, zero-mean,
unit-variance components, one `jax.jvp` gives the directional derivative
d = grad f . v, and g = d v is an unbiased estimate of grad f (Baydin et al.,
"Gradients without Backpropagation", 2022). With K tangents the estimates are
averaged (or combined by projecting onto their span, Flugel et al. 2024).

Design points:

* `value_and_fwd_grad` has the call shape of `jax.value_and_grad` plus a
  keyword-only PRNG `key`; the result is deterministic given the key.
* Tangents are never stored: each one is a pure function of (key, leaf index,
  element index). The JVP draws it, and the gradient estimate draws it again
  after the JVP (an optimisation barrier stops XLA from merging the two draws),
  so no d-sized tangent buffer has to live across the forward pass. A gradient
  estimate is therefore fully described by the key and K scalars.
* Drawing the tangent dominates a naive JAX forward-gradient step (see
  docs/forward_gradients.md). The default generator is a counter-based
  integer hash evaluated elementwise, seeded from the key data without any
  threefry call (about 1 ms for 1.9M signs on a 2-core CPU, versus about
  17 ms for `jax.random.rademacher` with threefry).
  `generator='jax'` uses `jax.random` with whatever PRNG implementation the key
  carries (threefry, rbg, unsafe_rbg) for reference.
* The estimate is an ordinary pytree shaped like the parameters, so any optax
  optimiser consumes it; `make_train_step` builds a pure, jitted step for
  either backprop or forward gradients.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import optax

from ghn_jax.train import rank1_jvp

PyTree = Any
Distribution = Literal["rademacher", "gaussian", "rank1"]
Generator = Literal["hash", "jax"]
Reduction = Literal["mean", "projection"]

_DISTRIBUTIONS = ("rademacher", "gaussian", "rank1")
_GENERATORS = ("hash", "jax")
_REDUCTIONS = ("mean", "projection")


# ---------------------------------------------------------------------------
# Tangent generation.
# ---------------------------------------------------------------------------


def _mix32(x: jax.Array) -> jax.Array:
    """Integer finaliser (xorshift-multiply, the "lowbias32" constants).

    A bijection on uint32 with good avalanche; two rounds keyed by two seed
    words give a cheap counter-based generator that XLA fuses into its
    consumers.
    """
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _hash_bits(seed: tuple[jax.Array, jax.Array], shape: Sequence[int]) -> jax.Array:
    """uint32 pseudo-random bits for every element of `shape` from 2 seed words."""
    size = math.prod(shape)
    if size >= 2**32:
        raise ValueError(f"leaf with {size} elements is too large for the hash generator")
    counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
    return _mix32(_mix32(counter ^ seed[0]) + seed[1])


def _key_words(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two uint32 words summarising a PRNG key (typed key of any impl, or raw uint32 key)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    words = jnp.asarray(key).astype(jnp.uint32).reshape(-1)
    a, b = jnp.uint32(0x243F6A88), jnp.uint32(0x85A308D3)
    for i in range(words.shape[0]):
        a = _mix32(a ^ words[i])
        b = _mix32(b + words[i] + jnp.uint32(0x9E3779B9))
    return a, b


def _leaf_seed(base: tuple[jax.Array, jax.Array], index: int | jax.Array, leaf: int) -> tuple[jax.Array, jax.Array]:
    """Seed words of leaf number `leaf` of tangent number `index`."""
    t = jnp.asarray(index).astype(jnp.uint32) * jnp.uint32(0x9E3779B9) + jnp.uint32(leaf) * jnp.uint32(0x85EBCA6B)
    t = _mix32(t + jnp.uint32(0x632BE5AB))
    return _mix32(base[0] ^ t), _mix32(base[1] + t)


def _bits_to_sign(bits: jax.Array) -> jax.Array:
    """Maps the top bit to +-1.0 (float32) by writing it into the sign bit of 1.0."""
    one = jnp.uint32(0x3F800000)
    return jax.lax.bitcast_convert_type((bits & jnp.uint32(0x80000000)) | one, jnp.float32)


def _bits_to_normal(bits: jax.Array) -> jax.Array:
    """Standard normal (float32) from 24 uniform bits by inverse-CDF.

    x = (k - 2^23 + 1/2) / 2^23 for k in [0, 2^24) is exact in float32,
    symmetric and strictly inside (-1, 1), so erf_inv never returns +-inf.
    """
    centred = (bits >> 8).astype(jnp.int32) - jnp.int32(2**23)
    x = (centred.astype(jnp.float32) + 0.5) * (2.0**-23)
    return jnp.sqrt(2.0).astype(jnp.float32) * jax.lax.erf_inv(x)


def _check_options(distribution: str, generator: str) -> None:
    if distribution not in _DISTRIBUTIONS:
        raise ValueError(f"Unsupported distribution: {distribution!r}; use one of {_DISTRIBUTIONS}")
    if generator not in _GENERATORS:
        raise ValueError(f"Unsupported generator: {generator!r}; use one of {_GENERATORS}")


def _leaf_sources(key: jax.Array, num_leaves: int, index: int | jax.Array, generator: str) -> list[tuple]:
    """Two independent random sources (hash seed words or jax keys) for every leaf of tangent `index`."""
    if generator == "hash":
        base = _key_words(key)
        return [(_leaf_seed(base, index, i), _leaf_seed(base, index, i + 2**24)) for i in range(num_leaves)]
    keys = jax.random.split(jax.random.fold_in(key, index), max(num_leaves, 1))
    return [(k, jax.random.fold_in(k, 1)) for k in keys[:num_leaves]]


def _draw(source, generator: str, shape: Sequence[int], dtype, distribution: str) -> jax.Array:
    """i.i.d. +-1 ('rademacher') or N(0, 1) ('gaussian') values of `shape` from one source."""
    if generator == "hash":
        bits = _hash_bits(source, shape)
        v = _bits_to_sign(bits) if distribution == "rademacher" else _bits_to_normal(bits)
        return v.astype(dtype)
    if distribution == "rademacher":
        return jax.random.rademacher(source, shape, dtype)
    return jax.random.normal(source, shape, dtype)


def sample_factors(
    key: jax.Array,
    like: PyTree,
    distribution: Distribution = "rank1",
    generator: Generator = "hash",
    index: int | jax.Array = 0,
) -> PyTree:
    """Tangent number `index` of `key` in factored form.

    With distribution 'rank1', every leaf of two or more dimensions gets a
    `rank1_jvp.Rank1(a, b)`: the tangent a[..., None] * b with a and b
    independent +-1 vectors (a over all axes but the last, b over the last).
    Its entries are still +-1 with E[v v^T] = I, so d v stays an unbiased
    estimate, and |v|^2 = dim as for i.i.d. signs, so its mean squared error is
    the same; `rank1_jvp.jvp` never materialises it. Other leaves, and every
    leaf of the other distributions, are plain arrays.
    """
    _check_options(distribution, generator)
    leaves, treedef = jax.tree.flatten(like)
    for leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(f"forward gradients need floating-point leaves, got {jnp.result_type(leaf)}")
    out = []
    for (s0, s1), leaf in zip(_leaf_sources(key, len(leaves), index, generator), leaves):
        shape, dtype = jnp.shape(leaf), jnp.result_type(leaf)
        if distribution == "rank1" and len(shape) >= 2:
            a = _draw(s0, generator, shape[:-1], dtype, "rademacher")
            out.append(rank1_jvp.Rank1(a, _draw(s1, generator, shape[-1:], dtype, "rademacher")))
        else:
            out.append(_draw(s0, generator, shape, dtype, "gaussian" if distribution == "gaussian" else "rademacher"))
    return jax.tree.unflatten(treedef, out)


def sample_tangent(
    key: jax.Array,
    like: PyTree,
    distribution: Distribution = "rademacher",
    generator: Generator = "hash",
    index: int | jax.Array = 0,
) -> PyTree:
    """Draws tangent number `index` of `key`, shaped like `like`: zero mean, unit variance, uncorrelated.

    Deterministic given (key, index): calling it again regenerates the same
    tangent, which is how the estimate avoids storing it. The 'hash'
    generator runs no threefry at all; its seed words come from the key data.
    """
    factors = sample_factors(key, like, distribution, generator, index)
    return jax.tree.map(rank1_jvp.dense, factors, is_leaf=lambda t: isinstance(t, rank1_jvp.Rank1))


def combine_tangents(
    key: jax.Array,
    coeffs: jax.Array,
    like: PyTree,
    distribution: Distribution = "rademacher",
    generator: Generator = "hash",
) -> PyTree:
    """Regenerates tangents 0..K-1 of `key` and returns sum_k coeffs[k] v_k.

    The tangents are drawn one at a time inside a loop, so only the
    accumulator (one parameter-sized buffer) is alive, never K tangents.
    """
    num_tangents = coeffs.shape[0]
    if num_tangents == 1:
        v = sample_tangent(key, like, distribution, generator, 0)
        return jax.tree.map(lambda t: (coeffs[0] * t).astype(t.dtype), v)

    def body(k, acc):
        v = sample_tangent(key, like, distribution, generator, k)
        return jax.tree.map(lambda a, t: a + (coeffs[k] * t).astype(a.dtype), acc, v)

    zeros = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.result_type(x)), like)
    return jax.lax.fori_loop(0, num_tangents, body, zeros)


def _gram(key: jax.Array, num_tangents: int, like: PyTree, distribution: str, generator: str) -> jax.Array:
    """K x K Gram matrix of tangents 0..K-1 of `key`."""
    vs = jax.vmap(lambda k: sample_tangent(key, like, distribution, generator, k))(jnp.arange(num_tangents))
    flat = [v.reshape(v.shape[0], -1).astype(jnp.float32) for v in jax.tree.leaves(vs)]
    return sum(f @ f.T for f in flat)


def tree_size(tree: PyTree) -> int:
    """Total number of elements in a pytree (the dimension d)."""
    return sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------
# The value_and_grad-style API.
# ---------------------------------------------------------------------------


def value_and_fwd_grad(
    fun: Callable[..., Any],
    argnums: int | Sequence[int] = 0,
    *,
    num_tangents: int = 1,
    distribution: Distribution = "rademacher",
    reduction: Reduction = "mean",
    clip: float | None = None,
    has_aux: bool = False,
    generator: Generator = "hash",
    axis_name: str | None = None,
) -> Callable[..., tuple[Any, PyTree]]:
    """Like `jax.value_and_grad`, but the gradient is a forward-gradient estimate.

    The returned function takes the same positional and keyword arguments as
    `fun` plus a keyword-only `key` and returns `(value, grad_estimate)` (or
    `((value, aux), grad_estimate)` with `has_aux`).

    Args:
      fun: scalar-valued function to differentiate.
      argnums: which positional argument(s) to differentiate (any pytrees of
        floating arrays). The estimate has the same structure as `jax.grad`.
      num_tangents: K, tangents evaluated by one vmapped JVP.
      distribution: 'rademacher' (+-1, cheapest and lowest variance),
        'gaussian' (N(0, 1), the paper's choice) or 'rank1' (+-1 entries,
        rank one on every weight, see `sample_factors`: same mean squared
        error as 'rademacher', and the JVP of dense layers and convolutions
        costs a fraction of the forward pass instead of as much).
      reduction: 'mean' averages the K estimates d_k v_k (unbiased).
        'projection' projects the gradient onto the span of the K tangents,
        V (V^T V)^-1 d, scaled by dim/K; it is unbiased for Gaussian tangents
        (isotropic span) and nearly so for Rademacher, and has less variance
        than the mean at equal K.
      clip: if given, each directional derivative is clipped to [-clip, clip]
        before it scales the tangent.
      has_aux: `fun` returns `(value, aux)`.
      generator: 'hash' (fast counter-based generator seeded by the key) or
        'jax' (`jax.random` with the key's own PRNG implementation).
      axis_name: under `shard_map`/`vmap` with this axis name, the directional
        derivatives are averaged over the axis (K scalars of communication
        instead of a full gradient); all members must pass the same key.
    """
    if num_tangents < 1:
        raise ValueError(f"num_tangents must be >= 1, got {num_tangents}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"Unsupported reduction: {reduction!r}; use one of {_REDUCTIONS}")
    _check_options(distribution, generator)
    single = isinstance(argnums, int)
    argnums_t = (argnums,) if single else tuple(argnums)

    def value_and_estimate(*args, key: jax.Array, **kwargs):
        diff = tuple(args[i] for i in argnums_t)

        def fun_of_diff(*d):
            full = list(args)
            for i, a in zip(argnums_t, d):
                full[i] = a
            return fun(*full, **kwargs)

        def jvp_one(index):
            if distribution == "rank1":
                out, out_t = rank1_jvp.jvp(fun_of_diff, diff, sample_factors(key, diff, distribution, generator, index))
                value, aux = out if has_aux else (out, None)
                return value, (out_t[0] if has_aux else out_t), aux
            tangent = sample_tangent(key, diff, distribution, generator, index)
            if has_aux:
                value, deriv, aux = jax.jvp(fun_of_diff, diff, tangent, has_aux=True)
            else:
                (value, deriv), aux = jax.jvp(fun_of_diff, diff, tangent), None
            return value, deriv, aux

        if num_tangents == 1:
            value, deriv, aux = jvp_one(0)
            derivs = deriv[None]
        else:
            value, derivs, aux = jax.vmap(jvp_one, out_axes=(None, 0, None))(jnp.arange(num_tangents))
        if axis_name is not None:
            derivs = jax.lax.pmean(derivs, axis_name)
        if clip is not None:
            derivs = jnp.clip(derivs, -clip, clip)

        # Make the regenerated tangents depend on the JVP's result: XLA can then
        # neither merge them with the JVP's tangents nor draw them early, so no
        # tangent buffer stays alive across the forward pass.
        key_r, derivs = jax.lax.optimization_barrier((key, derivs))
        if reduction == "mean":
            coeffs = derivs / num_tangents
        else:
            gram = _gram(key_r, num_tangents, diff, distribution, generator)
            # A tiny ridge: Rademacher tangents can be linearly dependent in tiny dims.
            ridge = 1e-6 * jnp.trace(gram) / num_tangents * jnp.eye(num_tangents)
            coeffs = jnp.linalg.solve(gram + ridge, derivs.astype(jnp.float32))
            coeffs = coeffs * (tree_size(diff) / num_tangents)
        grads = combine_tangents(key_r, coeffs, diff, distribution, generator)
        if single:
            grads = grads[0]
        return ((value, aux) if has_aux else value), grads

    return value_and_estimate


def fwd_grad(fun: Callable[..., Any], argnums: int | Sequence[int] = 0, **options) -> Callable[..., PyTree]:
    """Like `jax.grad`: returns only the forward-gradient estimate (options as `value_and_fwd_grad`)."""
    vfg = value_and_fwd_grad(fun, argnums, **options)

    def grad_estimate(*args, key: jax.Array, **kwargs):
        out, grads = vfg(*args, key=key, **kwargs)
        return (grads, out[1]) if options.get("has_aux", False) else grads

    return grad_estimate


# ---------------------------------------------------------------------------
# optax integration.
# ---------------------------------------------------------------------------


def exp_decay_schedule(init_value: float = 2e-4, decay_rate: float = 1e-4) -> optax.Schedule:
    """The paper's learning rate eta_t = eta_0 exp(-k t) as an optax schedule."""

    def schedule(count):
        return init_value * jnp.exp(-decay_rate * jnp.asarray(count, jnp.float32))

    return schedule


def make_train_step(
    loss_fn: Callable[..., jax.Array],
    optimizer: optax.GradientTransformation,
    *,
    grad: Literal["bp", "fg"] = "fg",
    donate: bool = False,
    **fg_options,
) -> Callable[..., tuple[PyTree, optax.OptState, jax.Array]]:
    """Builds a jitted step `(params, opt_state, key, *batch) -> (params, opt_state, loss)`.

    `loss_fn(params, *batch)` returns a scalar. `grad='bp'` uses
    `jax.value_and_grad` (the key is ignored); `grad='fg'` uses
    `value_and_fwd_grad(loss_fn, **fg_options)`. Either estimate goes through
    the optax optimiser unchanged.
    """
    if grad == "bp":
        if fg_options:
            raise ValueError(f"forward-gradient options given with grad='bp': {sorted(fg_options)}")
        vg = jax.value_and_grad(loss_fn)

        def compute(params, key, *batch):
            del key
            return vg(params, *batch)

    elif grad == "fg":
        vfg = value_and_fwd_grad(loss_fn, **fg_options)

        def compute(params, key, *batch):
            return vfg(params, *batch, key=key)

    else:
        raise ValueError(f"Unsupported grad: {grad!r}; use 'bp' or 'fg'")

    def step(params, opt_state, key, *batch):
        loss, grads = compute(params, key, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1) if donate else ())


# ---------------------------------------------------------------------------
# Diagnostics.
# ---------------------------------------------------------------------------


def tree_cosine(a: PyTree, b: PyTree) -> jax.Array:
    """Cosine similarity between two pytrees of the same structure, as flat vectors."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    dot = sum(jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32)) for x, y in zip(la, lb))
    na = jnp.sqrt(sum(jnp.vdot(x.astype(jnp.float32), x.astype(jnp.float32)) for x in la))
    nb = jnp.sqrt(sum(jnp.vdot(y.astype(jnp.float32), y.astype(jnp.float32)) for y in lb))
    return dot / (na * nb)
