"""Meta-training a GHN on DeepNets-1M architectures (spec section 8): ``train_and_evaluate(config, workdir)``.

One meta-step: sample ``meta_batch_size`` architectures (deterministically from the step number), build their
graphs, predict all their parameters with one jitted GHN forward pass, run every net on the SAME image batch,
average the cross-entropies, and backpropagate into the GHN:

    GHN core (jit, one compile per budget) -> tiling (jit per layer shape) -> target nets (per-op jit)
        <- vjp <-                              <- vjp <-                      <- loss gradients

Nothing is compiled per architecture on the steady-state path. Images are sharded over the ``data`` axis of a
device mesh (data parallelism over the image batch); the GHN parameters are replicated. Everything that decides
a step (architectures, images, augmentation) is a function of (seed, step), so a resumed run continues exactly
where a killed one stopped.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Iterable, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from ghn_jax import compilation_cache, host_memory
from ghn_jax.graphs.graph import ArchGraph, build_graph
from ghn_jax.hypernet.batch import auto_budget, pack
from ghn_jax.hypernet.ghn import (HOST_OUTPUTS, GHN, GHNConfig, assemble, assemble_host, assemble_host_vjp,
                                  param_specs, to_pytree)
from ghn_jax.hypernet.predictor import GHN2, apply_ghn, init_params
from ghn_jax.hypernet.shape_encoder import ShapeIndexer
from ghn_jax.nets import deepnets_generator, from_arch_json
from ghn_jax.train import data as data_lib, targets
from ghn_jax.train.checkpointing import Checkpointer
from ghn_jax.train.metrics import MetricWriter, progress
from ghn_jax.train.targets import net_loss_and_grads


def ghn_config(config: ml_collections.ConfigDict) -> GHNConfig:
    g = config.ghn
    return GHNConfig(num_classes=config.data.num_classes, max_spatial=g.max_spatial, hid=g.hid,
                     hypernet=g.hypernet, ve=g.ve, layernorm=g.layernorm, weight_norm=g.weight_norm,
                     ve_cutoff=g.ve_cutoff)


# ------------------------------------------------------------------------------------------------------------------
# Data and architectures: pure functions of (seed, step)
# ------------------------------------------------------------------------------------------------------------------

def to_model_input(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Zero-pad (centred) or centre-crop NHWC images to ``size`` and repeat gray channels to ``channels``."""
    n, h, w, c = images.shape
    if h < size:
        p0, p1 = (size - h) // 2, size - h - (size - h) // 2
        images = np.pad(images, ((0, 0), (p0, p1), (p0, p1), (0, 0)))
    elif h > size:
        o = (h - size) // 2
        images = images[:, o:o + size, o:o + size]
    if c != channels:
        if c != 1:
            raise ValueError(f'cannot map {c} image channels to {channels}')
        images = np.repeat(images, channels, axis=-1)
    return images.astype(np.float32)


