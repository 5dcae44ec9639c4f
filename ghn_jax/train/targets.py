"""Running target networks inside meta-training and evaluation: loss, logits and parameter gradients.

Back-ends, same results:
  * ``per_op`` (default when available): :mod:`ghn_jax.train.executor` runs each op through a jitted function
    cached by op signature, so a never-seen architecture reuses compiled code. Each op keeps its inputs, k x k
    conv and attention outputs and norm statistics for the backward pass and redoes the rest, depthwise and 1x1
    convs included (``executor.KEPT_NAMES``);
  * ``per_op_keep_1x1``: the same, also keeping 1x1 convs' outputs (3-7% faster steps, ~0.4 GB more memory);
  * ``per_op_keep_all``: the same, keeping every intermediate (more memory, no recomputation);
  * ``per_op_remat``: the same, keeping only each op's inputs (least memory, convolutions run twice);
  * ``whole_net``: one ``jax.jit`` per architecture (simple, but compiles every new architecture).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import optax

#: per-op back-end -> what each op keeps for its backward pass (``executor.REMAT_MODES``)
PER_OP_REMAT = {'per_op': 'conv_outputs', 'per_op_keep_1x1': 'all_conv_outputs', 'per_op_keep_all': 'none',
                'per_op_remat': 'full'}
BACKENDS = (*PER_OP_REMAT, 'whole_net')
BACKEND = {'name': 'per_op', 'residual_budget_gb': 0.0}


def set_backend(name: str, residual_budget_gb: float = 0.0) -> None:
    """Choose one of ``BACKENDS`` to execute target networks. A per-op back-end with ``residual_budget_gb`` > 0 holds
    at most that much of what each net's ops compute for its backward pass; past it, the earliest ops run their
    forward again in the backward pass (``executor.ResidualBudget``)."""
    if name not in BACKENDS:
        raise ValueError(f'unknown target-net backend {name!r}; choose one of {BACKENDS}')
    if residual_budget_gb < 0:
        raise ValueError(f'residual_budget_gb must be >= 0 (0: no cap), got {residual_budget_gb}')
    BACKEND.update(name=name, residual_budget_gb=float(residual_budget_gb))


def _executor():
    if BACKEND['name'] == 'whole_net':
        return None
    try:
        from ghn_jax.train import executor
    except ImportError:
        return None
    return executor


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean (label-smoothed) cross-entropy, as the reference's CIFAR-10 / ImageNet losses."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing) \
        if label_smoothing else jax.nn.one_hot(labels, logits.shape[-1])
    return optax.softmax_cross_entropy(logits, targets).mean()


@functools.lru_cache(maxsize=32)
def _whole_net_fns(module: nn.Module, label_smoothing: float):
    def loss_fn(params, x, y):
        logits = module.apply({'params': params}, x)
        return cross_entropy(logits, y, label_smoothing), logits
    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True)), jax.jit(module.apply)


def net_loss_and_grads(module: nn.Module, params: Any, x: jax.Array, y: jax.Array,
                       label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array, Any]:
    """(mean loss, logits, d loss / d params) of ``module`` with ``params`` on one batch."""
    ex = _executor()
    if ex is not None:
        budget = BACKEND['residual_budget_gb']
        return ex.loss_and_grads(module, params, x, y, loss_fn=functools.partial(
            cross_entropy, label_smoothing=label_smoothing), remat=PER_OP_REMAT[BACKEND['name']],
            max_residual_bytes=budget * 2**30 if budget else None)
    (loss, logits), grads = _whole_net_fns(module, float(label_smoothing))[0](params, x, y)
    return loss, logits, grads


def net_logits(module: nn.Module, params: Any, x: jax.Array) -> jax.Array:
    """Forward pass of ``module`` (differentiable, also under ``jax.jvp``)."""
    ex = _executor()
    if ex is not None and hasattr(ex, 'forward'):
        return ex.forward(module, params, x)
    return _whole_net_fns(module, 0.0)[1]({'params': params}, x)
