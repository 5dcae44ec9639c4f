"""ghn2_imagenet: GHN-2 (virtual edges, LayerNorm, normalisation, meta-batch 8) on ImageNet (spec 8)."""
from ghn_jax.train.config import base_config, imagenet


def get_config():
    return imagenet(base_config())
