"""Warm forward+backward of training nets, op by op against one compiled whole-net executable (prints JSON).

Is the op-by-op execution (``ghn_jax.train.executor``) what a meta-step pays for, or the arithmetic? Each net of
the config's first meta-batches runs loss-and-gradient with both back-ends on a batch of random images: once to compile
(whole-net jit compiles the net; per-op reuses or compiles op executables), then ``--repeats`` times warm, keeping
the fastest. Whole-net jit's warm time is the floor an execution design can reach on XLA:CPU's kernels.

    python benchmarks/per_op_vs_whole_net.py [--config configs/fashion_mnist_cpu.py] [--steps 1-4]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ghn_jax import host_memory
from ghn_jax.train import meta_train, targets
from machine import machine_info  # benchmarks/ is on the path when run as a script
from ghn_jax.train.config import load_config

BACKENDS = ('per_op', 'whole_net')


def _seconds(fn, repeats: int) -> tuple[float, float]:
    """(first call, fastest of ``repeats`` further calls) in seconds."""
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return times[0], min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default='configs/fashion_mnist_cpu.py')
    parser.add_argument('--steps', default='1-4', help='meta-batches whose nets are run, e.g. 1-4')
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    host_memory.use_tcmalloc()
    config = load_config(args.config)
    cfg = meta_train.ghn_config(config)
    rng = np.random.default_rng(0)
    side, channels = config.data.image_size, config.data.channels
    x = jnp.asarray(rng.standard_normal((config.batch_size, side, side, channels)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, config.data.num_classes, config.batch_size).astype(np.int32))
    lo, hi = (int(s) for s in args.steps.split('-'))
    nets = []
    for step in range(lo, hi + 1):
        for net in meta_train.sample_meta_batch(config, step, cfg)[0]:
            params = net.init(jax.random.key(0), x[:2])['params']  # eager: no whole-net compile
            row = {'step': step}
            for backend in BACKENDS:
                targets.set_backend(backend)
                first, warm = _seconds(lambda: targets.net_loss_and_grads(net, params, x, y), args.repeats)
                row[backend] = {'first_s': round(first, 3), 'warm_s': round(warm, 3)}
            nets.append(row)
            host_memory.release()
    targets.set_backend('per_op')
    warm = {b: sum(r[b]['warm_s'] for r in nets) for b in BACKENDS}
    ratios = [r['per_op']['warm_s'] / r['whole_net']['warm_s'] for r in nets]
    print(json.dumps({
        'benchmark': 'per_op_vs_whole_net', 'machine': machine_info(),
        'config': args.config, 'steps': args.steps, 'nets': len(nets),
        'warm_total_s': {b: round(v, 3) for b, v in warm.items()},
        'per_op_over_whole_net': {'total': round(warm['per_op'] / warm['whole_net'], 3),
                                  'median_per_net': round(float(np.median(ratios)), 3)},
        'per_net': nets, 'loadavg': os.getloadavg(),
    }, indent=1))


if __name__ == '__main__':
    main()
