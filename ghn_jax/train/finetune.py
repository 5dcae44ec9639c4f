"""Train or fine-tune any Flax classifier with backprop or forward gradients.

`train_classifier(module, params, train_data, config)` runs plain supervised
training of `module.apply({'params': p}, x) -> logits` with softmax
cross-entropy. The gradient source is a config switch:

* 'bp': `jax.value_and_grad` (backprop), the baseline;
* 'fg': weight-perturbed forward gradients (`forward_grad.value_and_fwd_grad`);
* 'fg_local': activity-perturbed forward gradients with local losses
  (`local_losses.local_fg_grad`); needs a `LocalLossNet`, whose missing local
  heads (e.g. for GHN-predicted parameters) are initialised here.

It is used for fine-tuning GHN-predicted networks and for SGD baselines, and
by benchmarks/forward_grad.py. The history records the training wall-clock
(evaluation excluded) for time-to-accuracy comparisons.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ghn_jax.train import data as data_lib
from ghn_jax.train import forward_grad
from ghn_jax.train import local_losses

PyTree = Any
Dataset = tuple[np.ndarray, np.ndarray]

GRADS = ("bp", "fg", "fg_local")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of `train_classifier` (a ConfigDict or dict with these keys also works)."""

    # Gradient source: 'bp' | 'fg' | 'fg_local'.
    grad: str = "bp"
    # Optimiser: 'sgd' | 'momentum' | 'adam'.
    optimizer: str = "sgd"
    learning_rate: float = 0.05
    # Schedule: 'constant' | 'cosine' | 'exp_decay' (eta_0 exp(-lr_decay t), the FG paper's).
    lr_schedule: str = "constant"
    lr_decay: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    # Clip the gradient to this global norm before the optimiser (the reference's SGD training clips at 5).
    grad_clip_norm: float | None = None
    num_steps: int = 1000
    batch_size: int = 64
    seed: int = 0
    # Evaluate on the test data every `eval_every` steps (0: only at the end).
    eval_every: int = 0
    eval_batch_size: int = 1000
    # Training loss is averaged and recorded every `log_every` steps.
    log_every: int = 50
    # Forward-gradient options ('fg' uses the first five, 'fg_local' distribution/generator/groups/patches).
    num_tangents: int = 1
    distribution: str = "rademacher"  # or "gaussian", "rank1" (the cheapest step for dense and conv layers)
    reduction: str = "mean"
    clip: float | None = None
    generator: str = "hash"
    num_groups: int = 1
    num_patches: int = 1
    # Data: per-channel normalisation (None: none) and CIFAR-style augmentation.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: bool = False

    @classmethod
    def from_any(cls, config: "TrainConfig | Mapping[str, Any] | None") -> "TrainConfig":
        """Accepts a TrainConfig, a mapping (e.g. ml_collections.ConfigDict) or None."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        values = dict(config.items()) if hasattr(config, "items") else dict(config)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown TrainConfig fields: {sorted(unknown)}")
        for name in ("mean", "std"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Config -> optax optimiser (with the chosen schedule, decoupled weight decay and gradient clipping)."""
    if config.lr_schedule == "constant":
        lr: float | optax.Schedule = config.learning_rate
    elif config.lr_schedule == "cosine":
        lr = optax.cosine_decay_schedule(config.learning_rate, max(config.num_steps, 1))
    elif config.lr_schedule == "exp_decay":
        lr = forward_grad.exp_decay_schedule(config.learning_rate, config.lr_decay)
    else:
        raise ValueError(f"Unsupported lr_schedule: {config.lr_schedule!r}")
    if config.optimizer == "sgd":
        opt = optax.sgd(lr)
    elif config.optimizer == "momentum":
        opt = optax.sgd(lr, momentum=config.momentum)
    elif config.optimizer == "adam":
        opt = optax.adam(lr)
    else:
        raise ValueError(f"Unsupported optimizer: {config.optimizer!r}")
    if config.weight_decay:
        opt = optax.chain(optax.add_decayed_weights(config.weight_decay), opt)
    if config.grad_clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
    return opt


def classification_loss(module: nn.Module) -> Callable[[PyTree, jax.Array, jax.Array], jax.Array]:
    """Mean softmax cross-entropy of `module.apply({'params': p}, x)`."""

    def loss_fn(params, x, y):
        logits = module.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss_fn


def make_step(module: nn.Module, config: TrainConfig, optimizer: optax.GradientTransformation) -> Callable:
    """Pure jitted step `(params, opt_state, key, x, y) -> (params, opt_state, loss)` for `config.grad`."""
    if config.grad == "bp":
        return forward_grad.make_train_step(classification_loss(module), optimizer, grad="bp")
    if config.grad == "fg":
        return forward_grad.make_train_step(
            classification_loss(module),
            optimizer,
            grad="fg",
            num_tangents=config.num_tangents,
            distribution=config.distribution,
            reduction=config.reduction,
            clip=config.clip,
            generator=config.generator,
        )
    if config.grad == "fg_local":
        if not isinstance(module, local_losses.LocalLossNet):
            raise ValueError("grad='fg_local' needs a local_losses.LocalLossNet")
        return local_losses.make_local_train_step(
            module,
            optimizer,
            distribution=config.distribution,
            generator=config.generator,
            num_groups=config.num_groups,
            num_patches=config.num_patches,
        )
    raise ValueError(f"Unsupported grad: {config.grad!r}; use one of {GRADS}")


