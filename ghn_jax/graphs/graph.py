"""``ArchGraph``: the computational graph a GHN reads, built from any Flax module.

Nodes are in topological order (node 0 is the input; a model whose last layer is a dense layer with bias ends with
the classifier weight and bias). Edges are ``(src, dst, s)``: ``s = 1`` for real edges along the data flow,
``2 <= s <= ve_cutoff`` for virtual edges between an ancestor and a descendant at directed shortest-path distance
``s`` (spec section 3).
"""
from __future__ import annotations

import dataclasses
import functools
import gc
import json
import warnings
from typing import Any

import flax.linen as nn
import jraph
import numpy as np

from ghn_jax.graphs.trace import PRIMITIVE_ID, PRIMITIVES, Node, Path, UnsupportedLayerWarning, trace_module
from ghn_jax.nets.torch_names import torch_name


@dataclasses.dataclass
class ArchGraph:
    """A GHN graph plus the bookkeeping that maps nodes to parameters of the module."""
    nodes: list[Node]
    edges: np.ndarray                   # (E, 3) int32 rows (src, dst, s), row-major sorted
    ve_cutoff: int
    param_shapes: dict[Path, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    pruned: list[Path] = dataclasses.field(default_factory=list)
    unsupported: list[Path] = dataclasses.field(default_factory=list)

    # ---------------------------------------------------------------- basic views
    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def primitive_ids(self) -> np.ndarray:
        return np.array([PRIMITIVE_ID[n.primitive] for n in self.nodes], np.int32)

    @property
    def real_edges(self) -> np.ndarray:
        return self.edges[self.edges[:, 2] == 1]

    def adjacency(self) -> np.ndarray:
        """Dense (N, N) uint8 matrix: 0 = no edge, 1 = real edge, s = virtual edge at distance s."""
        a = np.zeros((self.n_nodes, self.n_nodes), np.uint8)
        a[self.edges[:, 0], self.edges[:, 1]] = self.edges[:, 2]
        return a

    def predicted_params(self) -> dict[Path, int]:
        """``{param path: node index}`` for every parameter written from a node (kernels, biases, gains, shifts)."""
        out = {}
        for i, n in enumerate(self.nodes):
            for p in (n.param, n.shift):
                if p is not None:
                    out[p] = i
        return out

    def to_graphs_tuple(self) -> jraph.GraphsTuple:
        """The graph as a ``jraph.GraphsTuple`` (numpy arrays; node features: primitive id, edge features: s)."""
        return jraph.GraphsTuple(
            nodes={'primitive': self.primitive_ids},
            edges={'s': self.edges[:, 2].astype(np.int32)},
            senders=self.edges[:, 0].astype(np.int32), receivers=self.edges[:, 1].astype(np.int32),
            n_node=np.array([self.n_nodes], np.int32), n_edge=np.array([len(self.edges)], np.int32),
            globals=None)

    # ---------------------------------------------------------------- reference (ppuda golden) format
    def node_name(self, i: int) -> str:
        n = self.nodes[i]
        return torch_name(n.param) if n.param is not None else n.primitive

    def cell_of(self, i: int) -> int:
        n_cells = 1 + max([_cell_index(n.scope) or 0 for n in self.nodes] + [0])
        n = self.nodes[i]
        if n.role in ('classifier_weight', 'classifier_bias'):
            return n_cells - 1
        return _cell_index(n.scope) or 0

    def to_reference_json(self) -> dict[str, Any]:
        """The graph in the schema of ppuda's golden ``graph.json`` (PyTorch names and layouts)."""
        nodes = []
        for i, n in enumerate(self.nodes):
            d = {'index': i, 'primitive': n.primitive, 'primitive_id': PRIMITIVE_ID[n.primitive],
                 'name': self.node_name(i), 'shape': list(n.shape) if n.shape is not None else None,
                 'cell': self.cell_of(i), 'param': torch_name(n.param) if n.param is not None else None}
            if n.shift is not None:
                d['param_shift'] = torch_name(n.shift)
            if n.role:
                d['role'] = n.role
            nodes.append(d)
        real = int((self.edges[:, 2] == 1).sum())
        return {'ve_cutoff': self.ve_cutoff, 'n_nodes': self.n_nodes, 'n_edges': len(self.edges),
                'n_edges_real': real, 'n_edges_virtual': len(self.edges) - real,
                'max_s': int(self.edges[:, 2].max()) if len(self.edges) else 0, 'primitives': list(PRIMITIVES),
                'nodes': nodes, 'edges': self.edges.tolist()}

    @classmethod
    def from_reference_json(cls, d: dict[str, Any], name_to_path: dict[str, Path] | None = None) -> 'ArchGraph':
        """Load a ppuda-style ``graph.json``; ``name_to_path`` maps PyTorch names to ghn_jax paths (optional)."""
        lookup = (lambda n: None if n is None else (name_to_path[n] if name_to_path else tuple(n.split('.'))))
        nodes = [Node(n['primitive'], tuple(n['shape']) if n.get('shape') is not None else None,
                      lookup(n.get('param')), lookup(n.get('param_shift')), (), n.get('role')) for n in d['nodes']]
        edges = np.asarray(d['edges'], np.int32).reshape(-1, 3)
        return cls(nodes, edges, int(d.get('ve_cutoff', 50)))

    def save_json(self, path: str) -> None:
        with open(path, 'w') as f:
            json.dump(self.to_reference_json(), f)

    # ---------------------------------------------------------------- pictures
    def plot(self, path: str, virtual: bool = False, figsize=(12, 12)) -> None:
        """Draw the graph (nodes coloured by primitive, laid out by depth) into an image file."""
        import matplotlib
        matplotlib.use('Agg', force=False)
        import matplotlib.pyplot as plt

        depth = _depths(self.n_nodes, self.real_edges)
        order = np.zeros(self.n_nodes)
        for lvl in np.unique(depth):
            idx = np.where(depth == lvl)[0]
            order[idx] = np.arange(len(idx)) - (len(idx) - 1) / 2
        fig, ax = plt.subplots(figsize=figsize)
        edges = self.edges if virtual else self.real_edges
        for s, d, k in edges:
            ax.plot([order[s], order[d]], [-depth[s], -depth[d]], color='0.6' if k == 1 else '0.9',
                    lw=0.6 if k == 1 else 0.2, zorder=1)
        cmap = plt.get_cmap('tab20')
        for p in sorted(set(n.primitive for n in self.nodes)):
            idx = [i for i, n in enumerate(self.nodes) if n.primitive == p]
            ax.scatter(order[idx], -depth[idx], s=40, color=cmap(PRIMITIVE_ID[p]), label=p, zorder=2,
                       edgecolors='k', linewidths=0.3)
        ax.legend(loc='upper right', fontsize=8)
        ax.set_axis_off()
        ax.set_title(f'{self.n_nodes} nodes, {len(self.real_edges)} edges')
        fig.savefig(path, dpi=120, bbox_inches='tight')
        plt.close(fig)


def _cell_index(scope: Path) -> int | None:
    for part in scope:
        if part.startswith('cells.'):
            try:
                return int(part.split('.')[1])
            except (IndexError, ValueError):
                return None
    return None


def _depths(n: int, edges: np.ndarray) -> np.ndarray:
    """Longest-path depth of every node of a DAG given in topological order."""
    depth = np.zeros(n, np.int64)
    for s, d in sorted(((int(s), int(d)) for s, d in edges[:, :2]), key=lambda e: e[1]):
        depth[d] = max(depth[d], depth[s] + 1)
    return depth


def shortest_paths(n: int, edges: np.ndarray, cutoff: int) -> np.ndarray:
    """Directed shortest-path lengths of a DAG in topological order (0 = unreachable or > cutoff)."""
    inf = np.iinfo(np.int32).max // 2
    dist = np.full((n, n), inf, np.int32)
    np.fill_diagonal(dist, 0)
    succ = [[] for _ in range(n)]
    for s, d in edges:
        succ[int(s)].append(int(d))
    for u in range(n - 1, -1, -1):  # successors of u come later in topological order
        for v in succ[u]:
            np.minimum(dist[u], dist[v] + 1, out=dist[u])
    dist[(dist > cutoff) | (dist == inf)] = 0
    np.fill_diagonal(dist, 0)
    return dist


def _remove_node(preds: dict, succs: dict, i: int) -> None:
    for p in preds[i]:
        succs[p].discard(i)
        succs[p].update(s for s in succs[i] if s != p)
    for s in succs[i]:
        preds[s].discard(i)
        preds[s].update(p for p in preds[i] if p != s)
    del preds[i], succs[i]


def _finalise(raw, ve_cutoff: int, warn: bool) -> ArchGraph:
    n_raw = len(raw.nodes)
    preds = {i: set() for i in range(n_raw)}
    succs = {i: set() for i in range(n_raw)}
    for s, d in raw.edges:
        preds[d].add(s)
        succs[s].add(d)
    # Dead code: keep ancestors of the output only.
    live, stack = set(raw.outputs), list(raw.outputs)
    while stack:
        for p in preds[stack.pop()]:
            if p not in live:
                live.add(p)
                stack.append(p)
    live.add(0)
    for i in range(n_raw):
        if i not in live:
            _remove_node(preds, succs, i)
    # Single-input sums and concats disappear (reference filtering rule).
    for i in range(n_raw):
        if i in preds and raw.nodes[i].primitive in ('sum', 'concat') and len(preds[i]) < 2:
            _remove_node(preds, succs, i)
    # Topological order (Kahn, ties broken by creation order = trace order); input first.
    indeg = {i: len(preds[i]) for i in preds}
    ready = sorted(i for i, k in indeg.items() if k == 0)
    order = []
    import heapq
    heapq.heapify(ready)
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for s in sorted(succs[i]):
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(ready, s)
    if len(order) != len(preds):
        raise ValueError('the traced graph has a cycle; weight sharing across a loop is not supported')
    # Keep the input first even if another source (positional encoding) has a smaller creation index.
    order.remove(0)
    order.insert(0, 0)
    new = {old: k for k, old in enumerate(order)}
    nodes = [dataclasses.replace(raw.nodes[i]) for i in order]
    real = np.array(sorted((new[s], new[d]) for s in preds for d in succs[s]), np.int32).reshape(-1, 2)
    # Classifier roles: the dense layer producing the output (weight, then bias if any).
    outs = [new[o] for o in raw.outputs if o in new]
    if len(outs) == 1:
        last = nodes[outs[0]]
        if last.primitive == 'bias':
            w = [s for s, d in real if d == outs[0]]
            if len(w) == 1 and nodes[w[0]].primitive == 'conv' and len(nodes[w[0]].shape) == 2:
                last.role = 'classifier_bias'
                nodes[w[0]].role = 'classifier_weight'
        elif last.primitive == 'conv' and last.shape is not None and len(last.shape) == 2:
            last.role = 'classifier_weight'
    dist = shortest_paths(len(nodes), real, ve_cutoff)
    src, dst = np.nonzero(dist)
    edges = np.stack([src, dst, dist[src, dst]], 1).astype(np.int32)
    predicted = {p for n in nodes for p in (n.param, n.shift) if p is not None}
    unsupported = sorted(set().union(*raw.unsupported.values()) - predicted) if raw.unsupported else []
    pruned = sorted(set(raw.param_shapes) - predicted - set(unsupported))
    graph = ArchGraph(nodes, edges, ve_cutoff, dict(raw.param_shapes), pruned, unsupported)
    if warn and unsupported:
        n_params = sum(int(np.prod(raw.param_shapes[p])) for p in unsupported)
        layers = sorted({'/'.join(p[:-1]) for p in unsupported})
        warnings.warn(f'unrecognised layers {layers[:8]}{" ..." if len(layers) > 8 else ""}: their {n_params} '
                      f'parameters ({len(unsupported)} tensors) have no graph node and will not be predicted. '
                      'Supported layers: nn.Conv, nn.Dense, BatchNorm, nn.LayerNorm, PosEnc.',
                      UnsupportedLayerWarning, stacklevel=3)
    return graph


def _build(module: nn.Module, input_shape: tuple[int, ...], ve_cutoff: int) -> ArchGraph:
    """Trace and finalise, with Python's cyclic garbage collector paused.

    Tracing allocates many short-lived objects; with jax and flax loaded the collector's full passes over the
    heap cost about a fifth of the build time. The pause is restored (and the garbage collected normally) after.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _finalise(trace_module(module, input_shape), ve_cutoff, warn=True)
    finally:
        if was_enabled:
            gc.enable()


@functools.lru_cache(maxsize=64)
def _cached_build(module: nn.Module, input_shape: tuple[int, ...], ve_cutoff: int) -> ArchGraph:
    return _build(module, input_shape, ve_cutoff)


def build_graph(module: nn.Module, input_shape: tuple[int, ...], ve_cutoff: int = 50,
                cache: bool = True) -> ArchGraph:
    """Trace ``module`` (any Flax linen module) on an NHWC input of ``input_shape`` into an :class:`ArchGraph`.

    ``ve_cutoff=1`` gives real edges only (GHN-1); 50 is GHN-2's setting. Graphs of hashable modules are cached
    (Flax modules are frozen dataclasses), so building the graph of the same model twice is free.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if cache:
        try:
            return _cached_build(module, input_shape, int(ve_cutoff))
        except TypeError:  # unhashable module attributes
            pass
    return _build(module, input_shape, int(ve_cutoff))
