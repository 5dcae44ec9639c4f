"""Hand-written target networks: torchvision-style ResNets, a small CNN and a sequential-layer network.

Module names follow the torchvision / PyTorch attribute paths (``layer2.1.conv3``, ``downsample.0``, ``fc``) so that
parameters map one-to-one to the reference's names (:mod:`ghn_jax.nets.torch_names`).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

from ghn_jax.nets.layers import BatchNorm, avg_pool, global_avg_pool, max_pool, relu, torch_conv


class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3x3 convs with a residual (1x1 conv + BN downsample when the shape changes)."""
    planes: int
    stride: int = 1
    expansion = 1

    @nn.compact
    def __call__(self, x):
        out = relu(BatchNorm(self.planes, name='bn1')(torch_conv(self.planes, 3, self.stride, 1, name='conv1')(x)))
        out = BatchNorm(self.planes, name='bn2')(torch_conv(self.planes, 3, 1, 1, name='conv2')(out))
        return relu(out + _shortcut(x, self.planes, self.stride))


class Bottleneck(nn.Module):
    """ResNet-50 block (torchvision v1.5: the stride sits on the 3x3 conv)."""
    planes: int
    stride: int = 1
    expansion = 4

    @nn.compact
    def __call__(self, x):
        out = relu(BatchNorm(self.planes, name='bn1')(torch_conv(self.planes, 1, name='conv1')(x)))
        out = relu(BatchNorm(self.planes, name='bn2')(torch_conv(self.planes, 3, self.stride, 1, name='conv2')(out)))
        out = BatchNorm(4 * self.planes, name='bn3')(torch_conv(4 * self.planes, 1, name='conv3')(out))
        return relu(out + _shortcut(x, 4 * self.planes, self.stride))


def _shortcut(x, features, stride):
    if stride == 1 and x.shape[-1] == features:
        return x
    return BatchNorm(features, name='downsample.1')(torch_conv(features, 1, stride, name='downsample.0')(x))


class ResNet(nn.Module):
    """torchvision ResNet; ``cifar=True`` applies the reference's ``adjust_net`` (3x3 stride-1 stem, no max-pool)."""
    block: str = 'bottleneck'
    layers: Sequence[int] = (3, 4, 6, 3)
    num_classes: int = 1000
    cifar: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        block = Bottleneck if self.block == 'bottleneck' else BasicBlock
        if self.cifar:
            x = torch_conv(64, 3, 1, 1, name='conv1')(x)
        else:
            x = torch_conv(64, 7, 2, 3, name='conv1')(x)
        x = relu(BatchNorm(64, name='bn1')(x))
        if not self.cifar:
            x = max_pool(x, 3, 2, 1)
        for stage, (n_blocks, planes) in enumerate(zip(self.layers, (64, 128, 256, 512))):
            for b in range(n_blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                x = block(planes, stride, name=f'layer{stage + 1}.{b}')(x)
        x = global_avg_pool(x).reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, name='fc')(x)


def resnet18(num_classes: int = 1000, cifar: bool = False) -> ResNet:
    return ResNet('basic', (2, 2, 2, 2), num_classes, cifar)


def resnet34(num_classes: int = 1000, cifar: bool = False) -> ResNet:
    return ResNet('basic', (3, 4, 6, 3), num_classes, cifar)


def resnet50(num_classes: int = 1000, cifar: bool = False) -> ResNet:
    return ResNet('bottleneck', (3, 4, 6, 3), num_classes, cifar)


class SmallCNN(nn.Module):
    """A plain CNN (conv-BN-ReLU-maxpool stages, global pooling, linear classifier): a quick, cheap target."""
    channels: Sequence[int] = (32, 64, 128)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, c in enumerate(self.channels):
            x = torch_conv(c, 3, 1, 1, name=f'features.{4 * i}')(x)
            x = relu(BatchNorm(c, name=f'features.{4 * i + 1}')(x))
            x = max_pool(x, 2, 2, 0)
        x = global_avg_pool(x).reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, name='classifier')(x)


# Layer types understood by SequentialNet, with the torch attribute names they need.
SEQUENTIAL_LAYERS = ('Conv2d', 'Linear', 'BatchNorm2d', 'ReLU', 'GELU', 'Hardswish', 'MaxPool2d', 'AvgPool2d',
                     'AdaptiveAvgPool2d', 'Flatten', 'Dropout', 'Identity')


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


class SequentialNet(nn.Module):
    """A network given as an ordered list of PyTorch-like leaf layer descriptions (arch.json ``modules`` entries).

    Each entry is a dict with ``name`` and ``type`` plus the attributes of that type (``out_channels``,
    ``kernel_size``, ``stride``, ``padding``, ``dilation``, ``groups``, ``bias`` for Conv2d; ``out_features``,
    ``bias`` for Linear; ``num_features`` for BatchNorm2d; ``kernel_size``/``stride``/``padding`` for pooling).
    Layers are applied in order; a ``Linear`` flattens its input first.
    """
    layers: Sequence[dict[str, Any]]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for spec in self.layers:
            kind, name = spec['type'], spec['name']
            if kind == 'Conv2d':
                x = torch_conv(spec['out_channels'], _pair(spec['kernel_size']), _pair(spec.get('stride', 1)),
                               _pair(spec.get('padding', 0)), _pair(spec.get('dilation', 1))[0],
                               spec.get('groups', 1), spec.get('bias', True), name=name)(x)
            elif kind == 'Linear':
                x = nn.Dense(spec['out_features'], use_bias=spec.get('bias', True), name=name)(
                    x.reshape(x.shape[0], -1))
            elif kind == 'BatchNorm2d':
                x = BatchNorm(spec['num_features'], name=name)(x)
            elif kind == 'ReLU':
                x = relu(x)
            elif kind == 'GELU':
                x = nn.gelu(x, approximate=False)
            elif kind == 'Hardswish':
                x = nn.hard_swish(x)
            elif kind in ('MaxPool2d', 'AvgPool2d'):
                k = _pair(spec['kernel_size'])[0]
                s = _pair(spec.get('stride') or k)[0]
                p = _pair(spec.get('padding', 0))[0]
                x = max_pool(x, k, s, p) if kind == 'MaxPool2d' else avg_pool(
                    x, k, s, p, spec.get('count_include_pad', True))
            elif kind == 'AdaptiveAvgPool2d':
                if _pair(spec.get('output_size', 1)) != (1, 1):
                    raise ValueError(f'{name}: only AdaptiveAvgPool2d(1) is supported')
                x = global_avg_pool(x)
            elif kind == 'Flatten':
                x = x.reshape(x.shape[0], -1)
            elif kind in ('Dropout', 'Identity'):
                pass
            else:
                raise ValueError(f'layer {name!r} has unsupported type {kind!r}; supported: {SEQUENTIAL_LAYERS}')
        return x
