"""Shape encoder (spec section 2): parameter shapes -> rows of two small embedding tables.

The table lookups are computed on the host (numpy, once per graph); the jitted GHN only gathers table rows.
"""
from __future__ import annotations

import numpy as np


def channel_vocab(num_classes: int) -> np.ndarray:
    """Sorted channel values with an embedding row: {1, 3, num_classes} u 8..56 u 64..4080/16 u 4096..8192/32."""
    values = {1, 3, int(num_classes)} | set(range(8, 64, 8)) | set(range(64, 4096, 16)) | set(range(4096, 8193, 32))
    return np.array(sorted(values), np.int64)


def spatial_vocab(max_spatial: int) -> np.ndarray:
    """Odd sizes below max(12, S) plus 14 and 16: CIFAR (S=11) [1,3,5,7,9,11,14,16]."""
    return np.array(sorted(set(range(1, max(12, max_spatial), 2)) | {14, 16}), np.int64)


def _nearest(vocab: np.ndarray, value: int) -> int:
    dist = np.abs(vocab - value)
    return int(np.flatnonzero(dist == dist.min())[0])  # ties go to the smaller value


def channel_index(vocab: np.ndarray, c: int) -> int:
    hit = np.flatnonzero(vocab == c)
    if hit.size:
        return int(hit[0])
    if 4 <= c <= 7:
        return int(np.flatnonzero(vocab == 8)[0])
    if c > 8192:
        return int(np.flatnonzero(vocab == 8192)[0])
    return _nearest(vocab, c)


def spatial_index(vocab: np.ndarray, s: int) -> int:
    hit = np.flatnonzero(vocab == s)
    if hit.size:
        return int(hit[0])
    if s == 2:
        return int(np.flatnonzero(vocab == 3)[0])
    if s > 16:
        return int(np.flatnonzero(vocab == 16)[0])
    return _nearest(vocab, s)


def shape_to_4d(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(n) -> (n,1,1,1); (o,i) -> (o,i,1,1); (1,T,C) tokens -> (1,C,sqrt T,sqrt T); other 3-D -> (a,b,c,1)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        return (shape[0], 1, 1, 1)
    if len(shape) == 2:
        return (shape[0], shape[1], 1, 1)
    if len(shape) == 3:
        if shape[0] == 1 and min(shape[1:]) > 1:
            side = int(np.sqrt(shape[1]))
            return (1, shape[2], side, side)
        return (shape[0], shape[1], shape[2], 1)
    return shape[:4]  # type: ignore[return-value]


class ShapeIndexer:
    """Maps node shapes to ``(out, in, h, w)`` table rows; shapeless nodes use the extra last rows."""

    def __init__(self, num_classes: int, max_spatial: int):
        self.channels = channel_vocab(num_classes)
        self.spatial = spatial_vocab(max_spatial)
        self._cache: dict = {}

    @property
    def n_channel_rows(self) -> int:
        return len(self.channels) + 1

    @property
    def n_spatial_rows(self) -> int:
        return len(self.spatial) + 1

    def __call__(self, shape: tuple[int, ...] | None) -> tuple[int, int, int, int]:
        if shape is None:
            return (len(self.channels), len(self.channels), len(self.spatial), len(self.spatial))
        key = tuple(shape)
        if key not in self._cache:
            o, i, h, w = shape_to_4d(key)
            self._cache[key] = (channel_index(self.channels, o), channel_index(self.channels, i),
                                spatial_index(self.spatial, h), spatial_index(self.spatial, w))
        return self._cache[key]

    def indices(self, shapes: list) -> np.ndarray:
        return np.array([self(s) for s in shapes], np.int32).reshape(-1, 4)
