"""``python -m ghn_jax.predict [--ghn CKPT] --arch ARCH.json --out predicted.npz [--reference-names]``.

Predicts every parameter of the architecture described by ARCH.json (golden ``arch.json`` schema, see
:func:`ghn_jax.nets.from_arch_json`) with the GHN in CKPT and saves them as an ``.npz``: keys are ghn_jax parameter
paths joined by ``/`` (Flax layouts), or PyTorch names and layouts with ``--reference-names``. Without ``--ghn``,
the GHN-2 meta-trained on Fashion-MNIST that ships in the repository's ``checkpoints/`` (32x32 inputs, 10 classes).

The GHN's compiled executables are kept in a persistent cache (``--compilation-cache``, default
``~/.cache/ghn_jax/xla``; an empty value turns it off), so later runs skip the compile.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import flax
import numpy as np

from ghn_jax import compilation_cache
from ghn_jax.hypernet.predictor import GHN2
from ghn_jax.nets import from_arch_json, to_torch_state_dict


#: The shipped GHN-2 (docs/meta_training.md), found where a checkout or an editable install keeps it.
SHIPPED_GHN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'checkpoints',
                           'ghn2_fashion_mnist.npz')


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--ghn', default=SHIPPED_GHN,
                        help='GHN checkpoint (.npz, reference .pt, or training workdir); default: the shipped '
                             'Fashion-MNIST GHN-2 of the repository')
    parser.add_argument('--arch', required=True, help='architecture description (json)')
    parser.add_argument('--out', required=True, help='output .npz')
    parser.add_argument('--reference-names', action='store_true', help='PyTorch names and layouts')
    parser.add_argument('--no-classifier', action='store_true', help='do not predict the classifier layer')
    parser.add_argument('--compilation-cache', default=compilation_cache.DEFAULT_DIR,
                        help='directory of the persistent XLA cache ("" turns it off)')
    args = parser.parse_args(argv)
    if args.ghn == SHIPPED_GHN and not os.path.exists(SHIPPED_GHN):
        parser.error(f'the shipped GHN is not at {SHIPPED_GHN} (it lives in the repository\'s checkpoints/, which a '
                     'non-editable install leaves out): pass --ghn with a checkpoint')
    start = time.perf_counter()
    if args.compilation_cache:
        compilation_cache.enable(args.compilation_cache)
    ghn = GHN2.from_checkpoint(args.ghn)
    with open(args.arch) as f:
        module, shape = from_arch_json(json.load(f))
    pred = ghn.predict(module, shape, predict_class_layers=not args.no_classifier, return_embeddings=True)
    if args.reference_names:
        arrays = to_torch_state_dict(pred.params)
    else:
        arrays = {'/'.join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(pred.params).items()}
    np.savez(args.out, **arrays)
    summary = {'out': args.out, 'tensors': len(arrays), 'params': int(sum(a.size for a in arrays.values())),
               'nodes': pred.graph.n_nodes, 'pruned': len(pred.graph.pruned),
               'unsupported': len(pred.graph.unsupported), 'seconds': round(time.perf_counter() - start, 3)}
    print(json.dumps(summary))
    return summary


if __name__ == '__main__':
    main(sys.argv[1:])
