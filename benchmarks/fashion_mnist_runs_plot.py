"""Test accuracy of every Fashion-MNIST meta-training run against its length, beside the SGD baselines.

Each point is a separate run whose learning-rate schedule was scaled to its length (not a checkpoint of one run),
evaluated on the same 100 test-split nets. The figures are read from the committed results in docs/results/.

Usage: python benchmarks/fashion_mnist_runs_plot.py [docs/figures/fashion_mnist_runs.png]
"""
from __future__ import annotations

import json
import os
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs', 'results')


def _load(name: str) -> dict:
    with open(os.path.join(RESULTS, f'{name}.json')) as f:
        return json.load(f)


def runs() -> dict[str, list[tuple[int, float, float]]]:
    """Series label -> [(meta-steps, test mean %, s.e.)], evaluation batch 64 unless the label says otherwise."""
    pairs = _load('fashion_mnist_lr_schedule')['pairs']
    full_cosine = _load('fashion_mnist_lr_schedule')['full_length_3300_steps']['summary']
    low_res = _load('fashion_mnist_low_res')
    batch500 = _load('fashion_mnist_eval_batch500')['summary']
    summary = _load('fashion_mnist_eval')['summary']

    def point(steps: int, s: dict) -> tuple[int, float, float]:
        return steps, s['mean'], s['se']

    series = {
        'step decay, 32x32': [
            point(300, pairs['300_steps_seed_2222']['runs']['step']['test_100_nets']),
            point(600, pairs['600_steps_seed_1111']['runs']['step']['test_100_nets']),
            point(850, low_res['runs']['ghn_base850']['test_100_nets']),
            point(3300, summary['ghn'])],
        'cosine decay, 32x32': [
            point(300, pairs['300_steps_seed_2222']['runs']['cosine']['test_100_nets']),
            point(600, pairs['600_steps_seed_1111']['runs']['cosine']['test_100_nets']),
            point(3300, full_cosine['ghn_cosine'])],
        'first 60% of steps at 16x16': [
            point(1000, low_res['runs']['ghn_lowres1000']['test_100_nets'])]
        + [point(run['num_steps'], run['summary'][run['ghn_name']])
           for key, run in sorted(low_res.items()) if key.startswith('full_length_')],
        '32 images per step': [point(4700, _load('fashion_mnist_image_batch')['summary']['ghn_batch32'])],
        'earlier runs, 32x32 (evaluation batch 500)': [
            point(int(k.split('_')[1]), v) for k, v in batch500.items()
            if k.startswith('ghn_') and k.endswith('_steps') and 'hid' not in k] + [point(3300, batch500['ghn'])],
    }
    return {label: sorted(points) for label, points in series.items()}


def main(path: str = 'docs/figures/fashion_mnist_runs.png') -> None:
    summary = _load('fashion_mnist_eval')['summary']
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {'step decay, 32x32': 'o-', 'cosine decay, 32x32': 's--', 'first 60% of steps at 16x16': 'D-',
              '32 images per step': '^', 'earlier runs, 32x32 (evaluation batch 500)': 'o:'}
    series = runs()
    for label, points in series.items():
        steps, means, ses = zip(*points)
        hollow = 'batch 500' in label
        ax.errorbar(steps, means, yerr=ses, fmt=styles[label], capsize=3, label=label, alpha=0.5 if hollow else 1,
                    mfc='none' if hollow else None)
    for key, text, color in (('sgd_100_clip5', '100 SGD steps', 'tab:red'),
                             ('sgd_1000_clip5', '1,000 SGD steps (15 nets)', 'tab:purple')):
        s = summary[key]
        ax.axhspan(s['mean'] - s['se'], s['mean'] + s['se'], color=color, alpha=0.15)
        ax.axhline(s['mean'], color=color, lw=1)
        ax.text(110, s['mean'] + 0.8, f"{text}: {s['mean']:.1f}%", color=color, fontsize=8)
    ax.set_xscale('log')
    ax.set_xlabel('meta-steps of the run (4 nets each; each point is a separate run, schedule scaled to its length)')
    ax.set_ylabel('predicted parameters, 100 test nets (%)')
    ax.set_title('GHN-2 meta-trained on Fashion-MNIST on a 2-core CPU')
    ax.set_ylim(0, 95)
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(json.dumps(series))


if __name__ == '__main__':
    main(*sys.argv[1:])
