"""Default meta-training configuration; ``configs/*.py`` start from :func:`base_config` and override fields."""
from __future__ import annotations

import importlib.util

import ml_collections


def load_config(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file (``configs/<name>.py``), for tools outside the absl training CLI; as with
    ``--config``, ``configs/<name>.py:<arg>`` passes ``<arg>`` (``configs/fashion_mnist_cpu.py:4000``)."""
    path, sep, arg = path.partition('.py:')
    spec = importlib.util.spec_from_file_location('ghn_jax_config', path + '.py' if sep else path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if sep else module.get_config()


def base_config() -> ml_collections.ConfigDict:
    """GHN-2 on CIFAR-10 with the reference's protocol (spec section 8)."""
    c = ml_collections.ConfigDict()
    c.seed = 1111

    c.ghn = ml_collections.ConfigDict(dict(
        hypernet='gatedgnn', ve=True, layernorm=True, weight_norm=True, hid=32, max_spatial=11, ve_cutoff=50))

    c.data = ml_collections.ConfigDict(dict(
        name='cifar10', data_dir=None, num_classes=10, image_size=32, channels=3, augment=True,
        label_smoothing=0.0, max_train_examples=None, holdout_fraction=0.1))

    c.archs = ml_collections.ConfigDict(dict(
        split='train', seed=1, sample_width=True, max_nodes_batch=2200,
        # Optional caps for small CPU runs (None = the generator's own ranges).
        max_cells=None, max_channels=None))

    c.meta_batch_size = 8
    c.batch_size = 64
    c.learning_rate = 1e-3
    c.weight_decay = 1e-5
    c.grad_clip = 5.0
    c.epochs = 300
    c.lr_schedule = 'step'      # the reference's x0.1 at lr_milestones (epochs); 'cosine': GHN-3's decay to 0
    c.lr_milestones = (200, 250)
    c.num_steps = -1            # -1: epochs * steps per epoch
    # Progressive resizing: the first low_res_steps steps see images averaged down to low_res_size (cheaper nets,
    # more steps in a time budget); evaluation is always at full size.
    c.low_res_steps = 0
    c.low_res_size = 16
    c.grad_estimator = 'bp'     # 'bp' or 'fg' (forward gradients through the GHN, issue #5)
    # or 'per_op_keep_1x1', 'per_op_keep_all', 'per_op_remat' (see ghn_jax.train.targets), 'whole_net'
    c.target_backend = 'per_op'
    # Per target net, the most (GB) its ops hold between forward and backward; past it the earliest ops are run
    # again in the backward pass (ghn_jax.train.executor.ResidualBudget). 0: no cap.
    c.target_residual_budget_gb = 0.0
    c.num_tangents = 1

    c.log_every = 10   # a metrics row averages the steps since the previous one (fewer at a preemption)
    c.checkpoint_every = 200
    c.keep_checkpoints = 3
    c.max_nonfinite_skips = 50  # abort after this many skipped (NaN/Inf) meta-steps in a row
    c.eval_every = 0            # evaluate on held-out archs every N steps (0: only at the end)
    c.eval_archs = 20
    c.eval_split = 'val'
    c.eval_batch_size = 64      # BN nets use each batch's statistics, so this is part of the result (spec 9.1)
    c.eval_examples = 2000
    c.num_devices = 0           # 0: all local devices (data-parallel over images)
    c.export_npz = True         # write workdir/ghn.npz at the end (ghn_jax.GHN2.from_checkpoint)
    # Persistent XLA cache: op executables compiled once are reused by later runs and resumed jobs (None: off).
    c.compilation_cache_dir = '~/.cache/ghn_jax/xla'
    return c


def imagenet(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Switch a config to ImageNet as the reference trains there (224 px, 1000 classes, label smoothing 0.1)."""
    c.data.update(name='imagenet2012', num_classes=1000, image_size=224, label_smoothing=0.1, holdout_fraction=0.0)
    c.ghn.max_spatial = 16
    c.batch_size = 256
    c.epochs = 150
    c.lr_milestones = (100, 125)
    return c
