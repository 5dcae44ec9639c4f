"""What the kernel's limit on memory mappings costs a long meta-training run, under each eviction policy (JSON).

Every fused kernel XLA:CPU compiles holds about three memory mappings, and a meta-training run compiles op
signatures for as long as it samples new architectures, so it reaches ``vm.max_map_count`` (65,530 by default)
every ~150 steps. ``ghn_jax.host_memory.keep_under_map_limit`` then drops executables, under one of two policies:

* ``lru`` (the default since 2026-12-07): the least recently used op executables go, a tenth at a time, until the
  process holds under 70% of the limit;
* ``clear`` (before): all of jax's compiled executables go, and the working set is compiled again, or read back
  from the persistent cache, over the next steps.

Each policy resumes a copy of a training workdir's latest checkpoint (a real GHN, and the run's own next
architectures and images) in a fresh process, runs ``--steps`` meta-steps, and reports their seconds (total, and
median of the 10-step means the run logs), how often executables were dropped, and the mappings held every 10
steps. Policies alternate over ``--rounds``, since shared machines drift.

    python benchmarks/map_limit.py --workdir /tmp/fm --config configs/fashion_mnist_cpu.py:4000 --steps 200 \\
        [--low-res] [--rounds 1]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from ghn_jax import host_memory
from machine import machine_info  # benchmarks/ is on the path when run as a script

POLICIES = ('clear', 'lru')


def resumable_copy(workdir: str, into: str) -> int:
    """Copy ``workdir``'s latest checkpoint and config into ``into``; returns the checkpoint's step."""
    checkpoints = os.path.join(workdir, 'checkpoints')
    step = max(int(d) for d in os.listdir(checkpoints) if d.isdigit())
    os.makedirs(os.path.join(into, 'checkpoints'))
    shutil.copytree(os.path.join(checkpoints, str(step)), os.path.join(into, 'checkpoints', str(step)))
    for name in os.listdir(checkpoints):
        if not name.isdigit():
            shutil.copy(os.path.join(checkpoints, name), os.path.join(into, 'checkpoints'))
    shutil.copy(os.path.join(workdir, 'config.json'), into)
    return step


def run_policy(args: argparse.Namespace) -> dict:
    """One policy's run, in this process."""
    from ghn_jax.train import meta_train
    from ghn_jax.train.config import load_config
    from ghn_jax.train import executor   # registers its op cache's evictor on import
    if args.child == 'clear':
        def drop_all(fraction: float) -> int:
            executor.OP_EXECUTABLES.clear()
            return 0   # nothing 'evicted', so keep_under_map_limit goes on to empty all of jax's caches
        host_memory.EVICTORS[:] = [drop_all]
    maps, drops = [], []
    keep_under = host_memory.keep_under_map_limit

    def counting_keep_under(*a, **k):
        dropped = keep_under(*a, **k)
        drops.append(dropped)
        usage = host_memory.memory_map_usage()
        maps.append(usage[0] if usage else None)
        return dropped
    host_memory.keep_under_map_limit = counting_keep_under   # release() calls it every tenth step
    with tempfile.TemporaryDirectory() as workdir:
        start = resumable_copy(args.workdir, workdir)
        config = load_config(args.config)
        config.num_steps = start + args.steps
        config.low_res_steps = config.num_steps if args.low_res else 0
        config.eval_archs = 0
        config.export_npz = False
        meta_train.train_and_evaluate(config, workdir)
        with open(os.path.join(workdir, 'metrics.jsonl')) as f:
            rows = [r for r in map(json.loads, f) if 'step_seconds' in r and r['step'] > start]
    seconds = [r['step_seconds'] for r in rows]   # 10-step means
    return {'policy': args.child, 'start_step': start, 'steps': args.steps,
            'step_seconds_total': round(10 * sum(seconds), 1),
            'step_seconds_median': round(statistics.median(seconds), 3),
            'step_seconds_per_10': [round(s, 2) for s in seconds],
            'executables_dropped': sum(drops), 'memory_maps_every_10_steps': maps,
            'memory_map_limit': (host_memory.memory_map_usage() or (None, None))[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--workdir', required=True, help='a meta-training workdir with a checkpoint to resume')
    parser.add_argument('--config', default='configs/fashion_mnist_cpu.py',
                        help="the run's config file, with its argument if it took one (path.py:arg)")
    parser.add_argument('--steps', type=int, default=200)
    parser.add_argument('--low-res', action='store_true', help='all steps on 16x16 images (cheaper steps)')
    parser.add_argument('--rounds', type=int, default=1)
    parser.add_argument('--child', choices=POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_policy(args)))
        return
    host_memory.use_tcmalloc()
    runs = []
    for _ in range(args.rounds):
        for policy in POLICIES:
            cmd = [sys.executable, os.path.abspath(__file__), '--child', policy, '--workdir', args.workdir,
                   '--config', args.config, '--steps', str(args.steps)] + (['--low-res'] if args.low_res else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{policy}: {runs[-1]['step_seconds_total']} s in {args.steps} steps, "
                  f"{runs[-1]['executables_dropped']} drops", file=sys.stderr)
    totals = {p: [r['step_seconds_total'] for r in runs if r['policy'] == p] for p in POLICIES}
    print(json.dumps({'benchmark': 'map_limit', 'machine': machine_info(), 'runs': runs,
                      'lru_over_clear_total_time': round(statistics.median(totals['lru'])
                                                         / statistics.median(totals['clear']), 3)}, indent=1))


if __name__ == '__main__':
    main()
