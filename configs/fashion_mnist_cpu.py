"""GHN-2 meta-trained on offline Fashion-MNIST on a CPU in about an hour (the README's default job).

Images are padded to 32x32 and repeated to 3 channels so the same GHN reads CIFAR-style architectures; the
architectures are small DeepNets-1M nets (at most 6 cells, C <= 32) so that a meta-step takes about a second.
"""
from ghn_jax.train.config import base_config


def get_config():
    c = base_config()
    c.data.update(name='fashion_mnist', augment=False, holdout_fraction=0.1)
    c.archs.update(max_cells=6, max_channels=32)
    c.meta_batch_size = 4
    c.batch_size = 64
    c.num_steps = 1500
    c.lr_milestones = ()
    c.log_every = 10
    c.checkpoint_every = 100
    c.eval_archs = 20
    c.eval_examples = 2000
    return c
