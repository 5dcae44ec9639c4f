"""Per-op execution of target networks: never-seen architectures reuse compiled code.

Meta-training runs thousands of freshly sampled networks, each run once. Compiling a whole network costs 3 to
17 s on a 2-core CPU, far more than running it (0.3 to 1.7 s), so here a network is run as a Python walk over its
*ops*: every call of an op module (a DARTS op, a conv, a dense layer, a norm, ...) is replaced by one jitted
function whose compiled executable is cached by the op's signature (module hyper-parameters, parameter shapes,
input shapes). The glue between ops (sums, concats, pools, ReLUs) runs op-by-op in eager mode, where JAX caches one
executable per primitive and shape. ``jax.value_and_grad`` differentiates straight through this composition: the
linearised and transposed version of each jitted op is cached alongside it. After a few hundred architectures
almost every signature has been seen (../shared/docs/target_net_execution.md measures the saturation), and a
step compiles nothing.

The interception is generic (``flax.linen.intercept_methods``), so any Flax module built from the registered op
types runs this way; :func:`register_op` adds more types.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from typing import Any, Callable

import flax.linen as nn
import jax

from ghn_jax.nets import deepnets, layers

#: Module types executed as one cached jitted function per signature. Compound DARTS ops come first; the Flax
#: layers make any network built from them (zoo nets, stems, classifiers, user modules) run per layer.
OP_TYPES: list[type] = [deepnets.ReLUConvBN, deepnets.DilConv, deepnets.SepConv, deepnets.FactorizedReduce,
                        deepnets.ChannelSE, deepnets.Transformer, nn.Conv, nn.Dense, nn.LayerNorm, nn.BatchNorm,
                        layers.BatchNorm, layers.PosEnc]


def register_op(cls: type) -> type:
    """Run every call of modules of type ``cls`` as one cached jitted op (usable as a class decorator)."""
    if cls not in OP_TYPES:
        OP_TYPES.insert(0, cls)
    return cls


_TRACING = threading.local()


@dataclasses.dataclass
class Stats:
    """Counters for tests and benchmarks: op calls and distinct traced op signatures."""
    calls: int = 0
    traces: int = 0


STATS = Stats()


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run_op(module: nn.Module, remat: bool, params: Any, args: tuple) -> Any:
    STATS.traces += 1
    _TRACING.active = True  # ops nested in this op are traced into it, not intercepted again
    try:
        apply = lambda p, a: module.apply({'params': p}, *a)
        # remat: the backward pass keeps only the op's inputs and recomputes its insides
        return (jax.checkpoint(apply) if remat else apply)(params, args)
    finally:
        _TRACING.active = False


def _is_array(a: Any) -> bool:
    return isinstance(a, (jax.Array, jax.core.Tracer))


def _intercept(remat: bool, next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
    module = context.module
    if (getattr(_TRACING, 'active', False) or context.method_name != '__call__' or module.parent is None or kwargs
            or not isinstance(module, tuple(OP_TYPES)) or not all(_is_array(a) for a in args)):
        return next_fun(*args, **kwargs)
    if module.is_mutable_collection('params'):
        return next_fun(*args, **kwargs)  # initialisation: let Flax create the parameters
    STATS.calls += 1
    params = module.variables.get('params', {})
    return _run_op(module.clone(parent=None, name=None), remat, params, tuple(args))


@contextlib.contextmanager
def per_op(remat: bool = False):
    """Context in which every registered op module call runs as a cached jitted op.

    With ``remat`` each op saves only its inputs for the backward pass and recomputes the rest (``jax.checkpoint``):
    less memory held between a net's forward and backward passes, for extra forward compute.
    """
    with nn.intercept_methods(functools.partial(_intercept, remat)):
        yield


def forward(module: nn.Module, params: Any, x: jax.Array, remat: bool = False) -> jax.Array:
    """Logits of ``module`` with ``params`` (differentiable, also under ``jax.jvp``)."""
    with per_op(remat):
        return module.apply({'params': params}, x)


def loss_and_grads(module: nn.Module, params: Any, x: jax.Array, y: jax.Array,
                   loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
                   remat: bool = False) -> tuple[jax.Array, jax.Array, Any]:
    """(loss, logits, d loss / d params) of one network on one batch, run op by op (``remat``: see ``per_op``)."""
    def objective(p):
        logits = forward(module, p, x, remat)
        return loss_fn(logits, y), logits
    (loss, logits), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return loss, logits, grads


def clear_cache() -> None:
    """Drop every cached op executable (they cost a few MB each)."""
    _run_op.clear_cache()
    jax.clear_caches()
