"""ghn_jax vs the reference (ppuda, PyTorch), timed side by side in one process on the same machine; prints JSON.

The reference figures in ../shared/bench were measured in a quiet window; this machine is shared and its speed
drifts by up to ~1.7x from minute to minute. Timing both implementations in alternating rounds puts them in the same
conditions, so the ratio of their medians is what to compare.

What is timed, for ResNet-50 (CIFAR-adjusted: first conv 3x3 stride 1, no max-pool; 10 classes):

* ``graph_build``: the reference's ``Graph(model, ve_cutoff=50)`` vs ``ghn_jax.graphs.build_graph(module, ...,
  cache=False)``: the computational graph with virtual edges.
* ``predict``: the reference's ``GHN(...)(model)`` in eval mode (graph built on the fly, all parameters predicted
  and set into the model) vs ``GHN2.predict(module)`` with the graph cache cleared before every call. Both GHNs are
  the released CIFAR-10 GHN-2 configuration (hid 32, virtual edges 50, LayerNorm, weight normalisation); the
  reference's is randomly initialised, ghn_jax's has the golden weights (speed does not depend on the values).

Needs PyTorch (CPU), networkx, matplotlib and einops, and a checkout of facebookresearch/ppuda given by ``--ppuda``
(nothing of it is copied here; torchvision is stubbed when it cannot be imported: the graph code only needs it for
one ``isinstance`` check). The PyTorch ResNet-50 is written below with torchvision's module names.

Usage: python benchmarks/reference_side_by_side.py --ppuda /path/to/ppuda [--rounds 15] [--fresh-runs 3]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import types

from graph_build import summary          # benchmarks/ is on the path when this file runs as a script
from machine import machine_info
from predict import _FRESH, CKPT, ROOT


def _import_reference(ppuda_dir: str):
    sys.path.insert(0, ppuda_dir)
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or built for another torch: a stub with the one name the graph code checks
        tv = types.ModuleType('torchvision')
        tv.__version__ = '0 (stub)'
        models = types.ModuleType('torchvision.models')
        vit = types.ModuleType('torchvision.models.vision_transformer')
        vit.VisionTransformer = type('VisionTransformer', (), {})
        models.vision_transformer, tv.models = vit, models
        sys.modules.update({'torchvision': tv, 'torchvision.models': models,
                            'torchvision.models.vision_transformer': vit})
    with contextlib.redirect_stdout(sys.stderr):   # its import prints a torchvision version note; stdout is JSON
        from ppuda.deepnets1m.graph import Graph
        from ppuda.ghn.nn import GHN
    return Graph, GHN


def torch_resnet50_cifar(num_classes: int = 10):
    """ResNet-50 in PyTorch with torchvision's parameter names, CIFAR-adjusted as the reference adjusts it."""
    import torch.nn as nn

    class Bottleneck(nn.Module):
        def __init__(self, inplanes, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(4 * planes)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or inplanes != 4 * planes:
                self.downsample = nn.Sequential(nn.Conv2d(inplanes, 4 * planes, 1, stride, bias=False),
                                                nn.BatchNorm2d(4 * planes))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.expected_input_sz = 32
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            inplanes = 64
            for i, (planes, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]):
                layer = []
                for b in range(blocks):
                    layer.append(Bottleneck(inplanes, planes, stride if b == 0 else 1))
                    inplanes = 4 * planes
                setattr(self, f'layer{i + 1}', nn.Sequential(*layer))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2048, num_classes)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    return ResNet50()


# The reference's fresh process (argv: this file's directory, the ppuda checkout).
_REFERENCE_FRESH = r'''
import sys
sys.path.insert(0, sys.argv[1])
import reference_side_by_side as bench
Graph, GHN = bench._import_reference(sys.argv[2])
ghn = GHN(max_shape=(64, 64, 11, 11), num_classes=10, hid=32, ve=True, layernorm=True, weight_norm=True).eval()
ghn(bench.torch_resnet50_cifar())
'''


def fresh_processes(ppuda_dir: str, runs: int) -> dict:
    """Wall clock of ``runs`` fresh processes of each implementation, alternating."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    argv = {'reference': [sys.executable, '-c', _REFERENCE_FRESH, here, ppuda_dir],
            'ghn_jax': [sys.executable, '-c', _FRESH, CKPT, '']}

    def spawn(name):
        return lambda: subprocess.run(argv[name], capture_output=True, text=True, env=env, check=True)
    return alternate({name: spawn(name) for name in argv}, runs)


def alternate(fns: dict, rounds: int) -> dict:
    """Time each function once per round, in alternating order; per-function wall-clock summaries."""
    times = {name: [] for name in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(reversed(list(fns)))
        for name in order:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return {name: summary(v) for name, v in times.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--ppuda', required=True, help='path to a checkout of facebookresearch/ppuda')
    parser.add_argument('--rounds', type=int, default=15)
    parser.add_argument('--fresh-runs', type=int, default=3, help='fresh processes of each (0: skip)')
    parser.add_argument('--no-predict', action='store_true')
    args = parser.parse_args(argv)

    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    Graph, GHN = _import_reference(args.ppuda)
    import jax

    from ghn_jax import nets
    from ghn_jax.graphs import build_graph, graph as graph_module
    from ghn_jax.hypernet.predictor import GHN2

    torch_net = torch_resnet50_cifar()
    module, shape = nets.resnet50(10, cifar=True), (1, 32, 32, 3)
    ref_graph = Graph(torch_net, ve_cutoff=50)
    ours = build_graph(module, shape, ve_cutoff=50, cache=False)
    result = {
        'model': 'resnet50 (CIFAR-adjusted, 10 classes)',
        'graphs': {'reference_nodes': len(ref_graph.node_feat), 'ghn_jax_nodes': ours.n_nodes,
                   'reference_edges': int(len(ref_graph.edges)), 'ghn_jax_edges': int(len(ours.edges))},
        'graph_build': alternate({'reference': lambda: Graph(torch_net, ve_cutoff=50),
                                  'ghn_jax': lambda: build_graph(module, shape, ve_cutoff=50, cache=False)},
                                 args.rounds),
    }
    if not args.no_predict:
        ref_ghn = GHN(max_shape=(64, 64, 11, 11), num_classes=10, hid=32, ve=True, layernorm=True,
                      weight_norm=True).eval()
        ghn = GHN2.from_checkpoint(CKPT)

        def ref_predict():   # no torch.no_grad(): the reference builds its graph from the autograd graph
            ref_ghn(torch_net)

        def our_predict():
            graph_module._cached_build.cache_clear()
            jax.block_until_ready(ghn.predict(module, shape))

        ref_predict(), our_predict()   # warm-up (ghn_jax compiles its GHN once here)
        result['predict'] = alternate({'reference': ref_predict, 'ghn_jax': our_predict}, args.rounds)
    if args.fresh_runs:
        result['fresh_process'] = fresh_processes(args.ppuda, args.fresh_runs)
    for key in ('graph_build', 'predict', 'fresh_process'):
        if key in result:
            r = result[key]
            result[key]['ghn_jax_to_reference_median'] = r['ghn_jax']['median_s'] / r['reference']['median_s']
    result['machine'] = {**machine_info(), 'loadavg': os.getloadavg(), 'torch': torch.__version__,
                         'note': 'both timed in alternating rounds in one process; compare the ratio'}
    print(json.dumps(result, indent=2))
    return result


if __name__ == '__main__':
    main()
