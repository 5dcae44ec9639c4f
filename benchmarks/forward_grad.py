"""Per-step cost of forward gradients vs backprop on the paper's MNIST-style models; prints JSON.

For each model (logistic regression, MLP 784-1024-1024-10, 4-conv CNN) at
batch 64 it times, interleaved in one process (round-robin, shuffled order,
median over rounds):

* fwd: the loss alone;
* bp: `jax.value_and_grad`;
* bp_remat: `jax.value_and_grad` with sqrt(L)-layer segments wrapped in `jax.checkpoint`;
* fg: `value_and_fwd_grad` with K=1 (tangent generation included);
* fg_rank1: the same with rank-one tangents (`distribution='rank1'`);
* jvp_given_v: `jax.jvp` with a precomputed tangent (no generation, no scaling);
* tangent: drawing one tangent alone (materialised, so an upper bound on its
  share inside the fused step, where it is drawn twice);
* bp_step / fg_step / fg_rank1_step: a whole jitted SGD training step.

Memory is XLA's compiled buffer analysis: temporary and output bytes (the
arguments, identical for all variants, are excluded; the output of the
gradient variants holds the d-sized gradient or estimate). A memory-only row reports a deep,
wide-batch MLP (8 x 1024, batch 1024), where the forward-mode saving should show.

Usage: python benchmarks/forward_grad.py [--rounds 30] [--models logreg,mlp,cnn]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ghn_jax.train import forward_grad as fg
from ghn_jax.train import local_losses as ll
from machine import machine_info  # benchmarks/ is on the path when run as a script

MODELS = {
    "logreg": (ll.make_logreg, (784,)),
    "mlp": (ll.make_mlp, (784,)),
    "cnn": (ll.make_cnn, (28, 28, 1)),
}


def block_loss(net: ll.LocalLossNet, remat: bool):
    """Cross-entropy of `net`; with `remat`, segments of ceil(sqrt(L)) layers are `jax.checkpoint` regions.

    Only segment inputs are saved for the backward pass and each segment's
    activations are recomputed there (the classic sqrt(L) checkpointing).
    """
    num = len(net.layers)
    seg = max(1, math.ceil(math.sqrt(num))) if remat else num

    def loss(params, x, y):
        h = x
        for start in range(0, num, seg):

            def segment(p, h, start=start):
                for i in range(start, min(start + seg, num)):
                    layer, post = net.layers[i], net.posts[i]
                    h = post(layer.apply({"params": p[f"layers_{i}"]}, ll._flatten_for(layer, h)))
                return h

            h = (jax.checkpoint(segment) if remat else segment)(params, h)
        return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()

    return loss


MEMORY_VARIANTS = ("fwd", "bp", "bp_remat", "fg", "fg_rank1", "jvp_given_v")


def memory_mb(jitted, *args) -> dict[str, float]:
    """Temporary and output buffer sizes of the compiled function, in MB (arguments excluded)."""
    m = jitted.lower(*args).compile().memory_analysis()
    return {"temp": m.temp_size_in_bytes / 1e6, "output": m.output_size_in_bytes / 1e6}


def functions(net: ll.LocalLossNet, params, x, y):
    """name -> (jitted function, args) for every measured variant."""
    loss = block_loss(net, remat=False)
    key = jax.random.key(1)
    v = fg.sample_tangent(key, params)
    opt = optax.sgd(1e-3)
    state = opt.init(params)
    bp_step = fg.make_train_step(loss, opt, grad="bp")
    fg_step = fg.make_train_step(loss, opt, grad="fg")
    fg_rank1_step = fg.make_train_step(loss, opt, grad="fg", distribution="rank1")
    vfg = fg.value_and_fwd_grad(loss)
    vfg_rank1 = fg.value_and_fwd_grad(loss, distribution="rank1")
    return {
        "fwd": (jax.jit(loss), (params, x, y)),
        "bp": (jax.jit(jax.value_and_grad(loss)), (params, x, y)),
        "bp_remat": (jax.jit(jax.value_and_grad(block_loss(net, remat=True))), (params, x, y)),
        "fg": (jax.jit(lambda p, k, x, y: vfg(p, x, y, key=k)), (params, key, x, y)),
        "fg_rank1": (jax.jit(lambda p, k, x, y: vfg_rank1(p, x, y, key=k)), (params, key, x, y)),
        "jvp_given_v": (jax.jit(lambda p, v, x, y: jax.jvp(lambda q: loss(q, x, y), (p,), (v,))), (params, v, x, y)),
        "tangent": (jax.jit(lambda k: fg.sample_tangent(k, params)), (key,)),
        "bp_step": (bp_step, (params, state, key, x, y)),
        "fg_step": (fg_step, (params, state, key, x, y)),
        "fg_rank1_step": (fg_rank1_step, (params, state, key, x, y)),
    }


def time_interleaved(fns: dict, rounds: int, min_block_s: float = 0.02) -> dict[str, list[float]]:
    """Per-call seconds of every function, one block of calls per function per round, in shuffled order."""
    reps = {}
    for name, (f, args) in fns.items():
        jax.block_until_ready(f(*args))  # compile
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        reps[name] = max(1, int(min_block_s / max(time.perf_counter() - t, 1e-6)))
    times = {name: [] for name in fns}
    order = list(fns)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            f, args = fns[name]
            t = time.perf_counter()
            for _ in range(reps[name]):
                out = f(*args)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t) / reps[name])
    return times


def measure(model: str, rounds: int, batch: int = 64) -> dict:
    make, shape = MODELS[model]
    net = make()
    x = jax.random.normal(jax.random.key(0), (batch, *shape))
    y = jnp.arange(batch) % 10
    params = net.init(jax.random.key(2), x)["params"]
    fns = functions(net, params, x, y)
    times = time_interleaved(fns, rounds)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    paired = lambda a, b: float(np.median(np.asarray(times[a]) / np.asarray(times[b])))  # noqa: E731
    mem = {k: memory_mb(f, *args) for k, (f, args) in fns.items() if k in MEMORY_VARIANTS}
    return {
        "model": model,
        "params": fg.tree_size(params),
        "batch": batch,
        "rounds": rounds,
        "median_ms": med,
        "ratio_fg_over_bp": med["fg"] / med["bp"],
        "ratio_fg_over_bp_paired": paired("fg", "bp"),
        "ratio_fg_rank1_over_bp": med["fg_rank1"] / med["bp"],
        "ratio_fg_rank1_over_bp_paired": paired("fg_rank1", "bp"),
        "ratio_fg_rank1_step_over_bp_step_paired": paired("fg_rank1_step", "bp_step"),
        "ratio_fg_over_bp_remat": med["fg"] / med["bp_remat"],
        "ratio_fg_step_over_bp_step": med["fg_step"] / med["bp_step"],
        "ratio_fg_step_over_bp_step_paired": paired("fg_step", "bp_step"),
        "ratio_bp_over_fwd": med["bp"] / med["fwd"],
        "ratio_fg_over_fwd": med["fg"] / med["fwd"],
        "tangent_share_upper_bound": 2 * med["tangent"] / med["fg"],
        "non_jvp_share": max(0.0, 1 - med["jvp_given_v"] / med["fg"]),
        "memory_mb": mem,
    }


def memory_only(depth: int = 8, width: int = 1024, batch: int = 1024) -> dict:
    """Compiled memory of the deep, wide-batch MLP (no timing)."""
    net = ll.make_mlp(hidden=(width,) * depth)
    x = jnp.zeros((batch, 784))
    y = jnp.zeros((batch,), jnp.int32)
    params = jax.eval_shape(lambda: net.init(jax.random.key(0), x)["params"])
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    fns = functions(net, params, x, y)
    mem = {k: memory_mb(f, *args) for k, (f, args) in fns.items() if k in MEMORY_VARIANTS}
    return {"model": f"mlp_{depth}x{width}", "params": fg.tree_size(params), "batch": batch, "memory_mb": mem}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--models", default="logreg,mlp,cnn")
    parser.add_argument("--no-memory-row", action="store_true")
    args = parser.parse_args()
    results = [measure(m, args.rounds) for m in args.models.split(",")]
    if not args.no_memory_row:
        results.append(memory_only())
    print(json.dumps({"machine": machine_info(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
