"""ghn1_imagenet: GHN-1 (no virtual edges, no LayerNorm, no normalisation, meta-batch 1) on ImageNet (spec 8)."""
from ghn_jax.train.config import base_config


def get_config():
    c = base_config()
    c.ghn.update(ve=False, layernorm=False, weight_norm=False, ve_cutoff=1)
    c.meta_batch_size = 1
    c.data.update(name='imagenet2012', num_classes=1000, image_size=224, label_smoothing=0.1,
                  holdout_fraction=0.0)
    c.ghn.max_spatial = 16
    c.batch_size = 256
    c.epochs = 300
    c.lr_milestones = (200, 250)
    return c
