"""Architectures as graphs: trace any Flax module into the GHN computational graph (jraph GraphsTuple)."""
from ghn_jax.graphs.graph import ArchGraph, build_graph, shortest_paths
from ghn_jax.graphs.trace import PRIMITIVE_ID, PRIMITIVES, Node, UnsupportedLayerWarning

__all__ = ['ArchGraph', 'build_graph', 'shortest_paths', 'PRIMITIVES', 'PRIMITIVE_ID', 'Node',
           'UnsupportedLayerWarning', 'canonical_form']


def canonical_form(graph: dict) -> tuple:
    """Order-independent form of a reference-schema graph dict (``ArchGraph.to_reference_json()`` or a golden
    ``graph.json``): sorted node labels and sorted labelled edges. Two graphs are equal up to node order iff their
    canonical forms are equal (labels: parameter name, else primitive + shape, refined by neighbourhoods)."""
    import hashlib
    nodes = graph['nodes']
    label = [n['param'] or f"{n['primitive']}{n['shape']}" for n in nodes]
    preds = [[] for _ in nodes]
    succs = [[] for _ in nodes]
    for s, d, k in graph['edges']:
        if k == 1:
            preds[d].append(s)
            succs[s].append(d)
    for _ in range(4):  # Weisfeiler-Lehman refinement (parameter names already make most labels unique)
        label = [hashlib.sha1(repr((label[i], sorted(label[p] for p in preds[i]),
                                    sorted(label[s] for s in succs[i]))).encode()).hexdigest()[:16]
                 for i in range(len(nodes))]
    return (sorted(label), sorted((label[s], label[d], k) for s, d, k in graph['edges']))
