"""Parameter prediction speed and memory (issue #3): GHN-2 (golden CIFAR-10 weights) on ResNet-50; prints JSON.

Sections of the output:

* ``fresh_process``: a new interpreter imports ghn_jax, loads the golden GHN-2, builds the ResNet-50 (CIFAR) graph,
  compiles and predicts all parameters once; timed from outside (wall clock, spawn included), with the child's
  CPU time and peak RSS (``getrusage(RUSAGE_CHILDREN)``) and its own breakdown. ``--runs`` such processes, median.
  With ``--compile-cache`` the same is repeated with jax's persistent compilation cache in a temporary directory
  (the first of those runs fills it). `python -m ghn_jax.predict` keeps such a cache by default, the library does
  not (`ghn_jax.compilation_cache.enable()`); the main figure is always without it.
* ``warm``: medians over ``--repeats`` in this process, after a first prediction:
  ``predict_with_graph_build`` (the graph cache cleared before every call: what the reference's 0.168 s measures),
  ``predict_cached_graph`` (``GHN2.predict`` as called twice on the same module), and the parts: ``graph_build``
  (uncached), ``pack`` (host arrays), ``ghn_forward`` (the jitted GHN alone), ``assemble`` (tiling and
  normalisation into a pooled block of host memory and the transfer to the device, as ``GHN2.predict`` does).
* ``scaling``: the jitted GHN forward for DeepNets-1M graphs of about 50 to 800 nodes (test and deep splits):
  real nodes, the padded budget, compile time of the budget and the warm median of the forward.
* ``warm_process_peak_rss_gb``: peak RSS of this (benchmark) process, which also holds every scaling graph.

The machine is shared and noisy (2 cores): wall clock includes waiting for other processes; ``loadavg`` is recorded
and CPU times are given where they are meaningful. Compare with the reference as ratios.

Reference (ppuda, PyTorch, same machine type, quiet): predict 0.155 / 0.168 / 0.192 s (graph build + GHN forward),
peak RSS 0.86 GB; fresh process 4.13 s, 0.6 GB.

Usage: python benchmarks/predict.py [--repeats 9] [--runs 3] [--compile-cache] [--no-scaling]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from machine import machine_info  # benchmarks/ is on the path when run as a script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.environ.get('GHN_GOLDEN', os.path.join(os.path.dirname(ROOT), 'shared', 'golden', 'ghn2'))
CKPT = os.path.join(GOLDEN, 'ghn2_cifar10_random.npz')

REFERENCE = {'predict_median_s': 0.168, 'predict_min_s': 0.155, 'predict_max_s': 0.192, 'predict_peak_rss_gb': 0.86,
             'fresh_process_s': 4.13, 'fresh_process_rss_gb': 0.6, 'source': '/work/shared/bench/README.md'}
TARGETS = {'warm_median_s': 0.05, 'fresh_process_s': 4.0, 'peak_rss_gb': 0.86}

# The child of the fresh-process measurement. It prints its own breakdown; the total is timed from outside.
_FRESH = r'''
import json, sys, time
t0 = time.perf_counter()
if len(sys.argv) > 2 and sys.argv[2]:
    import jax
    jax.config.update('jax_compilation_cache_dir', sys.argv[2])
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
compiles = []
if len(sys.argv) > 3:
    import logging, jax
    jax.config.update('jax_log_compiles', True)
    class Count(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if msg.startswith('Finished XLA compilation of '):
                compiles.append(msg.split(' in ')[0][len('Finished XLA compilation of '):])
    logging.getLogger('jax').addHandler(Count())
import jax
from ghn_jax import nets
from ghn_jax.hypernet.predictor import GHN2
t1 = time.perf_counter()
ghn = GHN2.from_checkpoint(sys.argv[1])
t2 = time.perf_counter()
module = nets.resnet50(10, cifar=True)
params = jax.block_until_ready(ghn.predict(module, (1, 32, 32, 3)))
t3 = time.perf_counter()
n = sum(p.size for p in jax.tree_util.tree_leaves(params))
print(json.dumps({'import_s': t1 - t0, 'load_ghn_s': t2 - t1, 'build_compile_predict_s': t3 - t2,
                  'n_params': int(n), 'xla_compiles': compiles or None}))
'''


def _median(values):
    return statistics.median(values) if values else None


def fresh_process(runs: int, cache_dir: str | None = None, count_compiles: bool = False) -> dict:
    """Spawn ``runs`` children one after the other; wall clock from outside, CPU and peak RSS from getrusage."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    rows = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        argv = [sys.executable, '-c', _FRESH, CKPT, cache_dir or ''] + (['count'] if count_compiles else [])
        t = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row.update(wall_s=wall, cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
                   loadavg=os.getloadavg()[0])
        rows.append(row)
    # ru_maxrss of RUSAGE_CHILDREN is the largest peak of any child so far (KiB on Linux).
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20
    keys = ('wall_s', 'cpu_s', 'import_s', 'load_ghn_s', 'build_compile_predict_s')
    return {'median': {k: _median([r[k] for r in rows]) for k in keys}, 'peak_rss_gb_max_over_children': peak_gb,
            'runs': rows}


