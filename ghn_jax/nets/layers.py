"""Building blocks shared by all target networks.

Target networks are plain Flax linen modules whose only collection is ``params``, so that a predicted parameter
pytree can be applied directly: ``module.apply({'params': p}, x)``. Normalisation therefore always uses the
statistics of the current batch (as GHN-2 evaluates every network) and keeps no running state.

Layouts are NHWC for activations, ``(kh, kw, C_in/groups, C_out)`` for conv kernels and ``(in, out)`` for dense
kernels; :mod:`ghn_jax.nets.torch_names` converts to and from the PyTorch names/layouts of the reference code.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from flax.linen.dtypes import promote_dtype

from ghn_jax.nets.kernels import avg_pool2d, conv2d, depthwise_conv2d, max_pool2d

TORCH_BN_EPS = 1e-5
#: ``checkpoint_name`` of every dense conv's output: a ``jax.checkpoint`` policy can keep these and recompute the rest.
CONV_OUTPUT = 'conv_output'
#: ``checkpoint_name`` of depthwise convs' outputs: cheap to recompute (a depthwise forward is a few k^2 multiply-adds
#: per element, ~1/7 of its backward pass), so the executor does not keep them.
DEPTHWISE_OUTPUT = 'depthwise_output'
#: ``checkpoint_name`` of the outputs of 1x1 dense convs: one matmul per pixel to redo, so the executor recomputes them
#: rather than keep a map per conv (the preprocessing of every cell input is one).
POINTWISE_OUTPUT = 'pointwise_output'
#: ``checkpoint_name`` of the per-channel statistics of :class:`BatchNorm` (cheap to keep, a pass over the map to redo).
NORM_STATISTICS = 'norm_statistics'

_graph_trace = threading.local()   # .active: this thread is tracing a module into a graph (ghn_jax.graphs)


@contextlib.contextmanager
def graph_trace_mode(enabled: bool = True) -> Iterator[None]:
    """While tracing a module into a GHN graph, layers may skip arithmetic whose values never matter.

    :mod:`ghn_jax.graphs` only reads *which* activations and parameters flow into a layer and the output's shape,
    never values, so :class:`BatchNorm`, :class:`FastConv` and :func:`relu` then stage a few plain primitives with
    the same data flow (graph construction is on the path of every prediction). Thread-local: other threads compute
    normally.
    """
    previous = getattr(_graph_trace, 'active', False)
    _graph_trace.active = enabled
    try:
        yield
    finally:
        _graph_trace.active = previous


def in_graph_trace() -> bool:
    """True inside :func:`graph_trace_mode` in this thread."""
    return getattr(_graph_trace, 'active', False)


def relu(x: jax.Array) -> jax.Array:
    """``nn.relu``; inside :func:`graph_trace_mode` the identity (ReLU is no graph node, and ``nn.relu`` is a jitted
    custom-JVP function whose staging took about a fifth of the time to trace a ResNet-50 into its graph)."""
    return x if in_graph_trace() else nn.relu(x)


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
        channel = (x.ndim - 1,)
        if in_graph_trace():  # one op on x inside this layer is all the graph needs (its params are declared above)
            return lax.neg(x)
        # Plain lax primitives: with jnp's jitted reductions and operator overloads this layer took ~30% of the time
        # to trace ResNet-50 into its graph (about 15% of the build is saved); the arithmetic is the same.
        axes = tuple(range(x.ndim - 1))
        inv_n = np.float32(1.0 / math.prod(x.shape[:-1]))
        per_channel = lambda v: lax.broadcast_in_dim(v, x.shape, channel)  # noqa: E731
        # Named per-channel statistics: rematerialising this layer (executor's 'conv_outputs') then redoes only
        # element-wise work, not the two reductions over the map.
        mean = checkpoint_name(lax.mul(lax.reduce_sum(x, axes), inv_n), NORM_STATISTICS)
        centred = lax.sub(x, per_channel(mean))
        var = lax.mul(lax.reduce_sum(lax.mul(centred, centred), axes), inv_n)
        gain = checkpoint_name(lax.mul(lax.rsqrt(lax.add(var, np.float32(self.epsilon))), scale), NORM_STATISTICS)
        return lax.add(lax.mul(centred, per_channel(gain)), per_channel(bias))


class PosEnc(nn.Module):
    """Learned positional encoding added to an NHWC map; parameter ``weight`` of shape (1, s, s, C).

    A map of another size (images of another resolution, e.g. a low-resolution phase of meta-training) gets the
    table resampled bilinearly to its size, as ViTs do at a new resolution; the reference only takes s x s maps.
    """
    channels: int
    size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param('weight', nn.initializers.normal(1.0), (1, self.size, self.size, self.channels))
        if weight.shape[1:3] != x.shape[1:3]:
            weight = jax.image.resize(weight, (1, *x.shape[1:3], self.channels), 'bilinear')
        return x + weight


class FastConv(nn.Conv):
    """``nn.Conv`` for 2-D NHWC maps, computed by the fast-gradient kernels of :mod:`ghn_jax.nets.kernels`.

    Same fields, parameter names, shapes and initial values as ``nn.Conv`` (``kernel`` (kh, kw, C_in/groups, C_out),
    optional ``bias``), and still an ``nn.Conv`` instance, so parameter paths, the graph tracer and the executor are
    unaffected; only the computation changes: dense convs use :func:`~ghn_jax.nets.kernels.conv2d` (XLA's forward,
    a much faster filter gradient), depthwise convs :func:`~ghn_jax.nets.kernels.depthwise_conv2d` (much faster
    than XLA:CPU's grouped conv both ways). Other grouped convs (e.g. 8 -> 4 channels in 4 groups) use XLA's
    grouped conv, as ``nn.Conv``. Expects explicit ``[(lo, hi), (lo, hi)]`` padding, as :func:`torch_conv` gives.
    """

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        channels = inputs.shape[-1]
        groups = self.feature_group_count
        kernel_size = tuple(self.kernel_size)
        kernel = self.param('kernel', self.kernel_init, kernel_size + (channels // groups, self.features),
                            self.param_dtype)
        bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        if self.dtype is not None or kernel.dtype != inputs.dtype or (bias is not None and bias.dtype != inputs.dtype):
            inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)  # (a no-op otherwise)
        padding = tuple(tuple(p) for p in self.padding)
        dilation = tuple(self.kernel_dilation or (1, 1))
        custom = not in_graph_trace()   # a graph trace needs no custom gradient, only the data flow
        name = CONV_OUTPUT
        if groups == 1 and custom:
            y = conv2d(inputs, kernel, self.strides or 1, padding, dilation)
            if kernel_size == (1, 1):
                name = POINTWISE_OUTPUT
        elif groups == self.features == channels and custom:
            y = depthwise_conv2d(inputs, kernel, self.strides or 1, padding, dilation)
            name = DEPTHWISE_OUTPUT
        else:
            y = jax.lax.conv_general_dilated(inputs, kernel, tuple(self.strides or (1, 1)), padding,
                                             rhs_dilation=dilation, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                             feature_group_count=groups, precision=self.precision)
        if not custom:   # a graph trace needs no bias add either
            return y
        y = checkpoint_name(y, name)
        return y if bias is None else y + bias


def torch_conv(features: int, kernel: int | Sequence[int], stride: int | Sequence[int] = 1,
               padding: int | Sequence[int] = 0, dilation: int = 1, groups: int = 1, bias: bool = False,
               name: str | None = None) -> nn.Conv:
    """An ``nn.Conv`` configured like ``torch.nn.Conv2d`` (symmetric explicit padding, groups, dilation).

    2-D convs are a :class:`FastConv`, which computes the same function with faster gradients on XLA:CPU.
    """
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
    cls = FastConv if len(kernel) == 2 else nn.Conv
    return cls(features, kernel, strides=stride, padding=[(p, p) for p in padding],
               kernel_dilation=(dilation, dilation), feature_group_count=groups, use_bias=bias, name=name)


def norm_layer(norm: str | None, features: int, name: str) -> nn.Module | None:
    """BatchNorm for ``'bnorm'``/``'bn*'`` norms, ``None`` (identity) for BN-free nets."""
    if norm in (None, '', 'none'):
        return None
    if str(norm).startswith('bn'):
        return BatchNorm(features, name=name)
    raise ValueError(f'unsupported norm {norm!r}: use "bnorm" or None')


def max_pool(x: jax.Array, kernel: int, stride: int, padding: int) -> jax.Array:
    """torch.nn.MaxPool2d (implicit -inf padding), by the fast-backward kernel of :mod:`ghn_jax.nets.kernels`."""
    return max_pool2d(x, kernel, stride, padding)


def avg_pool(x: jax.Array, kernel: int, stride: int, padding: int, count_include_pad: bool = False) -> jax.Array:
    """torch.nn.AvgPool2d; DeepNets-1M uses ``count_include_pad=False``. Fast-backward kernel of ``kernels``."""
    return avg_pool2d(x, kernel, stride, padding, count_include_pad)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes of an NHWC map, keeping them (like AdaptiveAvgPool2d(1))."""
    return jnp.mean(x, axis=(1, 2), keepdims=True)
