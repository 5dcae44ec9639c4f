"""Node models of the GHN: the gated GNN (GHN-1/GHN-2) and the per-node MLP baseline (spec section 4).

The reference updates nodes one at a time in topological order (forward sweep) and then in reverse order
(backward sweep). Because forward messages only come from ancestors and backward messages only from descendants,
all nodes of one longest-path depth (height for the backward sweep) can be updated together (spec 4.4). The host
turns each graph's levels into a fixed-size schedule ``(T, W)`` of node indices (wide levels are split across
steps, padding points at a trash row ``N``), and a ``lax.scan`` runs it: one compile per node budget.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
    """Linear layers named ``fc.0, fc.2, ...`` (as in the reference), ReLU after every layer unless ``last_relu``
    is False."""
    features: tuple[int, ...]
    last_relu: bool = True

    @nn.compact
    def __call__(self, x):
        for j, f in enumerate(self.features):
            x = nn.Dense(f, name=f'fc.{2 * j}')(x)
            if j < len(self.features) - 1 or self.last_relu:
                x = nn.relu(x)
        return x


class TorchGRUCell(nn.Module):
    """GRU cell with PyTorch's gate convention (gate rows [r; z; n], separate input and hidden biases)."""
    features: int

    @nn.compact
    def __call__(self, m, h):
        gi = nn.Dense(3 * self.features, name='ih')(m)
        gh = nn.Dense(3 * self.features, name='hh')(h)
        ir, iz, i_n = jnp.split(gi, 3, axis=-1)
        hr, hz, h_n = jnp.split(gh, 3, axis=-1)
        r = jax.nn.sigmoid(ir + hr)
        z = jax.nn.sigmoid(iz + hz)
        n = jnp.tanh(i_n + r * h_n)
        return (1.0 - z) * n + z * h


def _pure(module: nn.Module, x: jax.Array):
    """Call a submodule once (creating/binding its params) and return it as a pure function of its input.

    Pure functions can run inside ``jax.lax.scan``, where bound Flax modules cannot be called."""
    module(*x) if isinstance(x, tuple) else module(x)
    variables = {'params': module.variables['params']}
    free = module.clone(parent=None, name=None)
    return lambda *args: free.apply(variables, *args)


class GatedGNN(nn.Module):
    """One round of forward + backward sweeps; virtual edges (``ve``) add a second message MLP weighted by 1/s."""
    hid: int = 32
    ve: bool = True

    @nn.compact
    def __call__(self, h: jax.Array, adj: jax.Array, fwd_schedule: jax.Array, bwd_schedule: jax.Array):
        """h: (B, N, hid) node states; adj: (B, N, N) integer edge matrices (0 none, 1 real, s virtual);
        schedules: (B, T, W) node indices in [0, N], where N marks padding. Graphs are independent."""
        f = _pure(MLP((self.hid // 2 if self.ve else self.hid, self.hid), name='mlp'), h)
        g = _pure(MLP((self.hid // 2, self.hid), name='mlp_ve'), h) if self.ve else None
        gru = _pure(TorchGRUCell(self.hid, name='gru'), (h, h))

        def sweep(h, schedule, a1, ainv):
            def step(carry, idx):
                h, fh, gh = carry
                m = a1[:, idx].T @ fh
                if g is not None:
                    m = m + ainv[:, idx].T @ gh
                h_new = gru(m, h[idx])
                h = h.at[idx].set(h_new)
                fh = fh.at[idx].set(f(h_new))
                if g is not None:
                    gh = gh.at[idx].set(g(h_new))
                return (h, fh, gh), None

            gh = g(h) if g is not None else jnp.zeros((), h.dtype)
            (h, _, _), _ = jax.lax.scan(step, (h, f(h), gh), schedule)
            return h

        def one_graph(h, adj, fwd, bwd):
            n = h.shape[0]
            # One extra all-zero row/column: the trash node that padded schedule entries point at.
            adj = jnp.pad(adj, ((0, 1), (0, 1)))
            a1 = (adj == 1).astype(h.dtype)
            ainv = jnp.where(adj >= 1, 1.0 / jnp.maximum(adj, 1).astype(h.dtype), 0.0)
            h = jnp.pad(h, ((0, 1), (0, 0)))
            h = sweep(h, fwd, a1, ainv)
            h = sweep(h, bwd, a1.T, ainv.T)
            return h[:n]

        return jax.vmap(one_graph)(h, adj, fwd_schedule, bwd_schedule)
