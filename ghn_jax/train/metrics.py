"""Metric sinks: JSON lines (always), TensorBoard via tensorboardX (no TensorFlow), and a tqdm progress bar."""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
from tqdm.auto import tqdm


class MetricWriter:
    """Writes ``{step, time, **metrics}`` to ``workdir/metrics.jsonl`` and TensorBoard scalars (process 0 only)."""

    def __init__(self, workdir: str, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, 'metrics.jsonl')
        self.tb = None
        if self.active and tensorboard:
            try:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
            except ImportError:
                self.tb = None

    def write(self, step: int, **metrics: Any) -> None:
        if not self.active:
            return
        row = {'step': int(step), 'time': time.time(), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, 'a') as f:
            f.write(json.dumps(row) + '\n')
        if self.tb is not None:
            for k, v in row.items():
                if k not in ('step', 'time') and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _plain(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The rows of ``workdir/metrics.jsonl`` (empty list if there are none), in step order.

    A run that crashed and resumed from its last checkpoint writes the steps after that checkpoint again: the rows
    of the run that went on replace those of the one that stopped."""
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path):
        return []
    rows: list[dict[str, Any]] = []
    last_step: dict[frozenset, int] = {}     # per kind of row (its keys): the latest step written
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                kind, step = frozenset(row), row.get('step', -1)
                if step <= last_step.get(kind, -1):   # a resumed run: drop what the stopped one wrote from here on
                    rows = [r for r in rows if r.get('step', -1) < step or frozenset(r) != kind]
                last_step[kind] = step
                rows.append(row)
    return rows


def progress(total: int, initial: int = 0, desc: str = 'meta-train') -> tqdm:
    """A progress bar with rate and ETA (disabled on non-zero processes)."""
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, disable=jax.process_index() != 0,
                smoothing=0.1)


def plot_curves(workdir: str, path: str, keys: tuple[str, ...] = ('loss', 'accuracy')) -> None:
    """Training curves (metric vs step) from ``workdir/metrics.jsonl`` as a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = [r for r in read_metrics(workdir) if 'loss' in r]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2))
    for ax, key in zip(list(axes) if len(keys) > 1 else [axes], keys):
        ax.plot([r['step'] for r in rows if key in r], [r[key] for r in rows if key in r])
        ax.set_xlabel('meta-step')
        ax.set_ylabel(f'train {key}')
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches='tight')
    plt.close(fig)