def downscale(images: np.ndarray, size: int) -> np.ndarray:
    """Average NHWC images over square blocks down to ``size`` x ``size`` (the low-resolution phase of training)."""
    n, h, w, c = images.shape
    if h % size or w % size:
        raise ValueError(f'cannot downscale {h}x{w} images to {size}x{size}: the side must divide theirs')
    return images.reshape(n, size, h // size, size, w // size, c).mean(axis=(2, 4))


@dataclasses.dataclass
class ImageData:
    """Normalised train / held-out / test images, already in the models' input format."""
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    augment: bool

    def batch(self, seed: int, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The image batch of ``step``: epoch-wise permutation (seeded by epoch), optional crop+flip."""
        images, labels = self.train
        per_epoch = len(images) // batch_size
        epoch, k = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(images))
        idx = order[k * batch_size:(k + 1) * batch_size]
        x = images[idx]
        if self.augment:
            x = data_lib.random_crop_flip(x, np.random.default_rng([seed, epoch, k]))
        return x, labels[idx]


def load_image_data(config: ml_collections.ConfigDict) -> ImageData:
    d = config.data
    images, labels = data_lib.load_dataset(d.name, 'train', d.data_dir, image_size=d.image_size,
                                           max_examples=d.max_train_examples)
    test = data_lib.load_dataset(d.name, 'test', d.data_dir, image_size=d.image_size)
    mean, std = data_lib.dataset_stats(d.name, images)
    prep = lambda x: (to_model_input((x - mean) / std, d.image_size, d.channels))
    n_val = int(len(images) * d.holdout_fraction)
    train = (prep(images[:len(images) - n_val]), labels[:len(images) - n_val].astype(np.int32))
    val = (prep(images[len(images) - n_val:]), labels[len(images) - n_val:].astype(np.int32)) if n_val else \
        (prep(test[0]), test[1].astype(np.int32))
    return ImageData(train, val, (prep(test[0]), test[1].astype(np.int32)), bool(d.augment))


def arch_description(config: ml_collections.ConfigDict, split: str, index: int) -> dict[str, Any]:
    """DeepNets-1M architecture ``index`` of ``split`` for the configured images, with optional size caps."""
    archs, data = config.archs, config.data
    d = deepnets_generator.sample(split, index, archs.seed, num_classes=data.num_classes,
                                  sample_width=archs.sample_width and split == 'train')
    d['input_size'] = [data.channels, data.image_size, data.image_size]
    args = d['network_args']
    if archs.max_cells:
        args['n_cells'] = min(args['n_cells'], archs.max_cells)
    if archs.max_channels:
        args['C'] = min(args['C'], archs.max_channels)
        args['fc_dim'] = min(args['fc_dim'], 4 * archs.max_channels)
    return d


def meta_batch_indices(step: int, attempt: int, meta_batch_size: int) -> list[int]:
    """Architecture indices of a step; ``attempt`` > 0 draws a fresh chunk when one is rejected (too many nodes)."""
    base = (step * 16 + attempt) * meta_batch_size
    return list(range(base, base + meta_batch_size))


# ------------------------------------------------------------------------------------------------------------------
# The meta-step
# ------------------------------------------------------------------------------------------------------------------

def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """The run's length: ``num_steps``, or ``epochs`` of ``steps_per_epoch`` when it is not positive."""
    return config.num_steps if config.num_steps > 0 else config.epochs * steps_per_epoch


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """``config.lr_schedule``: ``'step'``, the reference's x0.1 at each of ``lr_milestones`` (epochs), or
    ``'cosine'``, GHN-3's cosine decay from ``learning_rate`` to 0 over the run's steps."""
    kind = config.get('lr_schedule', 'step')
    if kind == 'step':
        boundaries = {int(m * steps_per_epoch): 0.1 for m in config.lr_milestones}
        return optax.piecewise_constant_schedule(config.learning_rate, boundaries)
    if kind == 'cosine':
        return optax.cosine_decay_schedule(config.learning_rate, total_steps(config, steps_per_epoch))
    raise ValueError(f"unknown lr_schedule {kind!r}: use 'step' or 'cosine'")


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam with coupled L2 (PyTorch ``weight_decay``), clipping before decay, and :func:`learning_rate_schedule`."""
    schedule = learning_rate_schedule(config, steps_per_epoch)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), optax.add_decayed_weights(config.weight_decay),
                       optax.scale_by_adam(), optax.scale_by_learning_rate(schedule))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(1, 2))
def apply_update(optimizer: optax.GradientTransformation, params, opt_state, grads):
    """One optimiser step, skipped (state unchanged) when the gradients are not finite."""
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
    grads = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, new_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
    return keep(new_params, params), keep(new_state, opt_state), optax.global_norm(grads), finite


@dataclasses.dataclass
class StepOutput:
    loss: float
    accuracy: float
    grads: Any
    n_nodes: int
    seconds: dict[str, float]


def takes_any_image_size(module: flax.linen.Module) -> bool:
    """Whether a net's parameters fit images of any size: not those of a DeepNets-1M net that flattens its last
    map into the classifier (``glob_avg=False``)."""
    return getattr(module, 'glob_avg', True)


def net_images(module: flax.linen.Module, x: jax.Array, x_small: jax.Array | None) -> jax.Array:
    """The images a net runs on: ``x_small`` (a low-resolution phase) where given and the net takes any size."""
    return x_small if x_small is not None and takes_any_image_size(module) else x


def meta_step_grads(ghn: GHN, params, graphs: list[ArchGraph], modules: list, x, y, *,
                    label_smoothing: float = 0.0, indexer: ShapeIndexer | None = None,
                    x_small: jax.Array | None = None) -> StepOutput:
    """Mean cross-entropy of the predicted nets on one image batch, and its gradient w.r.t. the GHN params.

    ``x_small``: the same images at a lower resolution, run by every net that takes any image size (a
    low-resolution phase of training); the others run on ``x``.

    The GHN core runs jitted under ``jax.vjp``; its outputs are tiled into each net's parameters on the host
    (:func:`assemble_host`), each net runs op by op (:mod:`ghn_jax.train.targets`), and its parameter gradients are
    folded back into a cotangent of the GHN outputs on the host (:func:`assemble_host_vjp`). Only the core is ever
    compiled for the step itself (once per padding budget); the nets reuse cached op executables.
    """
    cfg = ghn.config
    indexer = indexer or ShapeIndexer(cfg.num_classes, cfg.max_spatial)
    t0 = time.perf_counter()
    batch, layouts = pack(graphs, auto_budget(graphs, cfg.max_spatial), indexer, cfg.max_spatial)
    out, core_vjp = jax.vjp(lambda p: apply_ghn(ghn, p, batch), params)
    host = {k: np.asarray(out[k]) for k in HOST_OUTPUTS}
    cot = {k: np.zeros(v.shape, np.float32) for k, v in out.items()}
    t1 = time.perf_counter()
    replicated = NamedSharding(x.sharding.mesh, P()) if isinstance(x.sharding, NamedSharding) else None
    losses, accs = [], []

    def fold_back(b: int, specs, loss, accuracy, grads) -> None:
        """Wait for net ``b`` and fold its parameter gradients into the GHN outputs' cotangent (host)."""
        grads = flax.traverse_util.flatten_dict(jax.device_get(grads))
        assemble_host_vjp(host, specs, b, cfg.weight_norm, grads, cot)
        losses.append(float(loss))
        accs.append(float(accuracy))

    # Pipelined: net b is dispatched (asynchronously) before net b-1's gradients are fetched and folded back, so
    # the host work between two nets overlaps the device's work instead of leaving it idle.
    pending = None
    for b, (graph, layout, module) in enumerate(zip(graphs, layouts, modules)):
        specs = param_specs(graph, layout)
        net_params = jax.device_put(to_pytree(assemble_host(host, specs, b, cfg.weight_norm), graph), replicated)
        loss, logits, grads = net_loss_and_grads(module, net_params, net_images(module, x, x_small), y,
                                                 label_smoothing)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        if pending is not None:
            fold_back(*pending)
        pending = (b, specs, loss, accuracy, grads)
    if pending is not None:
        fold_back(*pending)
    t2 = time.perf_counter()
    n = len(graphs)
    (grads,) = core_vjp({k: v / n for k, v in cot.items()})
    t3 = time.perf_counter()
    return StepOutput(float(np.mean(losses)), float(np.mean(accs)), grads, sum(g.n_nodes for g in graphs),
                      {'ghn_forward': t1 - t0, 'nets': t2 - t1, 'ghn_backward': t3 - t2})


# ------------------------------------------------------------------------------------------------------------------
# The training loop
# ------------------------------------------------------------------------------------------------------------------

def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
    devices = jax.devices()[:num_devices] if num_devices else jax.devices()
    # Auto axes: XLA propagates shardings; Explicit (the 0.10 default) would re-type outputs and recompile.
    return jax.make_mesh((len(devices),), ('data',), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))


def save_config(config: ml_collections.ConfigDict, workdir: str, step: int) -> None:
    """Write ``workdir/config.json``; a run resumed with a changed config keeps the old one as
    ``config.before_step_<step>.json`` and logs which fields changed."""
    path = os.path.join(workdir, 'config.json')
    text = config.to_json_best_effort(indent=2)
    if os.path.exists(path):
        with open(path) as f:
            old_text = f.read()
        if old_text == text:
            return
        old, new = (flax.traverse_util.flatten_dict(json.loads(t), sep='.') for t in (old_text, text))
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        logging.warning('config changed at step %d: %s (previous config kept in config.before_step_%d.json)',
                        step, ', '.join(f'{k}: {old.get(k)} -> {new.get(k)}' for k in changed), step)
        os.replace(path, os.path.join(workdir, f'config.before_step_{step}.json'))
    with open(path, 'w') as f:
        f.write(text)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Meta-train a GHN as configured, checkpointing into ``workdir``; resumes from its latest checkpoint.

    Returns a summary dict (final step, last losses, evaluation of the final GHN on held-out architectures).
    Usable from Colab: ``train_and_evaluate(configs.fashion_mnist_cpu.get_config(), '/tmp/run')``.
    """
    if config.low_res_steps and config.grad_estimator != 'bp':
        raise ValueError(f'low_res_steps={config.low_res_steps} needs grad_estimator=bp: forward gradients run every '
                         'net at full size (set --config.low_res_steps=0 to use them)')
    os.makedirs(workdir, exist_ok=True)
    if config.get('distributed', False):
        jax.distributed.initialize()
    if config.get('compilation_cache_dir'):
        compilation_cache.enable(config.compilation_cache_dir)
    targets.set_backend(config.get('target_backend', 'per_op'), config.get('target_residual_budget_gb', 0.0))
    if jax.default_backend() == 'cpu' and not host_memory.tcmalloc_active():
        logging.warning('meta-training on CPU runs ~1.5x faster under tcmalloc (page faults of fresh buffers, see '
                        'ghn_jax/host_memory.py): %s', 'run `python -m ghn_jax.train.main`, which restarts under it'
                        if host_memory.find_tcmalloc() else 'install it (apt install libtcmalloc-minimal4)')
    cfg = ghn_config(config)
    ghn = GHN(cfg)
    indexer = ShapeIndexer(cfg.num_classes, cfg.max_spatial)
    images = load_image_data(config)
    steps_per_epoch = max(1, len(images.train[0]) // config.batch_size)
    num_steps = total_steps(config, steps_per_epoch)
    optimizer = make_optimizer(config, steps_per_epoch)
    mesh = make_mesh(config.num_devices)
    replicated = NamedSharding(mesh, P())
    image_sharding = NamedSharding(mesh, P('data')) if config.batch_size % mesh.size == 0 else replicated

    params = jax.device_put(init_params(cfg, jax.random.key(config.seed)), replicated)
    opt_state = jax.device_put(optimizer.init(params), replicated)
    state = {'params': params, 'opt_state': opt_state, 'step': 0}
    ckpt = Checkpointer(workdir, config.keep_checkpoints)
    start = 0
    if ckpt.latest_step() is not None:
        abstract = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype, sharding=replicated), state)
        state = ckpt.restore_latest_good(abstract)
        start = int(state['step'])
        logging.warning('resumed from step %d of %s', start, ckpt.directory)
    params, opt_state = state['params'], state['opt_state']
    writer = MetricWriter(workdir)
    if jax.process_index() == 0:
        save_config(config, workdir, start)

    bar = progress(num_steps, start)
    skipped_in_a_row, step, last_loss = 0, start, None
    window: list[dict[str, float]] = []   # the steps since the last metrics row: each row averages its window

    def write_window(at_step: int) -> None:
        writer.write(at_step, **{k: float(np.mean([r[k] for r in window])) for k in window[0]})
        window.clear()
    batches = prefetch(lambda s: sample_meta_batch(config, s, cfg), range(start, num_steps))
    for step in range(start, num_steps):
        t_start = time.perf_counter()
        modules, graphs = next(batches)
        x, y = images.batch(config.seed, step, config.batch_size)
        x_small = jax.device_put(downscale(x, config.low_res_size), image_sharding) \
            if step < config.low_res_steps else None
        x = jax.device_put(x, image_sharding)
        y = jax.device_put(y, image_sharding)
        if config.grad_estimator == 'fg':
            res = meta_step_fwd_grads(ghn, params, graphs, modules, x, y, config, step)
        else:
            res = meta_step_grads(ghn, params, graphs, modules, x, y, label_smoothing=config.data.label_smoothing,
                                  indexer=indexer, x_small=x_small)
        params, opt_state, gnorm, finite = apply_update(optimizer, params, opt_state, res.grads)
        host_memory.release()   # jax's caches of lowered op modules: ~13 MB per op signature otherwise
        finite = bool(finite) and math.isfinite(res.loss)
        skipped_in_a_row = 0 if finite else skipped_in_a_row + 1
        row = {'loss': res.loss, 'accuracy': res.accuracy, 'grad_norm': float(gnorm), 'skipped': int(not finite),
               'nodes': res.n_nodes, 'step_seconds': time.perf_counter() - t_start, **res.seconds}
        window.append(row)
        last_loss = res.loss
        bar.update(1)
        bar.set_postfix(loss=f'{res.loss:.3f}', acc=f'{res.accuracy:.2f}')
        if not finite:
            logging.warning('step %d: non-finite loss or gradients, update skipped (%d in a row)', step,
                            skipped_in_a_row)
        if not finite:
            writer.write(step + 1, **row)
        elif (step + 1) % config.log_every == 0 or step + 1 == num_steps:
            write_window(step + 1)
        if skipped_in_a_row > config.max_nonfinite_skips:
            # The parameters are those of the last good step (skipped updates leave them untouched).
            ckpt.save(step + 1, {'params': params, 'opt_state': opt_state, 'step': step + 1}, cfg.to_dict())
            bar.close()
            raise FloatingPointError(f'{skipped_in_a_row} non-finite meta-steps in a row at step {step}; the last '
                                     f'good state is saved in {ckpt.directory}. Lower the learning rate and resume.')
        done = step + 1 == num_steps
        stopping = ckpt.should_stop(step + 1)   # once per step: on multi-host TPUs a sync point of every process
        if (step + 1) % config.checkpoint_every == 0 or done or stopping:
            ckpt.save(step + 1, {'params': params, 'opt_state': opt_state, 'step': step + 1}, cfg.to_dict())
            if stopping and not done:
                if window:   # the resumed run's first row then averages only its own steps, not these again
                    write_window(step + 1)
                logging.warning('preempted: checkpoint saved at step %d, exiting', step + 1)
                bar.close()
                return {'step': step + 1, 'preempted': True}
        if config.eval_every and (step + 1) % config.eval_every == 0 and not done:
            writer.write(step + 1, **evaluate_on_archs(GHN2(cfg, params), config, images))
    bar.close()
    summary: dict[str, Any] = {'step': num_steps, 'train_loss_last': last_loss}
    final = GHN2(cfg, params)
    if config.export_npz and jax.process_index() == 0:
        final.save(os.path.join(workdir, 'ghn.npz'), step=num_steps)
    summary.update(evaluate_on_archs(final, config, images))
    writer.write(num_steps, **{k: v for k, v in summary.items() if k != 'step' and isinstance(v, (int, float))})
    writer.close()
    ckpt.close()
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    return summary


def sample_meta_batch(config: ml_collections.ConfigDict, step: int, cfg: GHNConfig):
    """Modules and graphs of one meta-batch; chunks above ``max_nodes_batch`` total nodes are redrawn."""
    for attempt in range(16):
        modules, graphs = [], []
        for index in meta_batch_indices(step, attempt, config.meta_batch_size):
            module, shape = from_arch_json(arch_description(config, 'train', index))
            modules.append(module)
            graphs.append(build_graph(module, shape, ve_cutoff=cfg.graph_cutoff, cache=False))
        if sum(g.n_nodes for g in graphs) <= config.archs.max_nodes_batch:
            return modules, graphs
    raise RuntimeError(f'no meta-batch under {config.archs.max_nodes_batch} nodes at step {step}')


def prefetch(build: Callable[[Any], Any], items: Iterable) -> Iterator:
    """``build(item)`` for each item, each computed in a background thread while the caller works on the previous.

    Used for meta-batches: graph building is Python tracing and the target nets are mostly XLA compute, so the two
    overlap. A step's architectures depend only on its index, so results and resuming are unaffected.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='prefetch') as pool:
        iterator = iter(items)
        upcoming = next((pool.submit(build, item) for item in iterator), None)
        while upcoming is not None:
            result = upcoming.result()
            upcoming = next((pool.submit(build, item) for item in iterator), None)
            yield result


def meta_step_fwd_grads(ghn: GHN, params, graphs, modules, x, y, config, step: int) -> StepOutput:
    """Forward-gradient estimate of the meta-gradient (``grad_estimator='fg'``, issue #5): no backward pass."""
    from ghn_jax.train.forward_grad import value_and_fwd_grad
    from ghn_jax.train.targets import net_logits
    cfg = ghn.config
    batch, layouts = pack(graphs, auto_budget(graphs, cfg.max_spatial),
                          ShapeIndexer(cfg.num_classes, cfg.max_spatial), cfg.max_spatial)

    def loss_fn(p):
        out = apply_ghn(ghn, p, batch)
        losses = []
        for b, (graph, layout, module) in enumerate(zip(graphs, layouts, modules)):
            flat = assemble(out, param_specs(graph, layout), b, cfg.weight_norm)
            logits = net_logits(module, to_pytree(flat, graph), x)
            losses.append(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())
        return jnp.mean(jnp.stack(losses))

    t0 = time.perf_counter()
    loss, grads = value_and_fwd_grad(loss_fn, num_tangents=config.num_tangents)(
        params, key=jax.random.fold_in(jax.random.key(config.seed), step))
    return StepOutput(float(loss), float('nan'), grads, sum(g.n_nodes for g in graphs),
                      {'fwd_grad': time.perf_counter() - t0})


def evaluate_on_archs(ghn: GHN2, config: ml_collections.ConfigDict, images: ImageData) -> dict[str, float]:
    """Mean +- standard error of the accuracy of predicted parameters on held-out architectures."""
    from ghn_jax.train.evaluate import accuracy_of
    split = config.eval_split
    if not config.eval_archs:
        return {}
    x, y = images.val if split == 'val' else images.test
    x, y = x[:config.eval_examples], y[:config.eval_examples]
    accs = []
    for i in range(config.eval_archs):
        module, shape = from_arch_json(arch_description(config, split, i))
        accs.append(accuracy_of(module, ghn.predict(module, shape), x, y, config.eval_batch_size))
        host_memory.release()
    accs = np.asarray(accs) * 100
    return {f'eval_{split}_acc_mean': float(accs.mean()),
            f'eval_{split}_acc_se': float(accs.std(ddof=1) / np.sqrt(len(accs))) if len(accs) > 1 else 0.0}
