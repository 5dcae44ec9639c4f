"""``python -m ghn_jax.graphs --arch ARCH.json --out graph.json [--png graph.png] [--ve-cutoff 50]``."""
from __future__ import annotations

import argparse
import json
import sys

from ghn_jax.graphs.graph import build_graph
from ghn_jax.nets import from_arch_json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description='Build the GHN graph of an architecture description.')
    parser.add_argument('--arch', required=True, help='architecture json (golden arch.json schema)')
    parser.add_argument('--out', required=True, help='where to write the graph (reference graph.json schema)')
    parser.add_argument('--png', help='optional picture of the graph')
    parser.add_argument('--ve-cutoff', type=int, default=50)
    args = parser.parse_args(argv)
    with open(args.arch) as f:
        module, shape = from_arch_json(json.load(f))
    graph = build_graph(module, shape, ve_cutoff=args.ve_cutoff)
    graph.save_json(args.out)
    if args.png:
        graph.plot(args.png)
    print(json.dumps({'nodes': graph.n_nodes, 'real_edges': len(graph.real_edges),
                      'virtual_edges': len(graph.edges) - len(graph.real_edges), 'pruned': len(graph.pruned),
                      'unsupported': len(graph.unsupported), 'out': args.out}))


if __name__ == '__main__':
    main(sys.argv[1:])
