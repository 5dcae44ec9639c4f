"""Decoders (spec 5.1-5.2): node states -> 64x64 blocks per kernel position, 1-D rows, classifier blocks.

The conv decoder's two 1x1 convolutions act on every spatial position of the ``(128, S, S)`` map independently, so
decoding only the positions a parameter needs (``kh x kw`` top-left positions of its node) is exactly the
reference's "decode, crop" computation, at a fraction of the cost.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvDecoder(nn.Module):
    """fc (hid -> 128*S*S) + ReLU, then per position 1x1 convs 128 -> 256 (ReLU) -> 64*64."""
    max_spatial: int = 11
    num_classes: int = 10
    hid: int = 32
    block: int = 64

    @nn.compact
    def __call__(self, h: jax.Array, pos_node: jax.Array, pos_yx: jax.Array, cls_pos: jax.Array):
        """h: (M, hid) flat node states; pos_*: (P,) positions; cls_pos: (B,) -> (P, 64, 64), (B, nc, 64)."""
        s, c1, c2 = self.max_spatial, 4 * self.hid, 8 * self.hid
        # Rematerialised: its (hid, P, 128) gather of the weight is redone in the backward pass, not kept for it.
        z = nn.relu(nn.remat(_PositionDense)(c1, s, name='fc.0')(h[pos_node], pos_yx))  # (P, 128)
        z = nn.relu(nn.Dense(c2, name='conv.0')(z))
        blocks = nn.Dense(self.block * self.block, name='conv.2')(z).reshape(-1, self.block, self.block)
        # Classifier: the 64 output filters at position (0, 0) are channels mixed into num_classes rows.
        cls = nn.relu(blocks[cls_pos])                                         # (B, 64_out, 64_in)
        cls = nn.Dense(self.num_classes, name='class_layer_predictor.1')(jnp.swapaxes(cls, 1, 2))
        return blocks, jnp.swapaxes(cls, 1, 2)                                 # (B, nc, 64_in)


class _PositionDense(nn.Module):
    """The decoder's Linear(hid -> C*S*S), evaluated only at one spatial position per row.

    Same parameters as ``nn.Dense(C*S*S)`` (output index c*S*S + y*S + x, as the reference's view to (C, S, S)).
    """
    channels: int
    max_spatial: int

    @nn.compact
    def __call__(self, h: jax.Array, yx: jax.Array) -> jax.Array:
        s = self.max_spatial
        kernel = self.param('kernel', nn.initializers.lecun_normal(), (h.shape[-1], self.channels * s * s))
        bias = self.param('bias', nn.initializers.zeros, (self.channels * s * s,))
        cols = jnp.arange(self.channels)[None, :] * s * s + (yx[:, 0] * s + yx[:, 1])[:, None]   # (P, C)
        return jnp.einsum('pi,ipc->pc', h, kernel[:, cols]) + bias[cols]


class Decoder1D(nn.Module):
    """hid -> 64 (ReLU) -> 128, viewed as (2, 64): row 0 = gain/weight, row 1 = bias/shift."""
    hid: int = 32
    block: int = 64

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(2 * self.hid, name='fc.0')(h))
        return nn.Dense(2 * self.block, name='fc.2')(x).reshape(h.shape[:-1] + (2, self.block))
