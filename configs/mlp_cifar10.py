"""mlp_cifar10: MLP baseline (per-node MLP, no GNN) on CIFAR-10 (spec 8)."""
from ghn_jax.train.config import base_config


def get_config():
    c = base_config()
    c.ghn.hypernet = 'mlp'
    return c
