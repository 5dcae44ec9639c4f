"""The pool kernels of another checkout against this one, in one process (prints JSON).

Runs the nets of replayed steps (../shared/bench/deepnets_train_metabatches.json, 64 random 32x32 images) op by op,
forward and backward (as meta-training does) and forward only (as evaluation does), alternating the two sets of
max/avg-pool kernels so that the machine's drift cancels. Reports seconds per pass, pool calls per pass and the
largest difference of gradients and logits between the two.

    git worktree add /tmp/old 04907cf      # the kernels before the tap-based pools
    python benchmarks/pools_ab.py --old-tree /tmp/old [--steps 3,5] [--rounds 4]
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp

from ghn_jax import host_memory
from ghn_jax.nets import kernels
from machine import machine_info  # benchmarks/ is on the path when run as a script
from ghn_jax.train import executor, targets

from meta_train import replayed_nets  # benchmarks/meta_train.py


def _pool_calls(module) -> tuple:
    """(max_pool call, avg_pool call), each taking the current ``max_pool2d``/``avg_pool2d`` call's arguments."""
    calls = []
    for name in ('_max_pool_call', '_avg_pool_call'):
        call = getattr(module, name)
        n_args = len(inspect.signature(getattr(module, name.replace('_call', '')).fun).parameters)
        calls.append(lambda *a, call=call, n=n_args: call(*a[:n]))  # older kernels take fewer static arguments
    return tuple(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--old-tree', required=True, help='a checkout of the commit to compare with')
    parser.add_argument('--steps', default='3,5')
    parser.add_argument('--rounds', type=int, default=4)
    args = parser.parse_args()
    host_memory.use_tcmalloc()
    spec = importlib.util.spec_from_file_location('old_kernels',
                                                  os.path.join(args.old_tree, 'ghn_jax', 'nets', 'kernels.py'))
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    variants = {'old': _pool_calls(old), 'new': (kernels._max_pool_call, kernels._avg_pool_call)}
    calls = [0]

    def install(name):
        def counted(call):
            def pool(*a):
                calls[0] += 1
                return call(*a)
            return pool
        kernels._max_pool_call, kernels._avg_pool_call = map(counted, variants[name])

    nets, x, y = replayed_nets(args.steps)

    passes = {
        'train': lambda m, p: executor.loss_and_grads(m, p, x, y, targets.cross_entropy, 'conv_outputs')[2],
        'forward': lambda m, p: executor.forward(m, p, x)}

    def run(name, kind):
        install(name)
        calls[0], outs, start = 0, [], time.perf_counter()
        for module, params in nets:
            outs.append(jax.block_until_ready(passes[kind](module, params)))
        return time.perf_counter() - start, outs

    result = {'benchmark': 'pools_ab', 'machine': machine_info(),
              'steps': args.steps, 'nets': len(nets), 'old_tree': args.old_tree}
    for kind in passes:
        for name in variants:   # compile
            run(name, kind)
        result[f'{kind}_pool_calls_per_pass'] = calls[0]
        seconds, outs = {name: [] for name in variants}, {}
        for i in range(args.rounds):
            for name in (('old', 'new') if i % 2 == 0 else ('new', 'old')):
                dt, outs[name] = run(name, kind)
                seconds[name].append(round(dt, 2))
        result[f'{kind}_seconds_per_pass'] = seconds
        result[f'{kind}_median_ratio_new_old'] = round(statistics.median(seconds['new']) /
                                                       statistics.median(seconds['old']), 3)
        result[f'{kind}_max_abs_diff'] = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
            jax.tree_util.tree_leaves(outs['old']), jax.tree_util.tree_leaves(outs['new'])))
    print(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
