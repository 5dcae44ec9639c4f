"""The graph hypernetwork: node embedding -> GatedGNN (or MLP) -> LayerNorm -> decoders.

``GHN`` is a Flax module over a packed :class:`~ghn_jax.hypernet.batch.GHNBatch` (fixed sizes, so it is jitted once
per budget). It returns node embeddings and decoded blocks; :func:`assemble` turns these into the parameter pytree of
each target module. Submodule names follow the reference's ``state_dict`` so checkpoints convert one-to-one.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ghn_jax.graphs.graph import ArchGraph
from ghn_jax.graphs.trace import PRIMITIVES
from ghn_jax.hypernet import tiling
from ghn_jax.hypernet.batch import GHNBatch, Layout
from ghn_jax.hypernet.decoder import ConvDecoder, Decoder1D
from ghn_jax.hypernet.gatedgnn import MLP, GatedGNN
from ghn_jax.hypernet.shape_encoder import ShapeIndexer


@dataclasses.dataclass(frozen=True)
class GHNConfig:
    """Hyper-parameters of a GHN (the reference's checkpoint ``config``). Defaults: GHN-2 for CIFAR-10."""
    num_classes: int = 10
    max_spatial: int = 11          # S of max_shape (64, 64, S, S): 11 for CIFAR-10, 16 for ImageNet
    hid: int = 32
    hypernet: str = 'gatedgnn'     # 'gatedgnn' | 'mlp'
    ve: bool = True                # virtual edges (GHN-2)
    layernorm: bool = True         # LayerNorm on node states (GHN-2)
    weight_norm: bool = True       # differentiable normalisation of predicted tensors (GHN-2)
    ve_cutoff: int = 50

    @classmethod
    def ghn1(cls, **kw) -> 'GHNConfig':
        return cls(**{'ve': False, 'layernorm': False, 'weight_norm': False, 've_cutoff': 1, **kw})

    @classmethod
    def ghn2(cls, **kw) -> 'GHNConfig':
        return cls(**kw)

    @classmethod
    def mlp(cls, **kw) -> 'GHNConfig':
        return cls(**{'hypernet': 'mlp', **kw})

    @property
    def graph_cutoff(self) -> int:
        return self.ve_cutoff if (self.ve and self.hypernet == 'gatedgnn') else 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class GHN(nn.Module):
    """Graph HyperNetwork (GHN-1 / GHN-2 / MLP baseline) over a packed batch of graphs."""
    config: GHNConfig

    @nn.compact
    def __call__(self, batch: GHNBatch) -> dict[str, jax.Array]:
        cfg = self.config
        indexer = ShapeIndexer(cfg.num_classes, cfg.max_spatial)
        b, n = batch.primitive.shape
        x = nn.Embed(len(PRIMITIVES), cfg.hid, embedding_init=nn.initializers.normal(1.0), name='embed')(
            batch.primitive)
        x = x + ShapeEncoder(indexer.n_channel_rows, indexer.n_spatial_rows, cfg.hid // 4, name='shape_enc')(
            batch.shape_ind)
        if cfg.hypernet == 'gatedgnn':
            h = GatedGNN(cfg.hid, cfg.ve, name='gnn')(x, batch.adj, batch.fwd_schedule, batch.bwd_schedule)
        elif cfg.hypernet == 'mlp':
            h = MLP((cfg.hid, cfg.hid), name='gnn')(x)
        else:
            raise ValueError(f'unknown hypernet {cfg.hypernet!r}: use "gatedgnn" or "mlp"')
        gnn_out = h
        if cfg.layernorm:
            h = nn.LayerNorm(epsilon=1e-5, name='ln')(h)
        h = jnp.where(batch.node_mask[..., None], h, 0.0)
        flat = h.reshape(b * n, cfg.hid)
        blocks, cls_blocks = ConvDecoder(cfg.max_spatial, cfg.num_classes, cfg.hid, name='decoder')(
            flat, batch.pos_node, batch.pos_yx, batch.cls_pos)
        rows = Decoder1D(cfg.hid, name='decoder_1d')(flat)                  # (M, 2, 64)
        bias_cls = nn.Dense(cfg.num_classes, name='bias_class.1')(nn.relu(rows))[:, 1]   # (M, nc)
        return {'embeddings': h, 'gnn_out': gnn_out, 'node_init': x, 'blocks': blocks, 'cls_blocks': cls_blocks,
                'gains': rows[:, 0], 'shifts': rows[:, 1], 'cls_bias': bias_cls}


class ShapeEncoder(nn.Module):
    """Concatenation of channel (out, in) and spatial (h, w) embeddings, ``hid/4`` each."""
    n_channel_rows: int
    n_spatial_rows: int
    features: int

    @nn.compact
    def __call__(self, shape_ind: jax.Array) -> jax.Array:
        init = nn.initializers.normal(1.0)
        ch = nn.Embed(self.n_channel_rows, self.features, embedding_init=init, name='embed_channel')
        sp = nn.Embed(self.n_spatial_rows, self.features, embedding_init=init, name='embed_spatial')
        return jnp.concatenate([ch(shape_ind[..., 0]), ch(shape_ind[..., 1]), sp(shape_ind[..., 2]),
                                sp(shape_ind[..., 3])], axis=-1)


# ------------------------------------------------------------------------------------------------------------------
# Assembly: decoded blocks -> parameter pytree of each module
# ------------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ParamSpec:
    """How one target parameter is made: kind, Flax shape, node and decoder position."""
    path: tuple[str, ...]
    kind: str          # conv | dense | classifier | pos_enc | gain | shift | bias | classifier_bias
    shape: tuple[int, ...]
    node: int          # flat node index in the packed batch
    start: int = 0     # first decoder position (conv, dense, pos_enc)


def param_specs(graph: ArchGraph, layout: Layout, predict_class_layers: bool = True) -> list[ParamSpec]:
    """Plan the parameters of one graph (only nodes with a parameter path are assembled)."""
    specs = []
    for i, node in enumerate(graph.nodes):
        flat = layout.node_offset + i
        if node.param is not None:
            shape = graph.param_shapes.get(node.param, node.shape)
            role = node.role
            if role in ('classifier_weight', 'classifier_bias') and not predict_class_layers:
                continue
            if node.primitive == 'pos_enc':
                kind = 'pos_enc'
            elif node.primitive in ('conv', 'sep_conv', 'dil_conv'):
                kind = 'classifier' if role == 'classifier_weight' else ('conv' if len(shape) == 4 else 'dense')
            elif node.primitive == 'bias':
                kind = 'classifier_bias' if role == 'classifier_bias' else 'bias'
            elif node.primitive in ('bn', 'ln'):
                kind = 'gain'
            else:
                raise ValueError(f'node {i} ({node.primitive}) carries a parameter it cannot predict')
            specs.append(ParamSpec(node.param, kind, tuple(shape), flat, layout.pos_start.get(i, 0)))
        if node.shift is not None:
            specs.append(ParamSpec(node.shift, 'shift', tuple(graph.param_shapes.get(node.shift, node.shape)),
                                   flat))
    return specs


def _assemble_one(out, s: ParamSpec, graph_index: int, normalize: bool, conv: Callable, dense: Callable,
                  pos_enc: Callable, vector: Callable) -> Any:
    """The tensor of one parameter from the GHN outputs, with the given tiling functions (jitted or numpy)."""
    if s.kind == 'conv':
        return conv(out['blocks'], s.start, s.shape, normalize)
    if s.kind == 'dense':
        return dense(out['blocks'], s.start, s.shape, normalize)
    if s.kind == 'classifier':
        return dense(out['cls_blocks'], graph_index, s.shape, normalize)
    if s.kind == 'pos_enc':
        return pos_enc(out['blocks'], s.start, s.shape)
    if s.kind == 'gain':
        return vector(out['gains'], s.node, s.shape[0], 'gain', normalize)
    if s.kind in ('shift', 'bias'):
        return vector(out['shifts'], s.node, s.shape[0], 'bias', normalize)
    if s.kind == 'classifier_bias':
        return vector(out['cls_bias'], s.node, s.shape[0], 'bias', normalize)
    raise ValueError(f'unknown parameter kind {s.kind!r} of {s.path}')


def assemble(out: dict[str, jax.Array], specs: list[ParamSpec], graph_index: int, normalize: bool
             ) -> dict[tuple[str, ...], jax.Array]:
    """Build ``{param path: tensor}`` (Flax layouts) for one graph from the GHN outputs (differentiable)."""
    fns = (tiling.conv_kernel, tiling.dense_kernel, tiling.pos_encoding, tiling.vector)
    return {s.path: _assemble_one(out, s, graph_index, normalize, *fns) for s in specs}


HOST_OUTPUTS = ('blocks', 'cls_blocks', 'gains', 'shifts', 'cls_bias')


def assemble_host(out: dict[str, np.ndarray], specs: list[ParamSpec], graph_index: int, normalize: bool,
                  arena: tiling.Arena | None = None) -> dict[tuple[str, ...], np.ndarray]:
    """:func:`assemble` on the host, in numpy: for prediction and meta-training (see :func:`assemble_host_vjp`).

    ``out`` holds the GHN outputs of :data:`HOST_OUTPUTS` as numpy arrays. Unlike :func:`assemble`, which runs one
    jitted function per (kind, shape) and so compiles ~35 functions for a ResNet-50 the first time, this compiles
    nothing; the tensors equal :func:`assemble`'s (indexing is exact, the normalisation agrees to float32 rounding).
    All tensors are carved from one block, ``arena`` or a new ``tiling.Arena`` of ``specs``' shapes. The writes
    (~94 MB for a ResNet-50) are split between this thread and a helper by size: numpy releases the GIL while it
    copies, and the two halves take ~0.7x the time of one pass on the 2-core machine.
    """
    arena = arena or tiling.Arena([s.shape for s in specs])
    views = [arena.empty(s.shape) for s in specs]   # in spec order, before the threads split the work

    def fill(lo: int, hi: int) -> list:
        tensors = []
        for s, view in zip(specs[lo:hi], views[lo:hi]):
            fns = [functools.partial(f, alloc=lambda shape, dtype, v=view: v.reshape(shape)) for f in
                   (tiling.np_conv_kernel, tiling.np_dense_kernel, tiling.np_pos_encoding, tiling.np_vector)]
            tensors.append(_assemble_one(out, s, graph_index, normalize, *fns))
        return tensors

    sizes = np.cumsum([v.size for v in views])
    half = int(np.searchsorted(sizes, sizes[-1] / 2)) if len(sizes) else 0
    first = _HELPER.submit(fill, 0, half)
    tensors = fill(half, len(specs))
    tensors = first.result() + tensors
    return {s.path: t for s, t in zip(specs, tensors)}


#: The helper thread of :func:`assemble_host` (one, kept for the process: no thread start per prediction).
_HELPER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='ghn_jax_assemble')


