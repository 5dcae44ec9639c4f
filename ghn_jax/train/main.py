"""Meta-training CLI: ``python -m ghn_jax.train.main --config=configs/ghn2_cifar10.py --workdir=DIR``.

Resumes from the latest checkpoint in ``--workdir``. Any config field can be overridden on the command line,
e.g. ``--config.meta_batch_size=4 --config.num_steps=1000``. On Linux the process first restarts itself under
tcmalloc when it is installed (1.5x faster meta-steps on CPU; ``GHN_JAX_TCMALLOC=0`` opts out; see
:mod:`ghn_jax.host_memory`).
"""
if __name__ == '__main__':
    from ghn_jax import host_memory
    host_memory.use_tcmalloc()   # before jax is imported: the process is replaced

import json  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ghn_jax.train.meta_train import train_and_evaluate  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/fashion_mnist_cpu.py', 'Training configuration file.')
flags.DEFINE_string('workdir', '/tmp/ghn_jax_run', 'Where checkpoints, metrics and the exported GHN go.')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    if not FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    summary = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    print(json.dumps(summary, indent=1))


if __name__ == '__main__':
    app.run(main)
