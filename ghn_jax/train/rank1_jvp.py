"""`jax.jvp` for tangents whose weight leaves are rank one, without materialising them.

With a rank-one tangent V = a (x) b for a weight W (a over every axis of W but
the last, b over the last), the tangent term of a dense layer, x @ V, costs as
much as the forward product when `jax.jvp` is handed V as an array: XLA does
not reassociate it. Written as (x @ a) b^T it costs O(batch (n + m)) instead of
O(batch n m); a convolution likewise becomes conv(x, a) b, a conv with one
output channel. `jvp` evaluates the jaxpr of the function itself, keeping such
tangents as factors (`Rank1`) until they meet a `dot_general` or
`conv_general_dilated` as its right operand; every other primitive (and any
layout it does not recognise) gets the materialised tangent and its ordinary
JVP rule, so the result always equals `jax.jvp` on the dense tangent.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core

PyTree = Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Rank1:
    """The tangent a[..., None] * b of a leaf of shape a.shape + b.shape (b one-dimensional)."""

    a: jax.Array
    b: jax.Array

    def dense(self) -> jax.Array:
        return self.a[..., None] * self.b


def dense(t: Rank1 | jax.Array) -> jax.Array:
    """The materialised tangent (arrays pass through)."""
    return t.dense() if isinstance(t, Rank1) else t


def _bind(eqn: core.JaxprEqn, args: list) -> list:
    out = eqn.primitive.bind(*args, **eqn.primitive.get_bind_params(eqn.params))
    return list(out) if eqn.primitive.multiple_results else [out]


def _generic_jvp(eqn: core.JaxprEqn, xs: list, ts: list) -> tuple[list, list]:
    """The primitive's own JVP rule, with materialised tangents for the inputs that have one."""
    moving = [i for i, t in enumerate(ts) if t is not None]

    def f(*m):
        args = list(xs)
        for i, v in zip(moving, m):
            args[i] = v
        return _bind(eqn, args)

    outs, out_ts = jax.jvp(f, tuple(xs[i] for i in moving), tuple(dense(ts[i]) for i in moving))
    return outs, list(out_ts)


def _rank1_rhs_term(eqn: core.JaxprEqn, x: jax.Array, w: jax.Array, t: Rank1) -> jax.Array | None:
    """x (op) (a (x) b) computed through the factors, or None if the layout is not the recognised one."""
    p = eqn.params
    if eqn.primitive is lax.dot_general_p:
        (lhs_c, rhs_c), (lhs_b, rhs_b) = p["dimension_numbers"]
        if rhs_b or tuple(rhs_c) != tuple(range(w.ndim - 1)):
            return None
        xa = lax.dot_general(x, t.a, ((lhs_c, rhs_c), ((), ())), precision=p["precision"],
                             preferred_element_type=p["preferred_element_type"])
        return xa[..., None] * t.b
    if eqn.primitive is lax.conv_general_dilated_p:
        dn = p["dimension_numbers"]
        if p["feature_group_count"] != 1 or p["batch_group_count"] != 1 or dn.rhs_spec[0] != w.ndim - 1:
            return None
        xa = _bind(eqn, [x, t.a[..., None]])[0]  # the same conv with one output channel
        shape = [1] * xa.ndim
        shape[dn.out_spec[1]] = t.b.shape[0]
        return xa * t.b.reshape(shape)
    return None


def _eqn_jvp(eqn: core.JaxprEqn, xs: list, ts: list) -> tuple[list, list]:
    if not any(isinstance(t, Rank1) for t in ts):
        return _generic_jvp(eqn, xs, ts)
    subjaxpr = eqn.params.get("jaxpr") if eqn.primitive.name in ("pjit", "jit", "closed_call") else None
    if isinstance(subjaxpr, core.ClosedJaxpr):
        return _eval(subjaxpr.jaxpr, subjaxpr.consts, xs, ts)
    if len(xs) == 2 and isinstance(ts[1], Rank1) and not isinstance(ts[0], Rank1):
        term = _rank1_rhs_term(eqn, xs[0], xs[1], ts[1])
        if term is not None:
            if ts[0] is None:
                return _bind(eqn, xs), [term]
            out, (lhs_term,) = _generic_jvp(eqn, xs, [ts[0], None])
            return out, [lhs_term + term]
    return _generic_jvp(eqn, xs, [dense(t) for t in ts])


def _eval(jaxpr: core.Jaxpr, consts: list, args: list, tangents: list) -> tuple[list, list]:
    """Evaluates `jaxpr` on primals and tangents (None: zero, an array, or `Rank1`)."""
    primal: dict = {}
    tangent: dict = {}

    def read(v):
        return v.val if isinstance(v, core.Literal) else primal[v]

    def read_t(v):
        return None if isinstance(v, core.Literal) else tangent.get(v)

    for v, c in zip(jaxpr.constvars, consts):
        primal[v] = c
    for v, x, t in zip(jaxpr.invars, args, tangents):
        primal[v], tangent[v] = x, t
    for eqn in jaxpr.eqns:
        xs, ts = [read(v) for v in eqn.invars], [read_t(v) for v in eqn.invars]
        if all(t is None for t in ts):
            outs, out_ts = _bind(eqn, xs), [None] * len(eqn.outvars)
        else:
            outs, out_ts = _eqn_jvp(eqn, xs, ts)
        for v, x, t in zip(eqn.outvars, outs, out_ts):
            primal[v], tangent[v] = x, t
    return [read(v) for v in jaxpr.outvars], [read_t(v) for v in jaxpr.outvars]


def jvp(fun: Callable[..., Any], primals: tuple, tangents: tuple) -> tuple[PyTree, PyTree]:
    """Like `jax.jvp(fun, primals, tangents)`; tangent leaves may be `Rank1` factors.

    Tangents must have the structure of `primals`, with a `Rank1` (of the
    leaf's shape) or an array at each leaf. Call it under `jax.jit` (as
    `value_and_fwd_grad` users do): outside a trace it evaluates the jaxpr one
    primitive at a time.
    """
    flat_x, tree = jax.tree.flatten(tuple(primals))
    flat_t = tree.flatten_up_to(tuple(tangents))
    closed, out_shape = jax.make_jaxpr(lambda *xs: fun(*jax.tree.unflatten(tree, xs)), return_shape=True)(*flat_x)
    outs, out_ts = _eval(closed.jaxpr, closed.consts, flat_x, flat_t)
    out_ts = [jnp.zeros_like(o) if t is None else dense(t) for o, t in zip(outs, out_ts)]
    out_tree = jax.tree.structure(out_shape)
    return jax.tree.unflatten(out_tree, outs), jax.tree.unflatten(out_tree, out_ts)
