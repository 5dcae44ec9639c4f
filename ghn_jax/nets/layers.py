"""Building blocks shared by all target networks.

Target networks are plain Flax linen modules whose only collection is ``params``, so that a predicted parameter
pytree can be applied directly: ``module.apply({'params': p}, x)``. Normalisation therefore always uses the
statistics of the current batch (as GHN-2 evaluates every network) and keeps no running state.

Layouts are NHWC for activations, ``(kh, kw, C_in/groups, C_out)`` for conv kernels and ``(in, out)`` for dense
kernels; :mod:`ghn_jax.nets.torch_names` converts to and from the PyTorch names/layouts of the reference code.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

TORCH_BN_EPS = 1e-5


class BatchNorm(nn.Module):
    """BatchNorm2d in batch-statistics mode (biased variance, eps 1e-5), with ``scale``/``bias`` params only.

    This is what ppuda uses for every DeepNets-1M network (``track_running_stats=False``) and what GHN-2 switches
    torchvision models to after predicting their parameters.
    """
    features: int
    epsilon: float = TORCH_BN_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param('scale', nn.initializers.ones, (self.features,))
        bias = self.param('bias', nn.initializers.zeros, (self.features,))
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axes)
        var = jnp.mean(jnp.square(x - mean), axes)
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class PosEnc(nn.Module):
    """Learned positional encoding added to an NHWC map; parameter ``weight`` of shape (1, s, s, C)."""
    channels: int
    size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param('weight', nn.initializers.normal(1.0), (1, self.size, self.size, self.channels))
        return x + weight


def torch_conv(features: int, kernel: int | Sequence[int], stride: int | Sequence[int] = 1,
               padding: int | Sequence[int] = 0, dilation: int = 1, groups: int = 1, bias: bool = False,
               name: str | None = None) -> nn.Conv:
    """An ``nn.Conv`` configured like ``torch.nn.Conv2d`` (symmetric explicit padding, groups, dilation)."""
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
    return nn.Conv(features, kernel, strides=stride, padding=[(p, p) for p in padding],
                   kernel_dilation=(dilation, dilation), feature_group_count=groups, use_bias=bias, name=name)


def norm_layer(norm: str | None, features: int, name: str) -> nn.Module | None:
    """BatchNorm for ``'bnorm'``/``'bn*'`` norms, ``None`` (identity) for BN-free nets."""
    if norm in (None, '', 'none'):
        return None
    if str(norm).startswith('bn'):
        return BatchNorm(features, name=name)
    raise ValueError(f'unsupported norm {norm!r}: use "bnorm" or None')


def max_pool(x: jax.Array, kernel: int, stride: int, padding: int) -> jax.Array:
    """torch.nn.MaxPool2d (implicit -inf padding)."""
    return nn.max_pool(x, (kernel, kernel), (stride, stride), [(padding, padding)] * 2)


def avg_pool(x: jax.Array, kernel: int, stride: int, padding: int, count_include_pad: bool = False) -> jax.Array:
    """torch.nn.AvgPool2d; DeepNets-1M uses ``count_include_pad=False``."""
    return nn.avg_pool(x, (kernel, kernel), (stride, stride), [(padding, padding)] * 2,
                       count_include_pad=count_include_pad)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes of an NHWC map, keeping them (like AdaptiveAvgPool2d(1))."""
    return jnp.mean(x, axis=(1, 2), keepdims=True)