def _timed(fn, repeats: int) -> dict:
    import jax
    wall = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        wall.append(time.perf_counter() - t)
    return {'median_s': _median(wall), 'min_s': min(wall), 'max_s': max(wall), 'n': repeats}


def warm(repeats: int) -> dict:
    import jax
    import numpy as np

    from ghn_jax import nets
    from ghn_jax.graphs import build_graph, graph as graph_module
    from ghn_jax.hypernet.ghn import HOST_OUTPUTS, assemble_host, param_specs
    from ghn_jax.hypernet import tiling
    from ghn_jax.hypernet.predictor import GHN2, apply_ghn
    from ghn_jax.hypernet.transfer import put_on_default_device

    ghn = GHN2.from_checkpoint(CKPT)
    module, shape = nets.resnet50(10, cifar=True), (1, 32, 32, 3)
    t = time.perf_counter()
    params = jax.block_until_ready(ghn.predict(module, shape))
    first = time.perf_counter() - t
    graph = ghn.graph(module, shape)
    batch, layouts = ghn.pack([graph])
    out = jax.block_until_ready(apply_ghn(ghn.module, ghn.params, batch))
    host = {k: np.asarray(out[k]) for k in HOST_OUTPUTS}
    specs = param_specs(graph, layouts[0])

    def uncached_predict():
        graph_module._cached_build.cache_clear()
        return ghn.predict(module, shape)

    result = {
        'first_predict_in_process_s': first,
        'n_params': int(sum(p.size for p in jax.tree_util.tree_leaves(params))),
        'graph': {'nodes': graph.n_nodes, 'edges': int(len(graph.edges))},
        'budget': {'nodes': int(batch.primitive.shape[1]), 'positions': int(batch.pos_node.shape[0])},
        'predict_with_graph_build': _timed(uncached_predict, repeats),
        'predict_cached_graph': _timed(lambda: ghn.predict(module, shape), repeats),
        'graph_build': _timed(lambda: build_graph(module, shape, ve_cutoff=50, cache=False), repeats),
        'pack': _timed(lambda: ghn.pack([graph])[0].adj, repeats),
        'ghn_forward': _timed(lambda: apply_ghn(ghn.module, ghn.params, batch), repeats),
        'assemble': _timed(lambda: put_on_default_device(assemble_host(
            host, specs, 0, ghn.config.weight_norm, tiling.Arena([s.shape for s in specs], pool=ghn._blocks))),
            repeats),
    }
    return result


