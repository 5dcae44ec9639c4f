"""GHN-2 meta-trained on offline Fashion-MNIST on a CPU (the README's default job).

Images are padded to 32x32 and repeated to 3 channels so the same GHN reads CIFAR-style architectures; the
architectures are small DeepNets-1M nets (at most 6 cells, C <= 32). On 2 CPU cores the first steps take 15-100 s
(op compiles) and later ones 1-2.5 s, so 3000 steps take about 1.5 hours; the run checkpoints every 100 steps and on
SIGTERM, and resumes where it stopped (docs/meta_training.md). A longer run keeps the schedule's shape:
``--config=configs/fashion_mnist_cpu.py:5000`` trains 5000 steps with the learning-rate drops at 2/3 and 5/6 of them
(overriding ``--config.num_steps`` alone would leave the drops at steps 2000 and 2500). An image batch other than 64
goes after the length, ``:5000,32``, for the same reason: the drops are placed in epochs of that batch. The first
60% of the steps run on images averaged down to 16x16 (``low_res_steps``; measured: 4,000 such steps in the time of
3,300 at 32x32 gave +1.2 points on the test nets, and 5,000 gave +3.3); ``--config.low_res_steps=0`` turns it off.
"""
from ghn_jax.train.config import base_config


def get_config(arg: str | None = None):
    """``arg``: ``'<num_steps>'`` or ``'<num_steps>,<batch_size>'`` (default 3000 steps of 64 images)."""
    num_steps, _, batch_size = (arg or '').partition(',')
    c = base_config()
    c.data.update(name='fashion_mnist', augment=False, holdout_fraction=0.1)
    c.archs.update(max_cells=6, max_channels=32)
    c.meta_batch_size = 4
    c.batch_size = int(batch_size or 64)
    c.num_steps = int(num_steps or 3000)
    # The reference's step decay (x0.1 at 2/3 and 5/6 of the run), in epochs of 54,000 images / 64 = 843 steps.
    c.lr_milestones = tuple(f * c.num_steps / (54_000 // c.batch_size) for f in (2 / 3, 5 / 6))
    c.low_res_steps = round(0.6 * c.num_steps)
    c.log_every = 10
    c.checkpoint_every = 100
    c.eval_archs = 20
    c.eval_examples = 2000
    return c
