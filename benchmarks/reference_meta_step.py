"""The reference's meta-training step (ppuda, PyTorch) on the same replayed meta-batches as benchmarks/meta_train.py.

The reference's figure in ../shared/bench (6.34 s median) was taken on another machine in a quiet window; this
measures it on the machine at hand, so that ghn_jax's median can be compared as a ratio. The step is the
reference's ``Trainer.update``: GHN-2 predicts the 8 nets' parameters from their graphs, each net runs on the same
64 random 32x32 images, the mean cross-entropy is back-propagated through the nets and the GHN, gradients are
clipped to norm 5 and Adam steps. Graphs are built before the step (the reference's data loader builds them in
worker processes). Like benchmarks/meta_train.py: steps 0-1 warm up, steps 2-13 are timed twice, and the second
("warm") pass is reported with its forward/backward split. Peak RSS is the process's.

Needs PyTorch (CPU) and a checkout of facebookresearch/ppuda (``--ppuda``; nothing of it is copied here).

    python benchmarks/reference_meta_step.py --ppuda /path/to/ppuda [--steps 2-13]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

from reference_side_by_side import _import_reference   # benchmarks/ is on the path when this file runs as a script
from machine import machine_info  # benchmarks/ is on the path when run as a script

# The replayed meta-batches of benchmarks/meta_train.py (not imported from there: that would load jax and ghn_jax into
# this process and add their ~0.2 GB to the reference's peak RSS).
BENCH = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'bench', 'deepnets_train_metabatches.json')


def build_nets(step_nets: list[dict], Network, Genotype, Graph, GraphBatch):
    """The step's nets as the reference trains them (``light=True``: parameters as plain tensors the GHN writes
    into) and their graphs (which the reference's loader builds from the same nets with ``light=False``)."""
    nets, graphs = [], []
    for arch in step_nets:
        g = arch['genotype']
        genotype = Genotype(normal=[tuple(o) for o in g['normal']], normal_concat=g['normal_concat'],
                            reduce=[tuple(o) for o in g['reduce']], reduce_concat=g['reduce_concat'])
        args = dict({k: v for k, v in arch.items() if k != 'genotype'}, num_classes=10, genotype=genotype,
                    is_imagenet_input=False)
        graphs.append(Graph(Network(**args), ve_cutoff=50))
        nets.append(Network(light=True, **args))
    return nets, GraphBatch(graphs).to_device('cpu')   # as the reference's trainer does before the GHN


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--ppuda', required=True, help='path to a checkout of facebookresearch/ppuda')
    parser.add_argument('--bench', default=BENCH)
    parser.add_argument('--steps', default='2-13')
    args = parser.parse_args()
    lo, hi = (int(s) for s in args.steps.split('-'))

    import torch
    Graph, GHN = _import_reference(args.ppuda)
    from ppuda.deepnets1m.genotypes import Genotype
    from ppuda.deepnets1m.graph import GraphBatch
    from ppuda.deepnets1m.net import Network

    with open(args.bench) as f:
        batches = {b['step']: b['nets'] for b in json.load(f)}
    torch.manual_seed(0)
    ghn = GHN(max_shape=(64, 64, 11, 11), num_classes=10, hid=32, ve=True, layernorm=True, weight_norm=True)
    ghn.train()
    optimizer = torch.optim.Adam(ghn.parameters(), lr=1e-3, weight_decay=1e-5)
    images, labels = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    criterion = torch.nn.CrossEntropyLoss()

    def step(s: int) -> dict:
        nets, graphs = build_nets(batches[s], Network, Genotype, Graph, GraphBatch)
        t0 = time.perf_counter()
        optimizer.zero_grad()
        nets = ghn(nets, graphs)
        t1 = time.perf_counter()
        outs = [net(images) for net in nets]   # (logits, auxiliary logits) tuples, as the trainer reads them
        loss = sum(criterion(o[0] if isinstance(o, tuple) else o, labels) for o in outs) / len(nets)
        t2 = time.perf_counter()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ghn.parameters(), 5.0)
        optimizer.step()
        t3 = time.perf_counter()
        row = {'step': s, 'total': t3 - t0, 'ghn_forward': t1 - t0, 'nets_forward': t2 - t1,
               'backward_and_optimizer': t3 - t2, 'loss': float(loss)}
        print(f"reference step {s}: {row['total']:.2f} s", file=sys.stderr, flush=True)
        return row

    for s in range(lo):
        step(s)
    cold = [step(s) for s in range(lo, hi + 1)]
    warm = [step(s) for s in range(lo, hi + 1)]
    keys = ('total', 'ghn_forward', 'nets_forward', 'backward_and_optimizer')
    result = {'benchmark': 'reference_meta_train_step', 'machine': machine_info(), 'implementation': 'ppuda (PyTorch)',
              'torch': torch.__version__, 'threads': torch.get_num_threads(), 'steps': f'{lo}-{hi}',
              'cold_median_s': {k: round(statistics.median(r[k] for r in cold), 3) for k in keys},
              'warm_median_s': {k: round(statistics.median(r[k] for r in warm), 3) for k in keys},
              'peak_rss_gb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
              'loadavg': os.getloadavg(), 'per_step': {'cold': cold, 'warm': warm}}
    print(json.dumps(result, indent=1))
    return result


if __name__ == '__main__':
    main()
