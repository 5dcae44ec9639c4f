"""Mapping between ghn_jax parameter paths/layouts and the reference's PyTorch names/layouts, both ways.

Rule (holds for every network in :mod:`ghn_jax.nets`, whose modules are named after PyTorch attribute paths):

==========================  ===============================  ==========================================
ghn_jax path                PyTorch name                      layout change (ghn_jax -> PyTorch)
==========================  ===============================  ==========================================
``(*mods, 'kernel')`` 4-D    ``'.'.join(mods) + '.weight'``   conv ``(kh, kw, I/g, O)`` -> ``(O, I/g, kh, kw)``
``(*mods, 'kernel')`` 2-D    ``... + '.weight'``              dense ``(I, O)`` -> ``(O, I)``
``(*mods, 'scale')``         ``... + '.weight'``              none (BatchNorm/LayerNorm gain)
``(*mods, 'bias')``          ``... + '.bias'``                none
``(*mods, 'weight')`` 4-D    ``... + '.weight'``              positional encoding ``(1, s, s, C)`` -> ``(1, C, s, s)``
==========================  ===============================  ==========================================

Example: ``('cells.3', '_ops.1', 'op.2', 'kernel')`` <-> ``cells.3._ops.1.op.2.weight``.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax
import numpy as np

Path = tuple[str, ...]

_TO_TORCH_AXES = {('kernel', 4): (3, 2, 0, 1), ('kernel', 2): (1, 0), ('weight', 4): (0, 3, 1, 2)}
_LEAF_TO_TORCH = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'weight': 'weight'}


def torch_name(path: Path) -> str:
    """PyTorch parameter name of the ghn_jax parameter at ``path`` (a tuple of module names + leaf)."""
    *mods, leaf = path
    if leaf not in _LEAF_TO_TORCH:
        raise KeyError(f'no PyTorch name for parameter leaf {leaf!r} at {path}')
    return '.'.join(list(mods) + [_LEAF_TO_TORCH[leaf]])


def to_torch_layout(path: Path, value: Any) -> np.ndarray:
    """Transpose a ghn_jax parameter value to the PyTorch layout."""
    value = np.asarray(value)
    axes = _TO_TORCH_AXES.get((path[-1], value.ndim))
    return value if axes is None else np.transpose(value, axes)


def to_torch_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch-layout shape of a ghn_jax parameter of ``shape``."""
    axes = _TO_TORCH_AXES.get((path[-1], len(shape)))
    return tuple(shape) if axes is None else tuple(shape[a] for a in axes)


def from_torch_layout(path: Path, value: Any) -> np.ndarray:
    """Inverse of :func:`to_torch_layout`."""
    value = np.asarray(value)
    axes = _TO_TORCH_AXES.get((path[-1], value.ndim))
    return value if axes is None else np.transpose(value, np.argsort(axes))


def flat_paths(params: Mapping) -> dict[Path, Any]:
    """``{path: leaf}`` for a (possibly frozen) nested parameter dict."""
    return {tuple(k): v for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(params)).items()}


def to_torch_state_dict(params: Mapping) -> dict[str, np.ndarray]:
    """ghn_jax params -> ``{pytorch_name: array in PyTorch layout}``."""
    return {torch_name(p): to_torch_layout(p, v) for p, v in flat_paths(params).items()}


def name_map(params: Mapping) -> dict[str, Path]:
    """``{pytorch_name: ghn_jax path}`` for every parameter of ``params`` (raises on collisions)."""
    out: dict[str, Path] = {}
    for path in flat_paths(params):
        name = torch_name(path)
        if name in out:
            raise ValueError(f'two parameters map to the PyTorch name {name!r}: {out[name]} and {path}')
        out[name] = path
    return out


def from_torch_state_dict(state: Mapping[str, Any], like: Mapping, strict: bool = True) -> dict:
    """``{pytorch_name: array}`` -> ghn_jax params with the structure of ``like`` (e.g. from ``module.init``).

    With ``strict``, every parameter of ``like`` must be present and shapes must agree; missing entries otherwise
    keep their value from ``like``.
    """
    names = name_map(like)
    flat = flat_paths(like)
    missing = [n for n in names if n not in state]
    if strict and missing:
        raise KeyError(f'{len(missing)} parameters missing from the state dict, e.g. {missing[:5]}')
    out = {}
    for name, path in names.items():
        if name not in state:
            out[path] = flat[path]
            continue
        value = from_torch_layout(path, state[name])
        if value.shape != tuple(np.shape(flat[path])):
            raise ValueError(f'{name}: shape {np.shape(state[name])} (PyTorch layout) does not match '
                             f'{to_torch_shape(path, np.shape(flat[path]))}')
        out[path] = value
    return flax.traverse_util.unflatten_dict(out)
