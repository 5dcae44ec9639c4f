"""ghn1_cifar10: GHN-1 (no virtual edges, no LayerNorm, no normalisation, meta-batch 1) on CIFAR-10 (spec 8)."""
from ghn_jax.train.config import base_config


def get_config():
    c = base_config()
    c.ghn.update(ve=False, layernorm=False, weight_norm=False, ve_cutoff=1)
    c.meta_batch_size = 1
    return c
