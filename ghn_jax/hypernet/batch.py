"""Pack graphs into fixed-size arrays for the jitted GHN (one compile per :class:`Budget`).

Everything here runs on the host in numpy. A :class:`GHNBatch` holds, for ``B`` graphs padded to ``N`` nodes:
node types and shape-table rows, the dense edge matrix, the level schedules of the two GNN sweeps, and the list of
spatial *positions* to decode (one per kernel position of every conv weight, spec 5.2), padded to ``P``.
"""
from __future__ import annotations

import dataclasses
import math

import flax
import numpy as np

from ghn_jax.graphs.graph import ArchGraph
from ghn_jax.hypernet.shape_encoder import ShapeIndexer

WEIGHT_PRIMITIVES = ('conv', 'sep_conv', 'dil_conv', 'pos_enc')


@dataclasses.dataclass(frozen=True)
class Budget:
    """Static sizes of a packed batch: graphs, nodes per graph, decoded positions in total, schedule width, and
    ``steps``, the length of each GNN sweep (schedule rows; None: ``nodes``, which always suffices)."""
    nodes: int
    positions: int
    graphs: int = 1
    width: int = 8
    steps: int | None = None

    def __str__(self) -> str:
        steps = '' if self.steps is None else f', steps={self.steps}'
        return f'Budget(graphs={self.graphs}, nodes={self.nodes}, positions={self.positions}{steps})'


class BudgetExceededError(ValueError):
    """A graph (or meta-batch) does not fit the requested budget."""


@flax.struct.dataclass
class GHNBatch:
    primitive: np.ndarray     # (B, N) int32
    shape_ind: np.ndarray     # (B, N, 4) int32
    adj: np.ndarray           # (B, N, N) int32
    fwd_schedule: np.ndarray  # (B, T, W) int32, N = padding
    bwd_schedule: np.ndarray  # (B, T, W) int32
    node_mask: np.ndarray     # (B, N) bool
    pos_node: np.ndarray      # (P,) int32 flat node index b * N + v
    pos_yx: np.ndarray        # (P, 2) int32 spatial position in the decoder grid
    cls_pos: np.ndarray       # (B,) int32 position of each graph's classifier weight (0 if none)


@dataclasses.dataclass
class Layout:
    """Where each node's decoded outputs live in a packed batch (host-side bookkeeping)."""
    graph: int
    node_offset: int                     # b * N
    pos_start: dict[int, int]            # node index -> first position


def levels(n: int, edges: np.ndarray, reverse: bool = False) -> np.ndarray:
    """Longest-path depth (or height when ``reverse``) of every node of a DAG in topological order."""
    depth = np.zeros(n, np.int64)
    src, dst = (edges[:, 1], edges[:, 0]) if reverse else (edges[:, 0], edges[:, 1])
    order = np.argsort(-dst if reverse else dst, kind='stable')
    for s, d in zip(src[order], dst[order]):
        if depth[s] + 1 > depth[d]:
            depth[d] = depth[s] + 1
    return depth