def _with_heads(module: local_losses.LocalLossNet, params: PyTree, x: np.ndarray, key: jax.Array) -> PyTree:
    """Adds freshly initialised local heads to body-only parameters (e.g. predicted by a GHN)."""
    fresh = module.init_with_heads(key, jnp.asarray(x))
    merged = dict(fresh)
    merged.update(params)
    return merged


def evaluate(
    module: nn.Module,
    params: PyTree,
    test_data: Dataset,
    *,
    batch_size: int = 1000,
    mean: Any = None,
    std: Any = None,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy on a whole dataset (the last batch may be smaller)."""
    images, labels = test_data

    @jax.jit
    def batch_metrics(p, x, y):
        logits = module.apply({"params": p}, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
        return loss, (jnp.argmax(logits, -1) == y).sum()

    total_loss, correct = 0.0, 0
    it = data_lib.batch_iterator(
        images, labels, min(batch_size, len(images)), shuffle=False, drop_remainder=False, num_epochs=1, mean=mean, std=std
    )
    for x, y in it:
        loss, right = batch_metrics(params, x, y)
        total_loss += float(loss)
        correct += int(right)
    n = len(images)
    return {"loss": total_loss / n, "accuracy": correct / n}


def train_classifier(
    module: nn.Module,
    params: PyTree,
    train_data: Dataset,
    config: TrainConfig | Mapping[str, Any] | None = None,
    *,
    test_data: Dataset | None = None,
    step_fn: Callable | None = None,
    progress: str | None = None,
) -> tuple[PyTree, dict[str, list]]:
    """Trains `params` of a Flax classifier on (images, labels) with BP or forward gradients.

    Args:
      module: Flax classifier, `module.apply({'params': p}, x) -> logits`.
      params: initial parameters (random, pretrained or GHN-predicted).
      train_data, test_data: (images NHWC float32, labels int32) arrays.
      config: `TrainConfig` or mapping with its fields.
      step_fn: optional prebuilt `make_step(...)` result (reused across runs to
        avoid recompiling).
      progress: a description to show a progress bar with ETA under (None: no bar); the bar waits for every
        tenth step, so that it shows steps done, not steps queued.

    Returns:
      (params, history). history['train'] holds {step, time, loss} every
      `log_every` steps; history['eval'] holds {step, time, loss, accuracy};
      history['diverged'] is True if the loss became non-finite (training
      stops then). Times are seconds of training, evaluation excluded, and
      include the first step's compilation.
    """
    config = TrainConfig.from_any(config)
    images, labels = train_data
    key = jax.random.key(config.seed)
    init_key, step_key = jax.random.split(key)
    if config.grad == "fg_local":
        params = _with_heads(module, params, images[:1], init_key)
    optimizer = make_optimizer(config)
    step = step_fn or make_step(module, config, optimizer)
    opt_state = optimizer.init(params)
    batches = data_lib.batch_iterator(
        images, labels, config.batch_size, seed=config.seed, mean=config.mean, std=config.std, augment=config.augment
    )
    history: dict[str, Any] = {"train": [], "eval": [], "diverged": False}
    eval_params = (lambda p: local_losses.body_params(p)) if config.grad == "fg_local" else (lambda p: p)

    def run_eval(step_i: int, elapsed: float) -> None:
        if test_data is None:
            return
        metrics = evaluate(
            module, eval_params(params), test_data, batch_size=config.eval_batch_size, mean=config.mean, std=config.std
        )
        history["eval"].append({"step": step_i, "time": elapsed, **metrics})

    elapsed, pending = 0.0, []
    bar = tqdm(total=config.num_steps, desc=progress, leave=False, disable=progress is None)
    run_eval(0, 0.0)
    t0 = time.perf_counter()
    for i in range(1, config.num_steps + 1):
        x, y = next(batches)
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(step_key, i), x, y)
        pending.append(loss)
        if not bar.disable and (i % 10 == 0 or i == config.num_steps):
            loss.block_until_ready()
            bar.update(i - bar.n)
        log_now = i % config.log_every == 0 or i == config.num_steps
        eval_now = config.eval_every and i % config.eval_every == 0 and i != config.num_steps
        if log_now or eval_now:
            mean_loss = float(jnp.mean(jnp.stack(pending)))  # Blocks: the timing is exact here.
            elapsed += time.perf_counter() - t0
            pending = []
            history["train"].append({"step": i, "time": elapsed, "loss": mean_loss})
            if not math.isfinite(mean_loss):
                history["diverged"] = True
                break
            if eval_now:
                run_eval(i, elapsed)
            t0 = time.perf_counter()
    bar.close()
    run_eval(history["train"][-1]["step"] if history["train"] else 0, elapsed)
    return params, history
