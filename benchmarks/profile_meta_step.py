"""Where a warm meta-step spends its time, by op type and input shape (prints JSON).

Replays ../shared/bench/deepnets_train_metabatches.json as ``benchmarks/meta_train.py`` does, once to fill the op
cache, then again with every op executable (forward and backward, by module type and input shape) and every eager
call outside the ops (glue between ops, loss, the GHN's jitted pieces) waited for and timed. Waiting serialises the
step, so the totals exceed a normal step's; the shares are what to read.

    python benchmarks/profile_meta_step.py [--steps 2-7] [--top 30]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import core  # noqa: internal, the eager primitive hook has no public API

from ghn_jax import host_memory
from ghn_jax.hypernet.ghn import GHN
from machine import machine_info  # benchmarks/ is on the path when run as a script
from ghn_jax.hypernet.predictor import init_params
from ghn_jax.train import executor, meta_train
from ghn_jax.train.config import base_config

from meta_train import BENCH, load_step  # benchmarks/meta_train.py

SECONDS: dict[tuple, float] = collections.defaultdict(float)
CALLS: collections.Counter = collections.Counter()
ACTIVE = [False]


def _timed(key: tuple, fn, *args):
    if not ACTIVE[0]:
        return fn(*args)
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    SECONDS[key] += time.perf_counter() - t
    CALLS[key] += 1
    return out


def _instrument() -> None:
    """Wrap the executor's op executables and the eager primitive hook with :func:`_timed`."""
    op_forward, op_backward, process_primitive = executor._op_forward, executor._op_backward, \
        core.EvalTrace.process_primitive
    kind_of_tree = {}

    def forward(module, remat, signature, params, args):
        kind = (type(module).__name__, str(signature[3][-1][0]))   # the op's type and its input's shape
        out = _timed(('forward',) + kind, op_forward, module, remat, signature, params, args)
        kind_of_tree[id(executor._PULLBACK_LAYOUTS[signature][0])] = kind
        return out

    def backward(tree, *rest):
        return _timed(('backward',) + kind_of_tree.get(id(tree), ('?', '')), op_backward, tree, *rest)

    def primitive(trace, prim, tracers, params):
        shape = str(tuple(getattr(tracers[0], 'shape', ()))) if tracers else '()'
        name = f"{prim.name}:{params.get('name')}" if prim.name in ('jit', 'pjit') else prim.name
        return _timed(('eager', name, shape), process_primitive, trace, prim, tracers, params)

    executor._op_forward, executor._op_backward = forward, backward
    core.EvalTrace.process_primitive = primitive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', default='2-7', help='profiled steps (steps before them only warm up)')
    parser.add_argument('--top', type=int, default=30, help='how many (op, shape) rows to print')
    args = parser.parse_args()
    host_memory.use_tcmalloc()
    lo, hi = (int(s) for s in args.steps.split('-'))
    with open(BENCH) as f:
        batches = {b['step']: b['nets'] for b in json.load(f)}
    config = base_config()
    cfg = meta_train.ghn_config(config)
    ghn, params = GHN(cfg), init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((64, 32, 32, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, 64).astype(np.int32))
    loaded = {s: load_step(batches[s], cfg) for s in range(hi + 1)}
    _instrument()

    def step(s: int) -> float:
        t = time.perf_counter()
        jax.block_until_ready(meta_train.meta_step_grads(ghn, params, loaded[s][1], loaded[s][0], x, y).grads)
        host_memory.release()
        return time.perf_counter() - t

    for s in range(hi + 1):   # fills the op cache
        step(s)
    warm = [step(s) for s in range(lo, hi + 1)]
    ACTIVE[0] = True
    timed = [step(s) for s in range(lo, hi + 1)]
    ACTIVE[0] = False
    n = len(timed)
    by_kind = collections.defaultdict(float)
    for (part, kind, _), seconds in SECONDS.items():
        by_kind[f'{part} {kind}'] += seconds / n
    rows = sorted(SECONDS.items(), key=lambda kv: -kv[1])[:args.top]
    print(json.dumps({
        'benchmark': 'meta_step_profile', 'machine': machine_info(), 'steps': f'{lo}-{hi}',
        'warm_median_s': round(float(np.median(warm)), 3),
        'instrumented_median_s': round(float(np.median(timed)), 3),
        'seconds_per_step_by_kind': {k: round(v, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])
                                     if v >= 0.005},
        'top_op_shapes': [{'part': p, 'kind': k, 'input': s, 'seconds_per_step': round(v / n, 3),
                           'calls_per_step': round(CALLS[(p, k, s)] / n, 1)} for (p, k, s), v in rows],
        'allocator': host_memory.allocator_name(), 'loadavg': os.getloadavg(),
    }, indent=1))


if __name__ == '__main__':
    main()