def scaling(repeats: int, targets=(50, 100, 200, 400, 800)) -> list[dict]:
    """GHN forward vs graph size: for each target, the DeepNets-1M test/deep architecture (indices 0-99) whose
    graph node count is closest; real graphs are traced, padded to the power-of-two budget and timed."""
    import jax

    from ghn_jax import nets
    from ghn_jax.nets import deepnets_generator as dg
    from ghn_jax.hypernet.predictor import GHN2, apply_ghn

    ghn = GHN2.from_checkpoint(CKPT)
    pool = [(split, i, dg.count_graph_nodes(dg.sample(split, i))) for split in ('test', 'deep') for i in range(100)]
    rows = []
    for target in targets:
        split, index, _ = min(pool, key=lambda r: abs(r[2] - target))
        module, shape = nets.from_arch_json(dg.sample(split, index))
        t = time.perf_counter()
        graph = ghn.graph(module, shape)
        build = time.perf_counter() - t
        batch, _ = ghn.pack([graph])
        t = time.perf_counter()
        jax.block_until_ready(apply_ghn(ghn.module, ghn.params, batch))
        first = time.perf_counter() - t
        fwd = _timed(lambda: apply_ghn(ghn.module, ghn.params, batch), repeats)
        rows.append({'target_nodes': target, 'arch': f'{split}/{index}', 'nodes': graph.n_nodes,
                     'edges': int(len(graph.edges)), 'budget_nodes': int(batch.primitive.shape[1]),
                     'budget_positions': int(batch.pos_node.shape[0]), 'graph_build_s': build,
                     'first_forward_incl_compile_s': first, 'ghn_forward_median_s': fwd['median_s'],
                     'ghn_forward_min_s': fwd['min_s']})
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=9)
    parser.add_argument('--runs', type=int, default=3, help='fresh processes')
    parser.add_argument('--compile-cache', action='store_true', help='also time with a persistent compile cache')
    parser.add_argument('--no-scaling', action='store_true')
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    result = {'benchmark': 'predict', 'machine': machine_info(),
              'model': 'resnet50 (CIFAR-adjusted, 10 classes), all parameters', 'ghn': CKPT}
    result['fresh_process'] = fresh_process(args.runs)
    result['fresh_process_compiles'] = fresh_process(1, count_compiles=True)['runs'][0]['xla_compiles']
    if args.compile_cache:
        with tempfile.TemporaryDirectory() as d:
            fill = fresh_process(1, cache_dir=d)
            hit = fresh_process(args.runs, cache_dir=d)
        result['fresh_process_with_compile_cache'] = {'filling_run_wall_s': fill['median']['wall_s'],
                                                      'median': hit['median'], 'runs': hit['runs']}
    result['warm'] = warm(args.repeats)
    if not args.no_scaling:
        result['scaling'] = scaling(args.repeats)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    result['warm_process_peak_rss_gb'] = peak_gb

    w = result['warm']
    fresh_wall = result['fresh_process']['median']['wall_s']
    result['reference'] = REFERENCE
    result['ratios'] = {
        'predict_with_graph_build_to_reference': w['predict_with_graph_build']['median_s'] / REFERENCE['predict_median_s'],
        'predict_cached_graph_to_reference': w['predict_cached_graph']['median_s'] / REFERENCE['predict_median_s'],
        'fresh_process_to_reference': fresh_wall / REFERENCE['fresh_process_s'],
    }
    result['targets'] = {
        'warm_median_le_0.05s (graph build included)': w['predict_with_graph_build']['median_s'] <= TARGETS['warm_median_s'],
        'warm_median_le_0.05s (cached graph)': w['predict_cached_graph']['median_s'] <= TARGETS['warm_median_s'],
        'fresh_process_le_4s': fresh_wall <= TARGETS['fresh_process_s'],
        'peak_rss_le_0.86GB (fresh process)':
            result['fresh_process']['peak_rss_gb_max_over_children'] <= TARGETS['peak_rss_gb'],
        'peak_rss_le_0.86GB (this process, incl. scaling graphs)': peak_gb <= TARGETS['peak_rss_gb'],
    }
    result['machine'] = {'cpus': os.cpu_count(), 'loadavg_before': load_before, 'loadavg_after': os.getloadavg(),
                         'note': 'shared, noisy machine: wall times include waiting for other processes'}
    print(json.dumps(result, indent=2))
    return result


if __name__ == '__main__':
    main()