def assemble_host_vjp(out: dict[str, np.ndarray], specs: list[ParamSpec], graph_index: int, normalize: bool,
                      grads: dict[tuple[str, ...], np.ndarray], cotangent: dict[str, np.ndarray]) -> None:
    """Add the vector-Jacobian product of :func:`assemble_host` for ``grads`` ({path: d loss/d param}) into
    ``cotangent`` (numpy arrays shaped like ``out``), in place. Together with :func:`assemble_host` this is how
    meta-training moves between GHN outputs and target parameters without compiling anything per layer shape."""
    for s in specs:
        if s.path not in grads:
            continue
        g = np.asarray(grads[s.path], np.float32)
        if s.kind == 'conv':
            blocks = cotangent['blocks']
            blocks[s.start:s.start + s.shape[0] * s.shape[1]] += tiling.np_conv_kernel_vjp(
                g, blocks.shape[1:], s.shape, normalize)
        elif s.kind == 'dense':
            cotangent['blocks'][s.start] += tiling.np_dense_kernel_vjp(g, cotangent['blocks'].shape[1:], normalize)
        elif s.kind == 'classifier':
            cls = cotangent['cls_blocks']
            cls[graph_index] += tiling.np_dense_kernel_vjp(g, cls.shape[1:], normalize)
        elif s.kind == 'pos_enc':
            blocks = cotangent['blocks']
            blocks[s.start:s.start + s.shape[1] * s.shape[2]] += tiling.np_pos_encoding_vjp(g, blocks.shape[1:])
        else:
            name = {'gain': 'gains', 'shift': 'shifts', 'bias': 'shifts', 'classifier_bias': 'cls_bias'}[s.kind]
            kind = 'gain' if s.kind == 'gain' else 'bias'
            cotangent[name][s.node] += tiling.np_vector_vjp(g, out[name][s.node], kind, normalize)


def to_pytree(flat: dict[tuple[str, ...], Any], graph: ArchGraph, fill_missing: bool = True) -> dict:
    """Nested params dict for ``module.apply``; parameters without a node (pruned dead ops, unsupported layers)
    are filled with zeros when ``fill_missing`` (dead ops never influence the output)."""
    flat = dict(flat)
    if fill_missing:
        for path, shape in graph.param_shapes.items():
            if path not in flat:
                flat[path] = np.zeros(shape, np.float32)  # numpy: an eager jnp.zeros compiles once per shape
    return flax.traverse_util.unflatten_dict(flat)
