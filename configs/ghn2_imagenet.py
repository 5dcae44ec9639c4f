"""ghn2_imagenet: GHN-2 (virtual edges, LayerNorm, normalisation, meta-batch 8) on ImageNet (spec 8)."""
from ghn_jax.train.config import base_config


def get_config():
    c = base_config()
    c.data.update(name='imagenet2012', num_classes=1000, image_size=224, label_smoothing=0.1,
                  holdout_fraction=0.0)
    c.ghn.max_spatial = 16
    c.batch_size = 256
    c.epochs = 150
    c.lr_milestones = (100, 125)
    return c
