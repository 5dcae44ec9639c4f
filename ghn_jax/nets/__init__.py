"""Flax target networks: DeepNets-1M ``Network``, a zoo, and :func:`from_arch_json`."""
from __future__ import annotations

from typing import Any

import flax.linen as nn

from ghn_jax.nets.deepnets import DARTS, VIT, Genotype, Network, darts, network_from_args, vit
from ghn_jax.nets.layers import BatchNorm, PosEnc
from ghn_jax.nets.torch_names import from_torch_state_dict, name_map, to_torch_state_dict, torch_name
from ghn_jax.nets.zoo import ResNet, SequentialNet, SmallCNN, resnet18, resnet34, resnet50

_ZOO = {'resnet18': resnet18, 'resnet34': resnet34, 'resnet50': resnet50}

__all__ = ['Network', 'Genotype', 'DARTS', 'VIT', 'darts', 'vit', 'network_from_args', 'ResNet', 'resnet18',
           'resnet34', 'resnet50', 'SmallCNN', 'SequentialNet', 'BatchNorm', 'PosEnc', 'from_arch_json',
           'torch_name', 'name_map', 'to_torch_state_dict', 'from_torch_state_dict', 'sample']


def from_arch_json(d: dict[str, Any]) -> tuple[nn.Module, tuple[int, ...]]:
    """Build ``(module, input_shape)`` (NHWC, batch 1) from an architecture description.

    Accepted schemas (all those of ``golden/ghn2/*/arch.json`` and ``bench/*.json``):
      * DeepNets-1M: ``{'genotype': {...}, 'network_args': {...}}`` or the flat form with the network arguments
        next to ``genotype`` (``C``, ``n_cells``, ``ks``, ...);
      * zoo: ``{'model': 'resnet50' | 'torchvision.resnet50' | 'resnet18' | ..., 'num_classes': 10,
        'adjust_net': ...}`` (any truthy ``adjust_net`` = the CIFAR adjustment) or ``{'model': 'vit'}``;
      * sequential: ``{'layers': [{'name': ..., 'type': 'Conv2d', ...}, ...]}`` (PyTorch-like leaf layers).
    """
    num_classes = int(d.get('num_classes') or d.get('network_args', {}).get('num_classes') or 10)
    size = d.get('input_size')
    if 'genotype' in d:
        args = dict(d.get('network_args') or {k: v for k, v in d.items() if k != 'genotype'})
        args.setdefault('num_classes', num_classes)
        args.setdefault('is_imagenet_input', False)
        module = network_from_args(d['genotype'], **args)
        c, h, w = size or (3,) + (224 if module.is_imagenet_input else 32,) * 2
        return module, (1, h, w, c)
    if 'model' in d:
        name = str(d['model']).split('.')[-1].lower()
        if name == 'vit':
            module = vit(num_classes, imagenet=bool(d.get('imagenet', False)))
            side = 224 if module.is_imagenet_input else 32
            return module, (1, side, side, 3)
        if name not in _ZOO:
            raise ValueError(f'unknown zoo model {d["model"]!r}; known: {sorted(_ZOO)} and vit')
        cifar = bool(d.get('adjust_net', False))
        side = 32 if cifar else 224
        if size:
            side = int(size[-1])
        return _ZOO[name](num_classes, cifar=cifar), (1, side, side, 3)
    if 'layers' in d:
        c, h, w = d.get('input_size', (3, 32, 32))
        return SequentialNet(tuple(d['layers'])), (1, h, w, c)
    raise ValueError('unrecognised architecture description: expected a `genotype` (DeepNets-1M), a `model` '
                     f'(zoo) or `layers` (sequential) key; got keys {sorted(d)}')


def sample(split: str, index: int, seed: int = 1, **kwargs: Any) -> dict[str, Any]:
    """Draw DeepNets-1M architecture ``index`` of ``split`` (see :mod:`ghn_jax.nets.deepnets_generator`)."""
    from ghn_jax.nets import deepnets_generator
    return deepnets_generator.sample(split, index, seed, **kwargs)
