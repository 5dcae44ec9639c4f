"""Per-op execution of target networks: never-seen architectures reuse compiled code.

Meta-training runs thousands of freshly sampled networks, each run once. Compiling a whole network costs 3 to
17 s on a 2-core CPU, far more than running it (0.3 to 1.7 s), so here a network is run as a Python walk over its
*ops*: every call of an op module (a DARTS op, a conv, a dense layer, a norm, ...) is replaced by one jitted
function whose compiled executable is cached by the op's signature (module hyper-parameters, parameter shapes,
input shapes). The glue between ops (sums, concats, pools, ReLUs) runs op-by-op in eager mode, where JAX caches one
executable per primitive and shape. ``jax.value_and_grad`` differentiates straight through this composition. For
reverse mode (:func:`loss_and_grads`) each op is a ``jax.custom_vjp`` over two more cached executables: a forward
that returns the op's output and the arrays its backward pass needs, and that backward pass. So what an op keeps
between the passes is explicit (:data:`REMAT_MODES`), and JAX never re-derives an op's backward pass at run time.
After a few hundred architectures almost every signature has been seen (../shared/docs/target_net_execution.md
measures the saturation), and a step compiles nothing. The executables are held in :data:`OP_EXECUTABLES`, least
recently used first, so that a long run near the kernel's limit on memory mappings drops the coldest only.

The interception is generic (``flax.linen.intercept_methods``), so any Flax module built from the registered op
types runs this way; :func:`register_op` adds more types.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import itertools
import math
import threading
from typing import Any, Callable

import flax.linen as nn
import jax

from ghn_jax import host_memory
from ghn_jax.nets import deepnets, kernels, layers

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


#: What an op keeps for the backward pass. ``'none'``: every intermediate its gradient needs; ``'full'``: only its
#: inputs, everything inside recomputed; ``'conv_outputs'``: its inputs and the :data:`KEPT_NAMES` arrays (outputs
#: of dense k x k convolutions and attention, batch-norm statistics); the element-wise work, depthwise and 1x1 convs
#: and dense layers in between are recomputed (no k x k convolution, attention or reduction runs twice);
#: ``'all_conv_outputs'``: the same and the 1x1 convs' outputs (3-7% faster, ~0.4 GB more at the peak of the
#: benchmark replay, docs/meta_training.md).
REMAT_MODES = ('none', 'full', 'conv_outputs', 'all_conv_outputs')
KEPT_NAMES = (layers.CONV_OUTPUT, layers.NORM_STATISTICS, kernels.ATTENTION_OUTPUT)
#: Remat mode -> the checkpoint names of what its ops keep besides their inputs ('full': none; 'none': everything).
SAVED_NAMES = {'conv_outputs': KEPT_NAMES, 'all_conv_outputs': (*KEPT_NAMES, layers.POINTWISE_OUTPUT)}


def _rematerialised(apply: Callable, remat: str) -> Callable:
    if remat == 'none':
        return apply
    names = SAVED_NAMES.get(remat)
    policy = None if names is None else jax.checkpoint_policies.save_only_these_names(*names)
    return jax.checkpoint(apply, policy=policy)


@contextlib.contextmanager
def _inside_op():
    _TRACING.active = True  # ops nested in this op are traced into it, not intercepted again
    try:
        yield
    finally:
        _TRACING.active = False


def _apply_fn(module: nn.Module) -> Callable:
    return lambda p, a: module.apply({'params': p}, *a)


class ExecutableCache:
    """Op executables compiled ahead of time, keyed by the call's signature, least recently used first.

    jax.jit holds its executables in caches that can only be emptied whole. On XLA:CPU every executable holds
    about three memory mappings per fused kernel (20-60 per op), so a long meta-training run reaches the kernel's
    limit on mappings (:func:`ghn_jax.host_memory.keep_under_map_limit`) every ~150 steps; emptying every cache
    there cost ~28 s of recompiles while a step's working set came back. Held here, the coldest go first
    (:meth:`evict`); once a run's working set outgrows the default limit (~2,000 Fashion-MNIST steps) no order
    helps, and the limit itself must be raised. Calls under a transformation (tracer arguments: ``jax.jvp``, an
    outer ``jax.jit``) take the jitted function's own path."""

    def __init__(self):
        self._entries: collections.OrderedDict[tuple, Any] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, fn: Any, num_static: int, *args: Any) -> Any:
        """``fn(*args)`` for a ``jax.jit`` function whose first ``num_static`` arguments are static."""
        static, dynamic = args[:num_static], args[num_static:]
        leaves, tree = jax.tree_util.tree_flatten(dynamic)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
            return fn(*args)
        key = (fn, static, tree, tuple((jax.typeof(leaf), getattr(leaf, 'sharding', None)) for leaf in leaves))
        compiled = self._entries.pop(key, None)
        if compiled is None:
            compiled = fn.lower(*args).compile()
        self._entries[key] = compiled   # now the most recently used
        return compiled(*dynamic)

    def evict(self, fraction: float) -> int:
        """Drop the least recently used ``fraction`` of the executables (at least one); returns how many went.
        jax's lowering caches, which reach the executables of the computations they hold, are emptied too."""
        count = min(len(self._entries), math.ceil(fraction * len(self._entries)))
        for _ in range(count):
            self._entries.popitem(last=False)
        host_memory.clear_lowering_caches()
        return count

    def clear(self) -> None:
        self._entries.clear()


