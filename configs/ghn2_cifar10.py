"""ghn2_cifar10: GHN-2 (virtual edges, LayerNorm, normalisation, meta-batch 8) on CIFAR-10 (spec 8)."""
from ghn_jax.train.config import base_config


def get_config():
    c = base_config()
    return c
