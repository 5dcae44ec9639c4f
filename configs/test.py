"""Tiny CPU configuration for tests: synthetic data, 2-cell nets, a few meta-steps."""
from ghn_jax.train.config import base_config


def get_config():
    c = base_config()
    c.data.update(name='synthetic', augment=False, holdout_fraction=0.0)
    c.archs.update(max_cells=2, max_channels=8, sample_width=False)
    c.meta_batch_size = 2
    c.batch_size = 8
    c.num_steps = 4
    c.lr_milestones = ()
    c.log_every = 1
    c.checkpoint_every = 2
    c.eval_archs = 2
    c.eval_examples = 32
    c.eval_batch_size = 32
    c.export_npz = True
    return c
