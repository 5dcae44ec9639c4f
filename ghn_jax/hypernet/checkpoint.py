"""GHN checkpoints: reference (PyTorch) state dicts <-> Flax params, and the files they live in.

Supported files:
  * ``.npz`` with PyTorch ``state_dict`` names (the golden ``ghn2_cifar10_random.npz`` and ghn_jax's own
    checkpoints, which add a ``__config__`` JSON entry);
  * ``.pt`` checkpoints of the reference (``{'state_dict', 'config', ...}``), read WITHOUT PyTorch: the zip archive's
    pickle is parsed with a restricted unpickler that only rebuilds tensors as numpy arrays.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from typing import Any, Mapping

import flax
import numpy as np

from ghn_jax.hypernet.ghn import GHNConfig


class CheckpointError(ValueError):
    """The checkpoint file is unreadable or does not match the GHN."""


def _flax_path(name: str) -> tuple[tuple[str, ...], str]:
    """PyTorch GHN parameter name -> (Flax module path, Flax leaf); numeric tokens stay with their module."""
    tokens = name.split('.')
    *mods, leaf = tokens
    path: list[str] = []
    for t in mods:
        if t.isdigit() and path:
            path[-1] = f'{path[-1]}.{t}'
        else:
            path.append(t)
    if leaf in ('weight_ih', 'weight_hh', 'bias_ih', 'bias_hh'):  # GRUCell
        return tuple(path) + (leaf.split('_')[1],), 'kernel' if leaf.startswith('weight') else 'bias'
    if leaf == 'weight':
        if path[-1].startswith('embed'):
            return tuple(path), 'embedding'
        if path[-1] == 'ln':
            return tuple(path), 'scale'
        return tuple(path), 'kernel'
    return tuple(path), leaf


def torch_to_flax(state: Mapping[str, np.ndarray]) -> dict:
    """Reference GHN ``state_dict`` (numpy arrays, PyTorch layouts) -> nested Flax params."""
    flat = {}
    for name, value in state.items():
        value = np.asarray(value, np.float32)
        path, leaf = _flax_path(name)
        if leaf == 'kernel':
            value = value.reshape(value.shape[0], -1).T  # Linear (out, in) / 1x1 conv (out, in, 1, 1) -> (in, out)
        flat[path + (leaf,)] = value
    return flax.traverse_util.unflatten_dict(flat)


def flax_to_torch(params: Mapping) -> dict[str, np.ndarray]:
    """Inverse of :func:`torch_to_flax` (1x1 conv kernels come back as (out, in, 1, 1))."""
    out = {}
    for path, value in flax.traverse_util.flatten_dict(flax.core.unfreeze(params)).items():
        value = np.asarray(value)
        *mods, leaf = path
        name = '.'.join(mods)
        if mods[-1] in ('ih', 'hh'):
            out[f"{'.'.join(mods[:-1])}.{'weight' if leaf == 'kernel' else 'bias'}_{mods[-1]}"] = (
                value.T if leaf == 'kernel' else value)
        elif leaf == 'kernel':
            w = value.T
            out[f'{name}.weight'] = w.reshape(w.shape + (1, 1)) if '.conv.' in f'.{name}.' or \
                name.endswith('class_layer_predictor.1') else w
        elif leaf in ('embedding', 'scale'):
            out[f'{name}.weight'] = value
        else:
            out[f'{name}.{leaf}'] = value
    return out


def infer_config(state: Mapping[str, np.ndarray], **overrides: Any) -> GHNConfig:
    """Read the GHN configuration off the tensor shapes (``weight_norm`` cannot be seen: GHN-2 default)."""
    try:
        hid = state['embed.weight'].shape[1]
        num_classes = state['bias_class.1.bias'].shape[0]
        s2 = state['decoder.fc.0.weight'].shape[0] // (4 * hid)
    except KeyError as e:
        raise CheckpointError(f'not a GHN state dict: missing {e.args[0]!r}') from None
    kw = dict(hid=hid, num_classes=num_classes, max_spatial=int(round(np.sqrt(s2))),
              hypernet='gatedgnn' if 'gnn.gru.weight_ih' in state else 'mlp',
              ve='gnn.mlp_ve.fc.0.weight' in state or 'gnn.gru.weight_ih' not in state,
              layernorm='ln.weight' in state)
    kw.update(overrides)
    return GHNConfig(**kw)


def config_from_reference(cfg: Mapping[str, Any]) -> GHNConfig:
    """The reference checkpoint ``config`` dict -> :class:`GHNConfig`."""
    return GHNConfig(num_classes=int(cfg['num_classes']), max_spatial=int(cfg['max_shape'][-1]),
                     hid=int(cfg.get('hid', 32)), hypernet=cfg.get('hypernet', 'gatedgnn'), ve=bool(cfg.get('ve')),
                     layernorm=bool(cfg.get('layernorm')), weight_norm=bool(cfg.get('weight_norm')),
                     ve_cutoff=50 if cfg.get('ve') else 1)


def check_params(params: Mapping, expected: Mapping, source: str) -> None:
    """Raise :class:`CheckpointError` naming the first missing, unexpected or mis-shaped tensor."""
    got = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    want = flax.traverse_util.flatten_dict(flax.core.unfreeze(expected))
    names = lambda paths: sorted('/'.join(p) for p in paths)
    missing, extra = names(set(want) - set(got)), names(set(got) - set(want))
    if missing:
        raise CheckpointError(f'{source}: missing {len(missing)} tensors, e.g. {missing[:3]} '
                              '(is this a checkpoint of another GHN variant?)')
    if extra:
        raise CheckpointError(f'{source}: unexpected tensors {extra[:3]} for this GHN configuration')
    for p in want:
        if tuple(np.shape(got[p])) != tuple(np.shape(want[p])):
            raise CheckpointError(f"{source}: tensor {'/'.join(p)} has shape {np.shape(got[p])}, "
                                  f'expected {np.shape(want[p])}')


# ------------------------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------------------------

def save_npz(path: str, params: Mapping, config: GHNConfig, extra: Mapping[str, Any] | None = None) -> None:
    """Save GHN params (PyTorch names, so the file is also readable by ppuda users) and config to ``path``."""
    arrays = {k: np.asarray(v, np.float32) for k, v in flax_to_torch(params).items()}
    meta = {'config': config.to_dict(), **(extra or {})}
    tmp = path + '.tmp.npz'
    np.savez(tmp, __config__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint


def load_npz(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f'{path}: unreadable npz checkpoint ({e}); re-download or re-save it') from None
    meta = json.loads(arrays.pop('__config__').tobytes().decode()) if '__config__' in arrays else {}
    return arrays, meta


class _TorchUnpickler(pickle.Unpickler):
    """Rebuilds ``torch.save`` zip checkpoints as numpy arrays; refuses every other global (no code execution)."""

    _DTYPES = {'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
               'LongStorage': np.int64, 'IntStorage': np.int32, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_}

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        if module == 'torch._utils' and name == '_rebuild_tensor_v2':
            return self._rebuild
        if module == 'torch._utils' and name == '_rebuild_parameter':
            return lambda data, requires_grad, hooks: data
        if module == 'collections' and name == 'OrderedDict':
            import collections
            return collections.OrderedDict
        if module == 'torch' and name in self._DTYPES:
            return self._DTYPES[name]
        if module == 'torch' and name == 'Size':
            return tuple
        raise pickle.UnpicklingError(f'checkpoint references {module}.{name}, which is not allowed')

    def persistent_load(self, pid):
        _, dtype, key, _, numel = pid
        raw = self.archive.read(f'{self.prefix}/data/{key}')
        return np.frombuffer(raw, dtype=np.dtype(dtype))[:numel]

    @staticmethod
    def _rebuild(storage, offset, size, stride, *unused):
        if not size:
            return storage[offset:offset + 1].reshape(()).copy()
        itemsize = storage.dtype.itemsize
        return np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                               strides=tuple(s * itemsize for s in stride)).copy()


def load_torch_checkpoint(path: str) -> dict[str, Any]:
    """Read a reference ``.pt`` checkpoint (``torch.save`` zip format) into numpy without importing torch."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f'{path}: not a torch.save zip archive ({e}); legacy (pre-1.6) files must be '
                              're-saved with torch>=1.6') from None
    with archive:
        pkl = [n for n in archive.namelist() if n.endswith('data.pkl')]
        if not pkl:
            raise CheckpointError(f'{path}: no data.pkl inside; is this a PyTorch checkpoint?')
        prefix = pkl[0][:-len('/data.pkl')]
        try:
            return _TorchUnpickler(archive.read(pkl[0]), archive, prefix).load()
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
            raise CheckpointError(f'{path}: corrupt or unsupported checkpoint ({e})') from None