#: The executables of every op call below; near the memory-map limit its coldest go before anything else.
OP_EXECUTABLES = ExecutableCache()
host_memory.EVICTORS.append(OP_EXECUTABLES.evict)


@functools.partial(jax.jit, static_argnums=0)
def _run_op(module: nn.Module, params: Any, args: tuple) -> Any:
    """One op, differentiable by JAX in both modes (forward passes, forward gradients)."""
    STATS.traces += 1
    with _inside_op():
        return _apply_fn(module)(params, args)


#: Signature of an op call -> (tree structure of its pullback, for each of its arrays the index of the op's own
#: param or input leaf it is, or None for an array the forward computed), recorded when the forward is traced.
_PULLBACK_LAYOUTS: dict[tuple, tuple[Any, tuple[int | None, ...]]] = {}
_OP_CALLS = itertools.count()


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _op_forward(module: nn.Module, remat: str, signature: tuple, params: Any, args: tuple) -> tuple[Any, list]:
    """The op's output and the arrays its backward pass needs (what ``remat`` keeps), as one executable.

    Only arrays the op computes are returned: its params and inputs among the residuals are passed again to the
    backward pass by the caller, which holds them anyway. Returning them would copy each (XLA does not alias
    outputs to inputs), and an input read by several ops (a cell state) would be held once per op."""
    STATS.traces += 1
    with _inside_op():
        out, pullback = jax.vjp(_rematerialised(_apply_fn(module), remat), params, args)
    residuals, tree = jax.tree_util.tree_flatten(pullback)
    own = jax.tree_util.tree_leaves((params, args))
    from_inputs = tuple(next((i for i, leaf in enumerate(own) if leaf is r), None) for r in residuals)
    _PULLBACK_LAYOUTS[signature] = (tree, from_inputs)
    return out, [r for r, i in zip(residuals, from_inputs) if i is None]


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _op_backward(pullback_tree: Any, from_inputs: tuple, wanted: tuple[bool, ...], computed: list, own: list,
                 cotangent: Any) -> list:
    """Cotangents of the op's ``wanted`` param and input leaves (in leaf order), from its residuals and output
    cotangent, as one executable. ``computed`` are the residuals the forward returned, ``own`` the op's param and
    input leaves. Cotangents nobody wants (the images' under the first conv) are not computed at all."""
    computed = iter(computed)
    residuals = [next(computed) if i is None else own[i] for i in from_inputs]
    cotangents = jax.tree_util.tree_leaves(jax.tree_util.tree_unflatten(pullback_tree, residuals)(cotangent))
    return [c for c, keep in zip(cotangents, wanted) if keep]


class ResidualBudget:
    """Arrays the ops of one network computed for its backward pass, held up to ``max_bytes``.

    Past the budget the earliest ops' arrays are dropped, and in the backward pass those ops run their forward
    executable again from their inputs (held anyway) before their backward executable: nothing new compiles, and
    only networks over the budget pay. Earliest first, because in CNNs the early, high-resolution ops hold the most
    bytes per FLOP recomputed (each reduction halves the map's bytes at about equal conv FLOPs).
    """

    def __init__(self, max_bytes: float):
        self.max_bytes = max_bytes
        # op call -> (arrays, their bytes), in call order
        self.held: collections.OrderedDict[int, tuple[list, int]] = collections.OrderedDict()
        self.bytes = 0
        self.recomputed = 0

    def hold(self, key: int, arrays: list) -> None:
        nbytes = sum(a.nbytes for a in arrays)
        self.held[key] = (arrays, nbytes)
        self.bytes += nbytes
        while self.bytes > self.max_bytes and self.held:
            self.bytes -= self.held.popitem(last=False)[1][1]

    def take(self, key: int) -> list | None:
        """The arrays held for op call ``key``, or None when they were dropped."""
        if key not in self.held:
            self.recomputed += 1
            return None
        arrays, nbytes = self.held.pop(key)
        self.bytes -= nbytes
        return arrays


