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


def evaluate(ghn: GHN2 | None, config: ml_collections.ConfigDict, split: str, n_archs: int,
             sgd_steps: tuple[int, ...] = (), sgd_lr: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Per-architecture accuracies of: GHN-predicted params, random init, and SGD from random init."""
    from ghn_jax.train import finetune
    from ghn_jax.train.meta_train import arch_description, load_image_data
    images = load_image_data(config)
    x_eval, y_eval = (images.val if split == 'val' else images.test)
    x_eval, y_eval = x_eval[:config.eval_examples], y_eval[:config.eval_examples]
    rows = []
    for i in range(n_archs):
        desc = arch_description(config.archs, split, i, config.data.num_classes)
        module, shape = from_arch_json(desc)
        row: dict[str, Any] = {'arch': i, 'n_params': None}
        init = jax.jit(module.init)(jax.random.key(seed + i), jnp.zeros(shape))['params']
        row['n_params'] = int(sum(p.size for p in jax.tree_util.tree_leaves(init)))
        row['random_init'] = accuracy_of(module, init, x_eval, y_eval, config.eval_batch_size)
        if ghn is not None:
            t = time.perf_counter()
            row['ghn'] = accuracy_of(module, ghn.predict(module, shape), x_eval, y_eval, config.eval_batch_size)
            row['ghn_seconds'] = time.perf_counter() - t
        for steps in sgd_steps:
            cfg = finetune.TrainConfig(grad='bp', optimizer='momentum', learning_rate=sgd_lr, num_steps=steps,
                                       batch_size=config.batch_size, seed=seed + i, log_every=max(1, steps))
            trained, _ = finetune.train_classifier(module, init, images.train, cfg)
            row[f'sgd_{steps}'] = accuracy_of(module, trained, x_eval, y_eval, config.eval_batch_size)
        rows.append(row)
    keys = [k for k in rows[0] if k not in ('arch', 'n_params', 'ghn_seconds')]
    summary = {k: dict(zip(('mean', 'se'), mean_se([100 * r[k] for r in rows]))) for k in keys}
    return {'split': split, 'n_archs': n_archs, 'summary': summary, 'per_arch': rows}


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
    parser.add_argument('--out', help='write results json here')
    parser.add_argument('--plot', help='write a bar chart here')
    args = parser.parse_args(argv)
    from ml_collections import config_flags  # noqa: F401  (config files are plain python)
    import importlib.util
    spec = importlib.util.spec_from_file_location('eval_config', args.config)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    ghn = GHN2.from_checkpoint(args.ghn) if args.ghn else None
    steps = tuple(int(s) for s in args.sgd_steps.split(',') if s)
    results = evaluate(ghn, config, args.split, args.n, steps, args.sgd_lr)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=1)
    if args.plot:
        plot(results, args.plot)
    print(json.dumps(results['summary'], indent=1))
    return results


if __name__ == '__main__':
    main(sys.argv[1:])
