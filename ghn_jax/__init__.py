"""ghn_jax: Graph HyperNetworks in JAX/Flax.

Layout (read top-down, each arrow is "is consumed by"):

  ghn_jax.nets       Flax target networks (DeepNets-1M `Network`, zoo, arch-json loader)
        |
  ghn_jax.graphs     any Flax module traced into a computational graph (jraph.GraphsTuple)
        |
  ghn_jax.hypernet   the graph hypernetwork: shape encoder, GatedGNN, decoders, tiling
        |
  ghn_jax.train      meta-training, evaluation, fine-tuning, forward gradients
"""

__version__ = "0.1.0"

from ghn_jax import graphs, nets  # noqa: E402
from ghn_jax.hypernet.predictor import GHN2  # noqa: E402

__all__ = ['GHN2', 'graphs', 'nets']
