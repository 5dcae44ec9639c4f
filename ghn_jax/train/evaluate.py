"""Evaluate GHNs: accuracy of predicted parameters on DeepNets-1M splits, against random init and SGD baselines.

CLI::

    python -m ghn_jax.train.evaluate --ghn workdir/ghn.npz --dataset fashion_mnist --split test --n 100 \\
        --sgd-steps 100,1000 --out results.json --plot results.png
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from ghn_jax.hypernet.predictor import GHN2
from ghn_jax.nets import from_arch_json
from ghn_jax.train.targets import net_logits


def accuracy_of(module, params, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy; BatchNorm uses the statistics of each evaluation batch (as the reference evaluates)."""
    correct = 0
    for i in range(0, len(x) - len(x) % batch_size or len(x), batch_size):
        logits = net_logits(module, params, jnp.asarray(x[i:i + batch_size]))
        correct += int(jnp.sum(jnp.argmax(logits, -1) == jnp.asarray(y[i:i + batch_size])))
    n = (len(x) // batch_size) * batch_size or len(x)
    return correct / n


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def evaluate_nets(ghn: GHN2 | None, config: ml_collections.ConfigDict, nets: list[tuple[str, Any, tuple]],
                  sgd_steps: tuple[int, ...] = (), sgd_lr: float = 0.05, sgd_nets: int | None = None,
                  seed: int = 0, split: str = 'test') -> list[dict[str, Any]]:
    """Per-net accuracies of GHN-predicted params, random init, and SGD from random init (first ``sgd_nets``)."""
    from ghn_jax.train import finetune
    from ghn_jax.train.meta_train import load_image_data
    images = load_image_data(config)
    x_eval, y_eval = (images.val if split == 'val' else images.test)
    x_eval, y_eval = x_eval[:config.eval_examples], y_eval[:config.eval_examples]
    rows = []
    for i, (name, module, shape) in enumerate(tqdm(nets, desc='evaluate')):
        init = jax.jit(module.init)(jax.random.key(seed + i), jnp.zeros(shape))['params']
        row: dict[str, Any] = {'net': name, 'n_params': int(sum(p.size for p in jax.tree_util.tree_leaves(init)))}
        row['random_init'] = accuracy_of(module, init, x_eval, y_eval, config.eval_batch_size)
        if ghn is not None:
            t = time.perf_counter()
            row['ghn'] = accuracy_of(module, ghn.predict(module, shape), x_eval, y_eval, config.eval_batch_size)
            row['ghn_seconds'] = time.perf_counter() - t
        if sgd_nets is None or i < sgd_nets:
            for steps in sgd_steps:
                cfg = finetune.TrainConfig(grad='bp', optimizer='momentum', learning_rate=sgd_lr, num_steps=steps,
                                           batch_size=config.batch_size, seed=seed + i, log_every=max(1, steps))
                trained, _ = finetune.train_classifier(module, init, images.train, cfg)
                row[f'sgd_{steps}'] = accuracy_of(module, trained, x_eval, y_eval, config.eval_batch_size)
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean +- s.e. (percent) of every method over the nets that have it."""
    keys = [k for k in rows[0] if k not in ('net', 'n_params', 'ghn_seconds')]
    for r in rows:
        keys += [k for k in r if k.startswith('sgd_') and k not in keys]
    summary = {}
    for k in keys:
        values = [100 * r[k] for r in rows if k in r]
        mean, se = mean_se(values)
        summary[k] = {'mean': mean, 'se': se, 'n': len(values)}
    return summary


def evaluate(ghn: GHN2 | None, config: ml_collections.ConfigDict, split: str, n_archs: int,
             sgd_steps: tuple[int, ...] = (), sgd_lr: float = 0.05, seed: int = 0,
             sgd_archs: int | None = None) -> dict[str, Any]:
    """Accuracies on the first ``n_archs`` architectures of a DeepNets-1M split (see :func:`evaluate_nets`)."""
    from ghn_jax.train.meta_train import arch_description
    nets = [(f'{split}/{i}', *from_arch_json(arch_description(config, split, i))) for i in range(n_archs)]
    rows = evaluate_nets(ghn, config, nets, sgd_steps, sgd_lr, sgd_archs, seed, split)
    return {'split': split, 'n_archs': n_archs, 'summary': summarise(rows), 'per_arch': rows}


def extra_net(name: str, config: ml_collections.ConfigDict) -> tuple[str, Any, tuple]:
    """('resnet18' | 'bnfree') -> (name, module, input shape) for the configured images."""
    from ghn_jax.train.meta_train import arch_description
    size = [config.data.channels, config.data.image_size, config.data.image_size]
    if name == 'resnet18':
        d = {'model': 'resnet18', 'adjust_net': True, 'num_classes': config.data.num_classes, 'input_size': size}
    elif name == 'bnfree':
        d = arch_description(config, 'bnfree', 0)
    else:
        raise ValueError(f'unknown extra net {name!r}: use resnet18 or bnfree')
    return (name, *from_arch_json(d))


def plot(results: dict[str, Any], path: str) -> None:
    """Bar chart of mean accuracy +- s.e. per method."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(results['summary'])
    means = [results['summary'][k]['mean'] for k in names]
    ses = [results['summary'][k]['se'] for k in names]
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.5))
    ax.bar(names, means, yerr=ses, capsize=4, color=['0.6' if n == 'random_init' else 'C0' if n == 'ghn' else 'C1'
                                                      for n in names])
    ax.set_ylabel('top-1 accuracy (%)')
    ax.set_title(f"{results['n_archs']} {results['split']} architectures (mean ± s.e.)")
    fig.savefig(path, dpi=120, bbox_inches='tight')
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description='Evaluate a GHN on DeepNets-1M architectures.')
    parser.add_argument('--ghn', help='GHN checkpoint (.npz / .pt / training workdir); omit for baselines only')
    parser.add_argument('--config', default='configs/fashion_mnist_cpu.py', help='config file (data + archs)')
    parser.add_argument('--split', default='test')
    parser.add_argument('--n', type=int, default=100)
    parser.add_argument('--sgd-steps', default='', help='comma-separated SGD budgets, e.g. 100,1000')
    parser.add_argument('--sgd-lr', type=float, default=0.05)
    parser.add_argument('--sgd-archs', type=int, help='run the SGD baselines on the first N architectures only')
    parser.add_argument('--extra-sgd-max', type=int, default=100, help='largest SGD budget for the extra nets')
    parser.add_argument('--extra', default='', help='comma-separated extra nets: resnet18, bnfree (bnfree split #0)')
    parser.add_argument('--out', help='write results json here')
    parser.add_argument('--plot', help='write a bar chart here')
    args = parser.parse_args(argv)
    import importlib.util
    spec = importlib.util.spec_from_file_location('eval_config', args.config)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    ghn = GHN2.from_checkpoint(args.ghn) if args.ghn else None
    steps = tuple(int(s) for s in args.sgd_steps.split(',') if s)
    results = evaluate(ghn, config, args.split, args.n, steps, args.sgd_lr, sgd_archs=args.sgd_archs)
    extra = [e for e in args.extra.split(',') if e]
    if extra:
        rows = evaluate_nets(ghn, config, [extra_net(e, config) for e in extra],
                             tuple(k for k in steps if k <= args.extra_sgd_max), args.sgd_lr)
        results['extra'] = {r['net']: r for r in rows}
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=1)
    if args.plot:
        plot(results, args.plot)
    print(json.dumps(results['summary'], indent=1))
    return results


if __name__ == '__main__':
    main(sys.argv[1:])
