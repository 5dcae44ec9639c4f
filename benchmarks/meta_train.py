"""Meta-training step time and memory, replaying the reference's meta-batches (prints JSON).

Replays ../shared/bench/deepnets_train_metabatches.json: 8 DeepNets-1M nets per step, 64 random 32x32 images,
GHN-2 (hid 32, virtual edges, LayerNorm, normalisation), Adam with clipping. Steps 0-1 warm up; steps 2-13 are
measured twice: the first ("cold") pass is what a fresh run pays while the op cache fills, the second ("warm")
pass is the steady state a long run reaches once op signatures stop being new. As in training, the next step's
graphs build in a background thread while a step runs: ``graphs`` is what the step waits for them, ``graphs_build``
what building took. Per step it also reports the GHN forward, the target nets (forward+backward, op by op), the GHN
backward and the optimiser; for the warm pass also a forward-only run of the nets, which splits target time into
forward and backward.

    python benchmarks/meta_train.py [--steps 2-13]

It restarts itself under tcmalloc when that is installed (``GHN_JAX_TCMALLOC=0`` keeps the default allocator; see
``ghn_jax.host_memory``) and, as training does, frees jax's lowering caches after every step.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from ghn_jax import host_memory
from machine import machine_info  # benchmarks/ is on the path when run as a script
from ghn_jax.graphs.graph import build_graph
from ghn_jax.hypernet.ghn import GHN, GHNConfig
from ghn_jax.hypernet.predictor import init_params
from ghn_jax.nets import from_arch_json
from ghn_jax.train import executor, meta_train, targets
from ghn_jax.train.config import base_config

BENCH = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'bench', 'deepnets_train_metabatches.json')


def load_step(step_nets: list[dict], cfg: GHNConfig):
    modules, graphs = [], []
    for arch in step_nets:
        module, shape = from_arch_json({'genotype': arch['genotype'],
                                        'network_args': {k: v for k, v in arch.items() if k != 'genotype'}})
        modules.append(module)
        graphs.append(build_graph(module, shape, ve_cutoff=cfg.graph_cutoff, cache=False))
    return modules, graphs


def random_like(shapes, seed: int = 0):
    """Parameters of the given shapes without compiling ``module.init`` (a whole-net compile per architecture)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), s.dtype), shapes)


def replayed_nets(steps: str) -> tuple[list, jax.Array, jax.Array]:
    """The nets of the replayed steps (e.g. ``'3,5'``) with random parameters, and 64 random images and labels."""
    batches = json.load(open(BENCH))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((64, 32, 32, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, 64).astype(np.int32))
    nets = []
    for step in (int(s) for s in steps.split(',')):
        for module in load_step(batches[step]['nets'], GHNConfig())[0]:
            shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x))['params']
            nets.append((module, random_like(shapes)))
    return nets, x, y


