"""What target-net ops keep and compute for the backward pass: two variants A/B (prints JSON).

Runs the nets of the given replayed steps (../shared/bench/deepnets_train_metabatches.json, 64 random 32x32 images)
forward and backward op by op, alternating two variants in one process so that the machine's drift cancels. A
variant is one of ``executor.REMAT_MODES`` or

* ``before``: what ops kept before 2026-12-04 06:00: their depthwise convs' outputs, attention recomputed in the
  backward pass (nothing in a Transformer block was named), and the first conv also computing a cotangent for the
  images.

Reports seconds per pass over all nets, the largest net's bytes computed for its backward pass, and the largest
gradient difference between the variants.

    python benchmarks/kept_arrays_ab.py [--steps 3,5] [--rounds 3] [--variants before,conv_outputs]
    python benchmarks/kept_arrays_ab.py --variants all_conv_outputs,conv_outputs   # 1x1 outputs kept or redone
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from ghn_jax import host_memory
from ghn_jax.nets import layers
from machine import machine_info  # benchmarks/ is on the path when run as a script
from ghn_jax.train import executor, targets

from meta_train import replayed_nets  # benchmarks/meta_train.py

BEFORE_NAMES = (layers.CONV_OUTPUT, layers.NORM_STATISTICS, layers.DEPTHWISE_OUTPUT)


def install_before_mode() -> None:
    """A remat mode ``'before'`` that keeps what ops kept before (added here; the library has no such mode)."""
    executor.REMAT_MODES = executor.REMAT_MODES + ('before',)
    executor.SAVED_NAMES['before'] = BEFORE_NAMES


def count_computed_bytes(counter: list[int]) -> None:
    forward = executor._op_forward

    def counting(module, remat, signature, params, args):
        out, computed = forward(module, remat, signature, params, args)
        counter[0] += sum(a.nbytes for a in computed)
        return out, computed
    executor._op_forward = counting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', default='3,5')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--variants', default='before,conv_outputs', help='two of: before, ' +
                        ', '.join(executor.REMAT_MODES))
    args = parser.parse_args()
    host_memory.use_tcmalloc()
    install_before_mode()
    computed = [0]
    count_computed_bytes(computed)

    nets, x, y = replayed_nets(args.steps)

    def grads_before(module, params):
        def objective(p, images):   # the images differentiated too: their cotangent is computed, as before
            return targets.cross_entropy(executor.forward(module, p, images, 'before'), y)
        return jax.grad(objective, argnums=(0, 1))(params, x)[0]

    def grads_of_mode(mode):
        return lambda module, params: executor.loss_and_grads(module, params, x, y, targets.cross_entropy, mode)[2]

    first, second = args.variants.split(',')
    variants = {name: grads_before if name == 'before' else grads_of_mode(name) for name in (first, second)}

    def run(name):
        largest, grads, start = 0, [], time.perf_counter()
        for module, params in nets:
            computed[0] = 0
            grads.append(jax.block_until_ready(variants[name](module, params)))
            largest = max(largest, computed[0])
        return time.perf_counter() - start, largest, grads

    for name in variants:   # compile
        run(name)
    seconds, largest, grads = {name: [] for name in variants}, {}, {}
    for i in range(args.rounds):
        for name in ((first, second) if i % 2 == 0 else (second, first)):
            dt, largest[name], grads[name] = run(name)
            seconds[name].append(round(dt, 2))
    diff = max(float(jnp.max(jnp.abs(a - b))) for ga, gb in zip(grads[first], grads[second])
               for a, b in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)))
    print(json.dumps({
        'benchmark': 'kept_arrays_ab', 'machine': machine_info(),
        'steps': args.steps, 'nets': len(nets), 'seconds_per_pass': seconds,
        f'median_ratio_{second}_{first}': round(statistics.median(seconds[second]) / statistics.median(seconds[first]), 3),
        'largest_net_computed_gb': {k: round(v / 2**30, 3) for k, v in largest.items()},
        'max_abs_grad_diff': diff, 'allocator': host_memory.allocator_name()}, indent=1))


if __name__ == '__main__':
    main()
