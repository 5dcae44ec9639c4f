"""Benchmark the custom kernels of ``ghn_jax.nets.kernels`` against the lax ops they replace (XLA:CPU).

Prints one JSON object: for every op and shape, median milliseconds of the jitted forward (``fwd``), of the
forward + backward to all inputs in one jitted call (``fwd_bwd``, gradient of a sum of the output times a fixed
random cotangent), and of the two halves of an eager ``jax.vjp`` as the per-op executor runs the glue between ops
(``vjp_fwd``: the forward pass of differentiation, ``vjp_bwd``: the pullback), for the lax reference and the
custom kernel, and the speedups (lax / custom).

Usage: ``python -m benchmarks.kernels [--repeats 7] [--quick | --attention-only] [--only max_pool,avg_pool]``
(``--quick``: attention and the 64x16x16x64 shape only; ``--only``: ops whose name starts with one of these).
Attention shapes are (batch, tokens, heads, head dim) of the ``msa`` op at 32x32, 16x16 and 8x8 maps.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ghn_jax.nets.kernels import attention, avg_pool2d, conv2d, depthwise_conv2d, max_pool2d
from machine import machine_info  # benchmarks/ is on the path when run as a script

SHAPES = ((64, 32, 32, 32), (64, 16, 16, 64))
DEPTHWISE = ((3, 1, 1), (3, 2, 1), (3, 1, 2), (3, 2, 2), (5, 1, 1), (5, 2, 1), (5, 1, 2), (5, 2, 2))  # k, s, d
POOLS = ((3, 1, 1), (3, 2, 1))  # k, stride, padding
DENSE = (((1, 1), 1), ((3, 3), 1), ((3, 3), 2), ((5, 5), 1), ((7, 7), 1), ((7, 1), 1), ((1, 7), 1))  # kernel, stride
ATTENTION = ((64, 1024, 8, 4), (64, 256, 8, 8), (64, 64, 8, 16))  # batch, tokens (32x32, 16x16, 8x8 maps), heads, dim


def _median_ms(fun: Callable, args: tuple, repeats: int) -> float:
    jax.block_until_ready(fun(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fun(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _timings(op: Callable, args: tuple, repeats: int) -> dict[str, float]:
    """Median ms of the forward, of forward + backward to every argument, and of an eager vjp's two halves."""
    cot = jax.random.normal(jax.random.key(99), jax.eval_shape(op, *args).shape)
    fwd = jax.jit(op)
    # the cotangent is an argument, not a closed-over constant: XLA would constant-fold the backward pass
    fwd_bwd = jax.jit(jax.grad(lambda c, *a: jnp.sum(op(*a) * c), argnums=tuple(range(1, len(args) + 1))))
    pullback = jax.vjp(op, *args)[1]
    return {'fwd': _median_ms(fwd, args, repeats), 'fwd_bwd': _median_ms(fwd_bwd, (cot,) + args, repeats),
            'vjp_fwd': _median_ms(lambda *a: jax.vjp(op, *a)[0], args, repeats),
            'vjp_bwd': _median_ms(pullback, (cot,), repeats)}


def _compare(ref: Callable, fast: Callable, args: tuple, repeats: int) -> dict:
    r, f = _timings(ref, args, repeats), _timings(fast, args, repeats)
    return {'lax_ms': {k: round(v, 2) for k, v in r.items()}, 'custom_ms': {k: round(v, 2) for k, v in f.items()},
            'speedup': {k: round(r[k] / f[k], 2) for k in r}}


def _lax_depthwise(x, w, stride, padding, dilation):
    return lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2, rhs_dilation=(dilation,) * 2,
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[-1])


def _lax_conv(x, w, stride, padding):
    return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _plain_attention(q, k, v):
    scores = jnp.einsum('bihd,bjhd->bhij', q, k) * q.shape[-1] ** -0.5
    return jnp.einsum('bhij,bjhd->bihd', jax.nn.softmax(scores, axis=-1), v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--quick', action='store_true', help='only the 64x16x16x64 shape')
    parser.add_argument('--attention-only', action='store_true', help='only the attention kernel')
    parser.add_argument('--only', default='', help='comma-separated name prefixes, e.g. max_pool,avg_pool')
    args = parser.parse_args()
    wanted = lambda name: not args.only or name.startswith(tuple(args.only.split(',')))  # noqa: E731
    shapes = () if args.attention_only else SHAPES[1:] if args.quick else SHAPES
    results: dict = {'machine': machine_info(), 'results': {}}
    for shape in ATTENTION:
        q, k, v = (jax.random.normal(jax.random.key(i), shape) for i in range(3))
        name = f'attention/{"x".join(map(str, shape))}'
        if not wanted(name):
            continue
        results['results'][name] = _compare(_plain_attention, lambda q, k, v: attention(q, k, v, shape[-1] ** -0.5),
                                            (q, k, v), args.repeats)
        print(name, results['results'][name], flush=True, file=sys.stderr)
    for shape in shapes:
        x = jax.random.normal(jax.random.key(0), shape)
        tag = 'x'.join(map(str, shape))
        for k, s, d in DEPTHWISE:
            p = d * (k - 1) // 2
            w = jax.random.normal(jax.random.key(1), (k, k, 1, shape[-1]))
            name = f'depthwise_{k}x{k}_s{s}_d{d}/{tag}'
            if not wanted(name):
                continue
            results['results'][name] = _compare(lambda x, w: _lax_depthwise(x, w, s, p, d),
                                                lambda x, w: depthwise_conv2d(x, w, s, p, d), (x, w), args.repeats)
            print(name, results['results'][name], flush=True, file=sys.stderr)
        for kernel, s in DENSE:
            p = tuple((k // 2, k // 2) for k in kernel)
            w = jax.random.normal(jax.random.key(2), kernel + (shape[-1], shape[-1])) * 0.05
            name = f'conv_{kernel[0]}x{kernel[1]}_s{s}/{tag}'
            if not wanted(name):
                continue
            results['results'][name] = _compare(lambda x, w: _lax_conv(x, w, s, p), lambda x, w: conv2d(x, w, s, p),
                                                (x, w), args.repeats)
            print(name, results['results'][name], flush=True, file=sys.stderr)
        for k, s, p in POOLS:
            for kind, ref, fast in (
                    ('max_pool', lambda x: nn.max_pool(x, (k, k), (s, s), [(p, p)] * 2),
                     lambda x: max_pool2d(x, k, s, p)),
                    ('avg_pool', lambda x: nn.avg_pool(x, (k, k), (s, s), [(p, p)] * 2, count_include_pad=False),
                     lambda x: avg_pool2d(x, k, s, p))):
                name = f'{kind}_{k}x{k}_s{s}_p{p}/{tag}'
                if not wanted(name):
                    continue
                results['results'][name] = _compare(ref, fast, (x,), args.repeats)
                print(name, results['results'][name], flush=True, file=sys.stderr)
    print(json.dumps(results, indent=1))


if __name__ == '__main__':
    main()
