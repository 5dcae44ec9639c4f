"""ghn_jax: Graph HyperNetworks in JAX/Flax.

Layout (read top-down, each arrow is "is consumed by"):

  ghn_jax.nets       Flax target networks (DeepNets-1M `Network`, zoo, arch-json loader)
        |
  ghn_jax.graphs     any Flax module traced into a computational graph (jraph.GraphsTuple)
        |
  ghn_jax.hypernet   the graph hypernetwork: shape encoder, GatedGNN, decoders, tiling
        |
  ghn_jax.train      meta-training, evaluation, fine-tuning, forward gradients

``GHN2``, ``graphs`` and ``nets`` are imported on first use, so that command-line entry points can act (e.g.
restart under tcmalloc, :mod:`ghn_jax.host_memory`) before jax is imported.
"""
import importlib

__version__ = "0.1.0"
__all__ = ['GHN2', 'graphs', 'nets']


def __getattr__(name: str):
    if name == 'GHN2':
        from ghn_jax.hypernet.predictor import GHN2
        return GHN2
    if name in ('graphs', 'nets'):
        return importlib.import_module(f'ghn_jax.{name}')
    raise AttributeError(f"module 'ghn_jax' has no attribute {name!r}")