class PeakRSS:
    """Peak resident memory since the last ``take()``, sampled every 10 ms (``ru_maxrss`` only has the maximum over
    the whole process, so the warm pass's own peak needs this)."""

    def __init__(self):
        self.peak = 0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        page = os.sysconf('SC_PAGE_SIZE')
        while True:
            with open('/proc/self/statm') as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * page)
            time.sleep(0.01)

    def take(self) -> float:
        peak, self.peak = self.peak, 0
        return peak / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--bench', default=BENCH)
    parser.add_argument('--steps', default='2-13', help='measured steps, e.g. 2-13')
    parser.add_argument('--backend', default='per_op', choices=targets.BACKENDS,
                        help='target-net execution (per_op_remat: recompute each op in the backward pass)')
    parser.add_argument('--residual-budget-gb', type=float, default=base_config().target_residual_budget_gb,
                        help="per net, the most its ops hold for the backward pass (0: no cap; see --backend)")
    parser.add_argument('--low-res', type=int, default=0,
                        help='run the nets that take any image size on the images averaged down to this side (the '
                             'low-resolution phase of training, config.low_res_steps); 0: all at 32x32')
    args = parser.parse_args()
    host_memory.use_tcmalloc()
    lo, hi = (int(s) for s in args.steps.split('-'))
    targets.set_backend(args.backend, args.residual_budget_gb)
    with open(args.bench) as f:
        batches = {b['step']: b['nets'] for b in json.load(f)}

    config = base_config()
    cfg = meta_train.ghn_config(config)
    ghn = GHN(cfg)
    params = init_params(cfg, jax.random.key(0))
    optimizer = meta_train.make_optimizer(config, 1000)
    state = {'params': params, 'opt_state': optimizer.init(params)}  # updated in place, like training
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((64, 32, 32, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, 64).astype(np.int32))
    x_small = jnp.asarray(meta_train.downscale(np.asarray(x), args.low_res)) if args.low_res else None

    def timed_load(step: int):
        t = time.perf_counter()
        modules, graphs = load_step(batches[step], cfg)
        return modules, graphs, time.perf_counter() - t

    def run(step: int, modules, graphs, wait: float, build: float) -> dict[str, float]:
        traces = executor.STATS.traces
        c1, t1 = time.process_time(), time.perf_counter()
        res = meta_train.meta_step_grads(ghn, state['params'], graphs, modules, x, y, x_small=x_small)
        t2 = time.perf_counter()
        state['params'], state['opt_state'], _, _ = meta_train.apply_update(
            optimizer, state['params'], state['opt_state'], res.grads)
        seconds, loss = res.seconds, res.loss
        jax.block_until_ready(state['params'])
        t3 = time.perf_counter()
        del res
        host_memory.release()   # as training does after every step
        t4 = time.perf_counter()
        row = {'step': step, 'graphs': wait, 'graphs_build': build, **seconds, 'optimizer': t3 - t2,
               'release': t4 - t3, 'total': wait + t4 - t1, 'cpu': time.process_time() - c1, 'loss': loss,
               'new_op_signatures': executor.STATS.traces - traces}
        print(f"step {step}: {row['total']:.1f} s", file=sys.stderr, flush=True)
        return row

    def run_pass(steps: list[int]) -> tuple[list[dict], list]:
        """Steps as training runs them: the next meta-batch's graphs build in the background (``prefetch``)."""
        rows, all_modules = [], []
        loaded = meta_train.prefetch(timed_load, steps)
        for step in steps:
            t0 = time.perf_counter()
            modules, graphs, build = next(loaded)
            rows.append(run(step, modules, graphs, time.perf_counter() - t0, build))
            all_modules.append(modules)
        return rows, all_modules

    def forward_only(modules) -> float:
        """Seconds of a forward-only run of the nets (their forward executables compiled first)."""
        t = 0.0
        for module in modules:
            p = random_like(jax.eval_shape(module.init, jax.random.key(0), x[:1])['params'])
            images = meta_train.net_images(module, x, x_small)
            jax.block_until_ready(executor.forward(module, p, images))
            t_net = time.perf_counter()
            jax.block_until_ready(executor.forward(module, p, images))
            t += time.perf_counter() - t_net
        return t

    rss = PeakRSS()
    run_pass(list(range(0, lo)))
    cold, _ = run_pass(list(range(lo, hi + 1)))
    peak_cold_gb = rss.take()
    warm, warm_modules = run_pass(list(range(lo, hi + 1)))
    peak_warm_gb = rss.take()
    for row, modules in zip(warm, warm_modules):  # after the pass, so that it does not overlap the prefetching
        row['nets_forward_only'] = forward_only(modules)

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    keys = ('total', 'cpu', 'graphs', 'graphs_build', 'ghn_forward', 'nets', 'ghn_backward', 'optimizer', 'release')
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    fwd = med(warm, 'nets_forward_only')
    print(json.dumps({
        'benchmark': 'meta_train_step', 'machine': machine_info(),
        'backend': args.backend, 'residual_budget_gb': args.residual_budget_gb,
        'steps': f'{lo}-{hi}', 'meta_batch': 8,
        'images': '64x32x32x3' + (f', {args.low_res}x{args.low_res} where nets take any size' if args.low_res else ''),
        'cold_median_s': {k: round(med(cold, k), 3) for k in keys},
        'warm_median_s': {k: round(med(warm, k), 3) for k in keys},
        'warm_target_nets_split_s': {'forward': round(fwd, 3), 'backward': round(med(warm, 'nets') - fwd, 3)},
        'peak_rss_gb': round(peak_gb, 2),
        'peak_rss_gb_by_pass': {'warm_up_and_cold': round(peak_cold_gb, 2), 'warm': round(peak_warm_gb, 2)},
        'op_signatures_compiled': executor.STATS.traces,
        'targets': {'median_step_s': 4.0, 'peak_rss_gb': 3.5},
        'reference': {'median_step_s': 6.34, 'peak_rss_gb': 7.3},
        'met': {'warm_step': med(warm, 'total') <= 4.0, 'cold_step': med(cold, 'total') <= 4.0,
                'peak_rss': peak_gb <= 3.5},
        'allocator': host_memory.allocator_name(),
        'glibc_tunables': os.environ.get('GLIBC_TUNABLES'),
        'loadavg': os.getloadavg(),
        'per_step': {'cold': cold, 'warm': warm},
    }, indent=1))


if __name__ == '__main__':
    main()
