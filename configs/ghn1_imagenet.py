"""ghn1_imagenet: GHN-1 (no virtual edges, no LayerNorm, no normalisation, meta-batch 1) on ImageNet (spec 8)."""
from ghn_jax.train.config import base_config, imagenet


def get_config():
    c = imagenet(base_config())
    c.ghn.update(ve=False, layernorm=False, weight_norm=False, ve_cutoff=1)
    c.meta_batch_size = 1
    c.epochs = 300
    c.lr_milestones = (200, 250)
    return c
