"""GHN-2 meta-trained on offline Fashion-MNIST on a CPU (the README's default job).

Images are padded to 32x32 and repeated to 3 channels so the same GHN reads CIFAR-style architectures; the
architectures are small DeepNets-1M nets (at most 6 cells, C <= 32). On 2 shared CPU cores the first steps take
~100 s (op compiles) and later ones 5-9 s, so 1500 steps take hours; the run checkpoints every 100 steps and on
SIGTERM, and resumes where it stopped (docs/meta_training.md).
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
