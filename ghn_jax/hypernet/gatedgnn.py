"""Node models of the GHN: the gated GNN (GHN-1/GHN-2) and the per-node MLP baseline (spec section 4).

The reference updates nodes one at a time in topological order (forward sweep) and then in reverse order
(backward sweep). Because forward messages only come from ancestors and backward messages only from descendants,
all nodes of one longest-path depth (height for the backward sweep) can be updated together (spec 4.4). The host
turns each graph's levels into a fixed-size schedule ``(T, W)`` of node indices (wide levels are split across
steps, padding points at ``N``, a trash row), and a ``lax.scan`` runs it: one compile per node budget.
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
        return gru_update(nn.Dense(3 * self.features, name='ih')(m), nn.Dense(3 * self.features, name='hh')(h), h)


def gru_update(gi: jax.Array, gh: jax.Array, h: jax.Array) -> jax.Array:
    """The new state from the input and hidden projections ``gi``, ``gh`` (gate blocks r, z, n) and the state."""
    ir, iz, i_n = jnp.split(gi, 3, axis=-1)
    hr, hz, h_n = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(ir + hr)
    z = jax.nn.sigmoid(iz + hz)
    return (1.0 - z) * jnp.tanh(i_n + r * h_n) + z * h


def _params(module: nn.Module, x) -> dict:
    """Call a submodule once (creating or binding its parameters) and return them: the sweeps below use the raw
    weights inside ``jax.lax.scan``, where bound Flax modules cannot be called."""
    module(*x) if isinstance(x, tuple) else module(x)
    return module.variables['params']


@jax.checkpoint
def _incoming(adj_rows: jax.Array, idx: jax.Array, msg: jax.Array) -> jax.Array:
    """Messages into the nodes ``idx``. Rematerialised: the gathered adjacency rows are gathered again in the
    backward pass instead of being kept, step by step, for it (hundreds of MB for 8 graphs)."""
    return adj_rows[idx] @ msg


def _block_diag(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.block([[a, jnp.zeros((a.shape[0], b.shape[1]), a.dtype)],
                      [jnp.zeros((b.shape[0], a.shape[1]), b.dtype), b]])


class GatedGNN(nn.Module):
    """One round of forward + backward sweeps; virtual edges (``ve``) add a second message MLP weighted by 1/s.

    A sweep step is a handful of tiny matrix products, so it costs what XLA spends per operation; the step below
    does the reference's computation in four products instead of eight. The real-edge and virtual-edge messages
    are one product of the stacked adjacency rows ``[A1 | A_1/s]`` with the stacked node messages ``[f(h); g(h)]``;
    the GRU's input and hidden products are one product with a block-diagonal weight, and so are the two message
    MLPs (their first layers side by side, their second layers block-diagonal). The extra products are with exact
    zeros, so only the order of float32 additions differs from the separate products.
    """
    hid: int = 32
    ve: bool = True

    @nn.compact
    def __call__(self, h: jax.Array, adj: jax.Array, fwd_schedule: jax.Array, bwd_schedule: jax.Array):
        """h: (B, N, hid) node states; adj: (B, N, N) integer edge matrices (0 none, 1 real, s virtual);
        schedules: (B, T, W) node indices in [0, N], where N marks padding. Graphs are independent."""
        hid = self.hid
        f = _params(MLP((hid // 2 if self.ve else hid, hid), name='mlp'), h)
        g = _params(MLP((hid // 2, hid), name='mlp_ve'), h) if self.ve else None
        gru = _params(TorchGRUCell(hid, name='gru'), (h, h))
        # Message MLPs f and g side by side: (.., hid) -> (.., hid) for f, (.., 2 hid) = [f | g] with g.
        if g is None:
            w1, b1, w2, b2 = f['fc.0']['kernel'], f['fc.0']['bias'], f['fc.2']['kernel'], f['fc.2']['bias']
        else:
            w1 = jnp.concatenate([f['fc.0']['kernel'], g['fc.0']['kernel']], 1)
            b1 = jnp.concatenate([f['fc.0']['bias'], g['fc.0']['bias']])
            w2 = _block_diag(f['fc.2']['kernel'], g['fc.2']['kernel'])
            b2 = jnp.concatenate([f['fc.2']['bias'], g['fc.2']['bias']])
        messages = lambda x: nn.relu(nn.relu(x @ w1 + b1) @ w2 + b2)
        w_gru = _block_diag(gru['ih']['kernel'], gru['hh']['kernel'])          # [m | h] -> [gi | gh]
        b_gru = jnp.concatenate([gru['ih']['bias'], gru['hh']['bias']])

        def gru_cell(m, h_old):
            gi, gh = jnp.split(jnp.concatenate([m, h_old], -1) @ w_gru + b_gru, 2, axis=-1)
            return gru_update(gi, gh, h_old)

        def sweep(h, schedule, adj_rows):
            """adj_rows: (N+W, k(N+W)) incoming-edge weights of each node, k = 1 (real edges) or 2 (+ virtual)."""
            n1 = h.shape[0]

            def step(carry, idx):
                h, msg = carry                                   # msg: (k(N+W), hid) = [f(h); g(h)]
                h_new = gru_cell(_incoming(adj_rows, idx, msg), h.at[idx].get(unique_indices=True))
                h = h.at[idx].set(h_new, unique_indices=True)
                out = messages(h_new)
                if g is None:
                    msg = msg.at[idx].set(out, unique_indices=True)
                else:
                    msg = msg.at[jnp.concatenate([idx, idx + n1])].set(
                        jnp.concatenate([out[:, :hid], out[:, hid:]]), unique_indices=True)
                return (h, msg), None

            out = messages(h)
            msg = out if g is None else jnp.concatenate([out[:, :hid], out[:, hid:]])
            (h, _), _ = jax.lax.scan(step, (h, msg), schedule)
            return h

        def one_graph(h, adj, fwd, bwd):
            n, w = h.shape[0], fwd.shape[-1]
            # W extra all-zero rows/columns: trash nodes, one per schedule column, that padded entries point at. So
            # the indices of a step are unique, and its scatters differentiate without masks of the node states
            # (with one shared trash node, JAX's scatter JVP kept two such masks per step for the backward pass).
            adj = jnp.pad(adj, ((0, w), (0, w)))
            fwd, bwd = (jnp.where(s == n, n + jnp.arange(w), s) for s in (fwd, bwd))
            a1 = (adj == 1).astype(h.dtype)
            ainv = jnp.where(adj >= 1, 1.0 / jnp.maximum(adj, 1).astype(h.dtype), 0.0)
            # Row i of the forward table: weights of the edges into i (column i of adj); backward: out of i.
            fwd_rows = a1.T if g is None else jnp.concatenate([a1.T, ainv.T], 1)
            bwd_rows = a1 if g is None else jnp.concatenate([a1, ainv], 1)
            h = jnp.pad(h, ((0, w), (0, 0)))
            h = sweep(h, fwd, fwd_rows)
            h = sweep(h, bwd, bwd_rows)
            return h[:n]

        return jax.vmap(one_graph)(h, adj, fwd_schedule, bwd_schedule)