def _run_op_with_vjp(module: nn.Module, remat: str, params: Any, args: tuple,
                     budget: ResidualBudget | None = None) -> Any:
    """One op whose reverse-mode derivative runs the executables above: JAX only records the op's residuals and
    its backward executable, instead of partially evaluating and transposing the op's jaxpr at every call (which
    is slow to warm up, and with ``jax.checkpoint`` inside the op kept recompiling as JAX's caches evicted).
    With a ``budget``, what the op computed for its backward pass is held there instead (and may be dropped)."""
    leaves, tree = jax.tree_util.tree_flatten((params, args))
    signature = (module, remat, tree, tuple((a.shape, a.dtype) for a in leaves))
    # Only tracers can carry a derivative; a concrete array (the input images) needs no cotangent.
    wanted = tuple(isinstance(a, jax.core.Tracer) for a in leaves)

    @jax.custom_vjp
    def op(p, a):
        return _run_op(module, p, a)

    layout, key = [], next(_OP_CALLS)

    def op_fwd(p, a):
        out, computed = OP_EXECUTABLES(_op_forward, 3, module, remat, signature, p, a)
        layout.append(_PULLBACK_LAYOUTS[signature])  # that of the executable that just ran
        if budget is not None:
            budget.hold(key, computed)
            computed = None
        return out, (computed, p, a)

    def op_bwd(residuals, cotangent):
        computed, p, a = residuals
        if budget is not None:
            computed = budget.take(key)
            if computed is None:
                computed = OP_EXECUTABLES(_op_forward, 3, module, remat, signature, p, a)[1]
        cotangents = iter(OP_EXECUTABLES(_op_backward, 3, *layout[0], wanted, computed,
                                         jax.tree_util.tree_leaves((p, a)), cotangent))
        return jax.tree_util.tree_unflatten(tree, [next(cotangents) if keep else None for keep in wanted])

    op.defvjp(op_fwd, op_bwd)
    return op(params, args)


def _is_array(a: Any) -> bool:
    return isinstance(a, (jax.Array, jax.core.Tracer))


def _intercept(remat: str | None, budget: ResidualBudget | None, next_fun: Callable, args: tuple, kwargs: dict,
               context: Any) -> Any:
    module = context.module
    if (getattr(_TRACING, 'active', False) or context.method_name != '__call__' or module.parent is None or kwargs
            or not isinstance(module, tuple(OP_TYPES)) or not all(_is_array(a) for a in args)):
        return next_fun(*args, **kwargs)
    if module.is_mutable_collection('params'):
        return next_fun(*args, **kwargs)  # initialisation: let Flax create the parameters
    STATS.calls += 1
    params = module.variables.get('params', {})
    op = module.clone(parent=None, name=None)
    if remat is None:
        return OP_EXECUTABLES(_run_op, 1, op, params, tuple(args))
    return _run_op_with_vjp(op, remat, params, tuple(args), budget)


@contextlib.contextmanager
def per_op(remat: str | None = None, budget: ResidualBudget | None = None):
    """Context in which every registered op module call runs as a cached jitted op.

    With ``remat`` (one of ``REMAT_MODES``) each op's reverse-mode derivative runs as two cached executables, a
    forward that also returns what ``remat`` keeps for the backward pass and the backward pass itself; ``remat``
    trades that memory for recomputation. Without it (``None``), JAX differentiates the ops in either mode (as
    forward gradients need). A ``budget`` caps what the ops keep, see :class:`ResidualBudget`.
    """
    if remat is not None and remat not in REMAT_MODES:
        raise ValueError(f'unknown remat mode {remat!r}; choose one of {REMAT_MODES}')
    with nn.intercept_methods(functools.partial(_intercept, remat, budget)):
        yield


def forward(module: nn.Module, params: Any, x: jax.Array, remat: str | None = None,
            budget: ResidualBudget | None = None) -> jax.Array:
    """Logits of ``module`` with ``params`` (differentiable, also under ``jax.jvp`` when ``remat`` is None)."""
    with per_op(remat, budget):
        return module.apply({'params': params}, x)


def loss_and_grads(module: nn.Module, params: Any, x: jax.Array, y: jax.Array,
                   loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
                   remat: str = 'none', max_residual_bytes: float | None = None
                   ) -> tuple[jax.Array, jax.Array, Any]:
    """(loss, logits, d loss / d params) of one network on one batch, run op by op (``remat``: see ``per_op``).
    ``max_residual_bytes`` caps what its ops hold between the passes (:class:`ResidualBudget`)."""
    budget = None if max_residual_bytes is None else ResidualBudget(max_residual_bytes)

    def objective(p):
        logits = forward(module, p, x, remat, budget)
        return loss_fn(logits, y), logits
    (loss, logits), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return loss, logits, grads


def clear_cache() -> None:
    """Drop every cached op executable (they cost a few MB each)."""
    for fn in (_run_op, _op_forward, _op_backward):
        fn.clear_cache()
    OP_EXECUTABLES.clear()
    _PULLBACK_LAYOUTS.clear()
    jax.clear_caches()
