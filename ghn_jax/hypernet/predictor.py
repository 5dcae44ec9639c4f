"""User-facing API: ``GHN2.from_checkpoint(path).predict(module, input_shape)`` -> params for ``module.apply``.

The GHN core (embedding, GNN, decoders) is jitted once per :class:`~ghn_jax.hypernet.batch.Budget`; tensors are
then tiled per layer shape, so predicting for a new architecture compiles nothing once its budget and layer shapes
have been seen.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import threading
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ghn_jax.graphs.graph import ArchGraph, build_graph
from ghn_jax.hypernet import checkpoint as ckpt, tiling
from ghn_jax.hypernet.batch import Budget, GHNBatch, auto_budget, pack
from ghn_jax.hypernet.ghn import HOST_OUTPUTS, GHN, GHNConfig, assemble_host, param_specs, to_pytree
from ghn_jax.hypernet.shape_encoder import ShapeIndexer
from ghn_jax.hypernet.transfer import put_on_default_device


@dataclasses.dataclass
class Prediction:
    """Predicted parameters of one module, plus what the GHN saw."""
    params: dict                  # nested dict for module.apply({'params': params}, x)
    graph: ArchGraph
    embeddings: np.ndarray | None = None   # (n_nodes, hid) node states fed to the decoders


class GHN2:
    """A graph hypernetwork with its parameters: predicts parameters for any Flax module.

    Despite the name it also runs GHN-1 and the MLP baseline (``config.hypernet``, ``config.ve``, ...).
    """

    def __init__(self, config: GHNConfig, params: Any):
        self.config = config
        self.module = GHN(config)
        self.indexer = ShapeIndexer(config.num_classes, config.max_spatial)
        # device_put, not jnp.asarray: in this jax version jnp.asarray of a numpy array compiles a copy per shape.
        self.params = jax.device_put(params)
        self._blocks = tiling.BlockPool()   # output memory of earlier predictions, reused once they are dropped

    # ---------------------------------------------------------------- construction
    @classmethod
    def init(cls, config: GHNConfig = GHNConfig(), seed: int = 0) -> 'GHN2':
        """A randomly initialised GHN."""
        return cls(config, init_params(config, jax.random.key(seed)))

    @classmethod
    def from_checkpoint(cls, path: str, **config_overrides: Any) -> 'GHN2':
        """Load a GHN from a ghn_jax ``.npz``, a reference ``.pt`` (no PyTorch needed) or an orbax directory."""
        if not os.path.exists(path):
            raise FileNotFoundError(f'GHN checkpoint {path!r} does not exist')
        if os.path.isdir(path):
            from ghn_jax.train.checkpointing import load_ghn_from_train_dir
            config, params = load_ghn_from_train_dir(path)
            return cls(dataclasses.replace(config, **config_overrides), params)
        if path.endswith('.pt') or path.endswith('.pth'):
            obj = ckpt.load_torch_checkpoint(path)
            state = obj.get('state_dict', obj) if isinstance(obj, dict) else obj
            config = ckpt.config_from_reference(obj['config']) if 'config' in obj else ckpt.infer_config(state)
        else:
            state, meta = ckpt.load_npz(path)
            config = GHNConfig(**meta['config']) if 'config' in meta else ckpt.infer_config(state)
        config = dataclasses.replace(config, **config_overrides)
        params = ckpt.torch_to_flax(state)
        # The key is made inside eval_shape: an eager jax.random.key(0) would compile a seeding function.
        ckpt.check_params(params, jax.eval_shape(lambda: init_params(config, jax.random.key(0))), path)
        return cls(config, params)

    def save(self, path: str, **extra: Any) -> None:
        ckpt.save_npz(path, self.params, self.config, extra)

    # ---------------------------------------------------------------- prediction
    def graph(self, module: nn.Module, input_shape: Sequence[int]) -> ArchGraph:
        return build_graph(module, tuple(input_shape), ve_cutoff=self.config.graph_cutoff)

    def pack(self, graphs: list[ArchGraph], budget: Budget | None = None):
        budget = budget or auto_budget(graphs, self.config.max_spatial)
        return pack(graphs, budget, self.indexer, self.config.max_spatial)

    def predict(self, module: nn.Module, input_shape: Sequence[int] | None = None, *,
                predict_class_layers: bool = True, return_embeddings: bool = False,
                budget: Budget | None = None, rng: jax.Array | None = None) -> Any:
        """Parameters of ``module`` (a pytree for ``module.apply({'params': p}, x)``).

        ``input_shape`` is NHWC with batch 1 (default ``(1, 32, 32, 3)``). With ``predict_class_layers=False`` the
        classifier keeps a fresh ``module.init(rng)`` initialisation (fine-tuning to another label space).
        With ``return_embeddings`` a :class:`Prediction` (params, graph, node embeddings) is returned.
        """
        out = self.predict_many([(module, input_shape)], predict_class_layers=predict_class_layers,
                                budget=budget, rng=rng)[0]
        return out if return_embeddings else out.params

    def predict_many(self, models: Sequence[tuple[nn.Module, Sequence[int] | None]], *,
                     predict_class_layers: bool = True, budget: Budget | None = None,
                     rng: jax.Array | None = None) -> list[Prediction]:
        """Predict for several modules in one GHN forward pass (a meta-batch)."""
        graphs = [self.graph(m, shape or (1, 32, 32, 3)) for m, shape in models]
        if not predict_class_layers:
            graphs = [self._encode_classifier_as_own(g) for g in graphs]
        batch, layouts = self.pack(graphs, budget)
        specs = [param_specs(g, layout, predict_class_layers) for g, layout in zip(graphs, layouts)]
        # The output memory is paged in by a helper thread while the GHN is traced/compiled (first call of a budget:
        # ~0.3 s of page faults hidden) or runs (asynchronously: ~10 ms hidden).
        arenas = [tiling.Arena([s.shape for s in sp], pool=self._blocks) for sp in specs]
        prefault = threading.Thread(target=lambda: [a.prefault() for a in arenas], daemon=True)
        prefault.start()
        out = apply_ghn(self.module, self.params, batch)
        host = {k: np.asarray(out[k]) for k in HOST_OUTPUTS}   # tensors are tiled on the host: nothing to compile
        prefault.join()
        embeddings = np.asarray(out['embeddings'])              # (indexing a jax array eagerly would compile)
        results = []
        for b, (g, (m, shape)) in enumerate(zip(graphs, models)):
            flat = put_on_default_device(assemble_host(host, specs[b], b, self.config.weight_norm, arenas[b]))
            if not predict_class_layers:
                init = jax.jit(m.init)(rng if rng is not None else jax.random.key(0), jnp.zeros(shape or (1, 32, 32, 3)))
                init_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(init['params']))
                for n in g.nodes:
                    if n.role in ('classifier_weight', 'classifier_bias'):
                        flat[n.param] = init_flat[n.param]
            emb = embeddings[b, :g.n_nodes]
            results.append(Prediction(to_pytree(flat, g), g, emb))
        return results

    def _encode_classifier_as_own(self, graph: ArchGraph) -> ArchGraph:
        """Shape-encode the classifier with the GHN's own class count (the reference's intended behaviour)."""
        nodes = []
        for n in graph.nodes:
            if n.role in ('classifier_weight', 'classifier_bias') and n.shape is not None:
                n = dataclasses.replace(n, shape=(self.config.num_classes,) + tuple(n.shape[1:]))
            nodes.append(n)
        return dataclasses.replace(graph, nodes=nodes)


def init_params(config: GHNConfig, key: jax.Array) -> dict:
    """Random GHN parameters (shapes do not depend on the example batch)."""
    graph = ArchGraph([], np.zeros((0, 3), np.int32), 1)
    indexer = ShapeIndexer(config.num_classes, config.max_spatial)
    from ghn_jax.graphs.trace import Node
    graph.nodes = [Node('input'), Node('conv', (config.num_classes, 8), ('w',), role='classifier_weight')]
    graph.edges = np.array([[0, 1, 1]], np.int32)
    batch, _ = pack([graph], Budget(nodes=2, positions=1, width=1), indexer, config.max_spatial)
    return GHN(config).init(key, batch)['params']


@functools.partial(jax.jit, static_argnums=0)
def _apply(module: GHN, params, batch: GHNBatch):
    return module.apply({'params': params}, batch)


def apply_ghn(module: GHN, params, batch: GHNBatch) -> dict[str, jax.Array]:
    """The jitted GHN core on a packed batch (compiled once per budget and configuration)."""
    # The numpy arrays of the batch go to the jitted function as they are (jnp.asarray would compile per shape).
    return _apply(module, params, batch)
