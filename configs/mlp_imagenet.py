"""mlp_imagenet: MLP baseline (per-node MLP, no GNN) on ImageNet (spec 8)."""
from ghn_jax.train.config import base_config, imagenet


def get_config():
    c = imagenet(base_config())
    c.ghn.hypernet = 'mlp'
    return c