def schedule_rows(n: int, edges: np.ndarray, reverse: bool, width: int) -> int:
    """Number of rows of :func:`schedule`: one per level, wide levels split into rows of ``width`` nodes."""
    counts = np.bincount(levels(n, edges, reverse), minlength=1) if n else np.zeros(0, np.int64)
    return int(np.sum(-(-counts // width)))


def schedule(n: int, edges: np.ndarray, reverse: bool, steps: int, width: int, pad: int) -> np.ndarray:
    """Level-synchronous update order as a (steps, width) table; wide levels are split over several steps."""
    table = np.full((steps, width), pad, np.int32)
    if not n:
        return table
    lv = levels(n, edges, reverse)
    order = np.argsort(lv, kind='stable')            # nodes level by level, in index order within a level
    counts = np.bincount(lv)
    rows_per_level = -(-counts // width)
    n_rows = int(rows_per_level.sum())
    if n_rows > steps:
        raise BudgetExceededError(f'a GNN sweep of this graph needs {n_rows} steps but the budget allows {steps}; '
                                  f'use Budget(steps={n_rows}, ...) or more, or steps=None')
    level = lv[order]
    k = np.arange(n) - (np.cumsum(counts) - counts)[level]        # rank of each node within its level
    table[(np.cumsum(rows_per_level) - rows_per_level)[level] + k // width, k % width] = order
    return table


def decode_positions(graph: ArchGraph, max_spatial: int) -> list[tuple[int, int, int]]:
    """(node, y, x) for every decoder position a graph needs: kh*kw per 4-D weight, one per 2-D weight."""
    out = []
    for i, node in enumerate(graph.nodes):
        if node.primitive not in WEIGHT_PRIMITIVES or node.shape is None or len(node.shape) < 2:
            continue
        if len(node.shape) == 4 and node.role != 'classifier_weight':
            kh, kw = node.shape[2], node.shape[3]
            out.extend((i, y % max_spatial, x % max_spatial) for y in range(kh) for x in range(kw))
        else:
            out.append((i, 0, 0))
    return out


def required_budget(graphs: list[ArchGraph], max_spatial: int, width: int = 8) -> tuple[int, int]:
    """(nodes, positions) needed to pack ``graphs`` together."""
    nodes = max(g.n_nodes for g in graphs)
    positions = sum(len(decode_positions(g, max_spatial)) for g in graphs)
    return nodes, positions


#: GNN sweeps are budgeted in multiples of this many steps (a longer sweep runs idle steps on padding).
STEP_QUANTUM = 64


def budget_ladder(value: int, lowest: int) -> int:
    """Smallest of 2^k and 3 * 2^(k-1) (..., 256, 384, 512, 768, ...) that is >= ``value`` and ``lowest``: at most
    50% padding (a plain power of two wastes up to 100%), still few distinct sizes and so few compiles."""
    size = max(lowest, 1)
    while size < value:
        size = size * 3 // 2 if size & (size - 1) == 0 and size >= 2 else 1 << size.bit_length()
    return size


def auto_budget(graphs: list[ArchGraph], max_spatial: int, width: int = 8) -> Budget:
    """Smallest budget that fits ``graphs`` (so similar graphs share a compile): nodes and positions from
    :func:`budget_ladder`, GNN sweeps in multiples of :data:`STEP_QUANTUM` steps (at most the node budget).

    Sweeps run one step per schedule row, and DeepNets-1M graphs have about half as many levels as nodes, so
    budgeting steps separately halves the GNN's sequential work on average.
    """
    nodes, positions = required_budget(graphs, max_spatial, width)
    node_budget = budget_ladder(nodes, 64)
    rows = max(schedule_rows(g.n_nodes, g.real_edges, reverse, width) for g in graphs for reverse in (False, True))
    steps = min(node_budget, STEP_QUANTUM * max(1, math.ceil(rows / STEP_QUANTUM)))
    return Budget(nodes=node_budget, positions=budget_ladder(positions, 256), graphs=len(graphs), width=width,
                  steps=steps)


def pack(graphs: list[ArchGraph], budget: Budget, indexer: ShapeIndexer, max_spatial: int
         ) -> tuple[GHNBatch, list[Layout]]:
    """Pack ``graphs`` into a :class:`GHNBatch` of exactly ``budget``'s sizes; raise if they do not fit."""
    B, N, P, W = budget.graphs, budget.nodes, budget.positions, budget.width
    T = budget.steps or N
    if len(graphs) > B:
        raise BudgetExceededError(f'{len(graphs)} graphs do not fit a budget of {B} graphs')
    primitive = np.zeros((B, N), np.int32)
    shape_ind = np.tile(np.asarray(indexer(None), np.int32), (B, N, 1))
    adj = np.zeros((B, N, N), np.int32)
    fwd = np.full((B, T, W), N, np.int32)
    bwd = np.full((B, T, W), N, np.int32)
    mask = np.zeros((B, N), bool)
    pos_node = np.zeros(P, np.int32)
    pos_yx = np.zeros((P, 2), np.int32)
    cls_pos = np.zeros(B, np.int32)
    layouts, p = [], 0
    for b, g in enumerate(graphs):
        n = g.n_nodes
        if n > N:
            raise BudgetExceededError(
                f'graph has {n} nodes but the budget allows {N}; use a larger budget (e.g. '
                f'Budget(nodes={1 << math.ceil(math.log2(n))}, ...)) or let the GHN choose one (budget=None)')
        primitive[b, :n] = g.primitive_ids
        shape_ind[b, :n] = indexer.indices([nd.shape for nd in g.nodes])
        adj[b, g.edges[:, 0], g.edges[:, 1]] = g.edges[:, 2]
        real = g.real_edges
        fwd[b] = schedule(n, real, False, T, W, N)
        bwd[b] = schedule(n, real, True, T, W, N)
        mask[b, :n] = True
        positions = decode_positions(g, max_spatial)
        if p + len(positions) > P:
            raise BudgetExceededError(
                f'the graphs need {p + len(positions)}+ decoder positions but the budget allows {P}')
        table = np.asarray(positions, np.int32).reshape(-1, 3)         # (node, y, x) rows
        pos_node[p:p + len(table)] = b * N + table[:, 0]
        pos_yx[p:p + len(table)] = table[:, 1:]
        first_nodes, first = np.unique(table[:, 0], return_index=True)
        starts = {int(node): p + int(i) for node, i in zip(first_nodes, first)}
        for node in starts:
            if g.nodes[node].role == 'classifier_weight':
                cls_pos[b] = starts[node]
        p += len(table)
        layouts.append(Layout(b, b * N, starts))
    batch = GHNBatch(primitive, shape_ind, adj, fwd, bwd, mask, pos_node, pos_yx, cls_pos)
    return batch, layouts
