"""Evaluate GHNs: accuracy of predicted parameters on DeepNets-1M splits, against random init and SGD baselines.

CLI::

    python -m ghn_jax.train.evaluate --ghn workdir/ghn.npz --config configs/fashion_mnist_cpu.py --split test \\
        --n 100 --sgd-steps 100,1000 --out results.json --plot results.png

A long evaluation can be split into shards (``--start 0 --n 14``, ``--start 14 --n 14``, ...) run in parallel and
joined with ``--merge shard*.json --out results.json``; ``--merge`` also joins evaluations of the same nets by
different methods (a new GHN's results with the baselines' of an earlier run). ``--out`` is rewritten after every
net, so an interrupted evaluation keeps what it finished: go on with ``--start`` at the next net and merge.
``--by-trait sgd_100_clip5`` splits the GHN's difference to a baseline over groups of nets that share a trait
(BN-free, attention, ...). ``--plot-splits test.json wide.json ... --plot splits.png`` draws one GHN on several splits.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from ghn_jax import host_memory
from ghn_jax.hypernet.predictor import GHN2
from ghn_jax.nets import deepnets_generator, from_arch_json
from ghn_jax.train.config import load_config
from ghn_jax.train.targets import net_logits


def accuracy_of(module, params, x: np.ndarray, y: np.ndarray, batch_size: int = 64) -> float:
    """Top-1 accuracy over the whole batches of ``x``; BatchNorm uses the statistics of each evaluation batch.

    The reference evaluates with batches of 64 (spec 9.1); for nets with BatchNorm the batch size changes the
    result (with the shipped GHN, batches of 500 gave ~1 point more than batches of 64).
    """
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
                  seed: int = 0, split: str = 'test', random_init: bool = True,
                  sgd_clip: float | None = 5.0, ghn_name: str = 'ghn',
                  on_row: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Per-net accuracies of GHN-predicted params, random init, and SGD from random init (first ``sgd_nets``).

    SGD clips gradients at global norm ``sgd_clip`` as the reference's SGD training does (5; without it SGD-100 at
    learning rate 0.05 diverged on 6 of the 100 Fashion-MNIST test nets). Columns are named ``sgd_<steps>_clip<norm>``,
    or ``sgd_<steps>`` when ``sgd_clip`` is None, so results of the two baselines never merge into one column.

    ``random_init=False`` skips the random-initialisation baseline (it does not depend on the GHN, and
    initialising compiles each whole network, 3-30 s per net on a 2-core CPU) unless SGD needs it. The GHN's
    column is ``ghn_name`` (``ghn_<label>`` tells two checkpoints apart when their results are merged).
    ``on_row(rows)`` is called after each net with the rows so far (the CLI saves them: an interrupted evaluation
    keeps its finished nets).
    """
    from ghn_jax.train import finetune
    from ghn_jax.train.meta_train import load_image_data
    images = load_image_data(config)
    x_eval, y_eval = (images.val if split == 'val' else images.test)
    x_eval, y_eval = x_eval[:config.eval_examples], y_eval[:config.eval_examples]
    rows = []
    for i, (name, module, shape) in enumerate(tqdm(nets, desc='evaluate')):
        run_sgd = bool(sgd_steps) and (sgd_nets is None or i < sgd_nets)
        if random_init or run_sgd:
            init = jax.jit(module.init)(jax.random.key(seed + i), jnp.zeros(shape))['params']
        else:
            init = jax.eval_shape(module.init, jax.random.key(seed + i), jnp.zeros(shape))['params']
        row: dict[str, Any] = {'net': name, 'n_params': int(sum(p.size for p in jax.tree_util.tree_leaves(init)))}
        if random_init:
            row['random_init'] = accuracy_of(module, init, x_eval, y_eval, config.eval_batch_size)
        if ghn is not None:
            t = time.perf_counter()
            row[ghn_name] = accuracy_of(module, ghn.predict(module, shape), x_eval, y_eval, config.eval_batch_size)
            row[f'{ghn_name}_seconds'] = time.perf_counter() - t
        if run_sgd:
            cfgs = [finetune.TrainConfig(grad='bp', optimizer='momentum', learning_rate=sgd_lr, num_steps=steps,
                                         batch_size=config.batch_size, seed=seed + i, log_every=max(1, steps),
                                         grad_clip_norm=sgd_clip)
                    for steps in sgd_steps]
            # Constant learning rate: one jitted step serves every budget, so each net compiles once.
            step_fn = finetune.make_step(module, cfgs[0], finetune.make_optimizer(cfgs[0]))
            for steps, cfg in zip(sgd_steps, cfgs):
                trained, _ = finetune.train_classifier(module, init, images.train, cfg, step_fn=step_fn,
                                                       progress=f'{name}: {steps} SGD steps')
                column = f'sgd_{steps}' + (f'_clip{sgd_clip:g}' if sgd_clip else '')
                row[column] = accuracy_of(module, trained, x_eval, y_eval, config.eval_batch_size)
        rows.append(row)
        if on_row is not None:
            on_row(rows)
        host_memory.release()   # the lowering caches of this net's new op signatures
    return rows


def methods(rows: list[dict[str, Any]]) -> list[str]:
    """The methods (accuracy columns) of ``rows`` in order of first appearance."""
    names: list[str] = []
    for r in rows:
        names += [k for k in r if k not in ('net', 'n_params') and not k.endswith('_seconds') and k not in names]
    return names


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean +- s.e. (percent) of every method over the nets that have it."""
    summary = {}
    for k in methods(rows):
        values = [100 * r[k] for r in rows if k in r]
        mean, se = mean_se(values)
        summary[k] = {'mean': mean, 'se': se, 'n': len(values)}
    return summary


def paired_differences(rows: list[dict[str, Any]], method: str = 'ghn') -> dict[str, dict[str, float]]:
    """``method``'s accuracy minus each other method's, net by net (percentage points), over the nets with both:
    mean +- s.e., median, and on how many nets ``method`` is higher. Nets differ far more among themselves than
    methods on one net, so this says more than comparing the two means of :func:`summarise`."""
    out = {}
    for other in methods(rows):
        diffs = [100 * (r[method] - r[other]) for r in rows if method in r and other in r]
        if diffs and other != method:
            mean, se = mean_se(diffs)
            out[f'{method} - {other}'] = {'n': len(diffs), 'mean': mean, 'se': se, 'median': float(np.median(diffs)),
                                          'higher_on': sum(d > 0 for d in diffs)}
    return out


def _ghn_pairs(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Paired differences of every GHN column (``ghn``, ``ghn_<label>``) against the other methods, each pair once."""
    ghns = [m for m in methods(rows) if m.startswith('ghn')]
    out = {}
    for i, m in enumerate(ghns):
        out.update({k: v for k, v in paired_differences(rows, m).items() if k.split(' - ')[1] not in ghns[:i]})
    return out


def _results(split: str, batch_size: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {'split': split, 'n_archs': len(rows), 'eval_batch_size': batch_size, 'summary': summarise(rows),
            'paired': _ghn_pairs(rows), 'per_arch': rows}


#: The config's caps on sampled architectures (``config.archs``); results record them, as they define the nets.
ARCH_CAPS = ('max_cells', 'max_channels')


def evaluate(ghn: GHN2 | None, config: ml_collections.ConfigDict, split: str, n_archs: int,
             sgd_steps: tuple[int, ...] = (), sgd_lr: float = 0.05, seed: int = 0,
             sgd_archs: int | None = None, start: int = 0, random_init: bool = True,
             sgd_clip: float | None = 5.0, ghn_name: str = 'ghn',
             on_results: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Accuracies on architectures ``start .. start + n_archs - 1`` of a DeepNets-1M split (see
    :func:`evaluate_nets`); shard a long evaluation with ``start`` and join the parts with :func:`merge`."""
    from ghn_jax.train.meta_train import arch_description
    nets = [(f'{split}/{i}', *from_arch_json(arch_description(config, split, i)))
            for i in range(start, start + n_archs)]
    def results(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {**_results(split, config.eval_batch_size, list(rows)),
                'archs': {k: config.archs[k] for k in ARCH_CAPS}}
    rows = evaluate_nets(ghn, config, nets, sgd_steps, sgd_lr, sgd_archs, seed + start, split, random_init,
                         sgd_clip, ghn_name, on_row=None if on_results is None else lambda r: on_results(results(r)))
    return results(rows)


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Join results of :func:`evaluate` on one split: shards of different nets, and evaluations of the same nets
    by different methods (a GHN alone, the baselines alone); a method evaluated twice on one net is an error."""
    splits = {p['split'] for p in parts}
    if len(splits) != 1:
        raise ValueError(f'cannot merge results of different splits: {sorted(splits)}')
    batches = {p.get('eval_batch_size') for p in parts}
    if len(batches) != 1:
        raise ValueError(f'cannot merge results evaluated with different batch sizes: {sorted(map(str, batches))} '
                         '(BatchNorm uses each batch\'s statistics, so the accuracies are not comparable)')
    by_net = _join_rows(r for p in parts for r in p['per_arch'])
    rows = sorted(by_net.values(), key=lambda r: int(r['net'].rsplit('/', 1)[1]))
    merged = _results(splits.pop(), batches.pop(), rows)
    extra = _join_rows(r for p in parts for r in p.get('extra', {}).values())
    if extra:
        merged['extra'] = extra
    # Keys written by hand (a note, the GHN's meta-steps) travel on: one value, or the parts' distinct values in order.
    # What is computed from the rows does not (a part's by_trait is redone with --by-trait).
    for key in dict.fromkeys(k for p in parts for k in p if k not in merged and k not in ('per_arch', 'by_trait')):
        values = [p[key] for p in parts if key in p]
        distinct = [v for i, v in enumerate(values) if v not in values[:i]]
        merged[key] = distinct[0] if len(distinct) == 1 else distinct
    return merged


def _join_rows(rows) -> dict[str, dict[str, Any]]:
    """Per-net rows of several parts -> one row per net with every part's methods (each method once per net)."""
    by_net: dict[str, dict[str, Any]] = {}
    for r in rows:
        row = by_net.setdefault(r['net'], {'net': r['net'], 'n_params': r['n_params']})
        if r['n_params'] != row['n_params']:
            raise ValueError(f"{r['net']} has {r['n_params']} parameters in one part and {row['n_params']} in "
                             'another: different architecture caps (config.archs)?')
        twice = set(methods([r])) & set(methods([row]))
        if twice:
            raise ValueError(f"the parts overlap: {r['net']} has {sorted(twice)} in two of them")
        row.update(r)
    return by_net


def architecture_traits(description: dict[str, Any]) -> dict[str, str]:
    """Traits of a DeepNets-1M description that :func:`by_trait` groups nets by: normalisation, global pooling,
    number of cells, stem, and for every op type of the space whether the net's cells use it."""
    args, genotype = description['network_args'], description['genotype']
    used = {op for cell in ('normal', 'reduce') for op, _ in genotype[cell]}
    traits = {k: str(args[k]) for k in ('norm', 'glob_avg', 'n_cells', 'stem_type', 'C_mult', 'fc_layers')}
    traits.update({f'op {op}': 'with' if op in used else 'without' for op in deepnets_generator.CANDIDATE_OPS})
    return traits


def by_trait(rows: list[dict[str, Any]], config: ml_collections.ConfigDict, against: str,
             method: str = 'ghn') -> dict[str, dict[str, dict[str, float]]]:
    """``method`` minus ``against`` net by net (percentage points, as :func:`paired_differences`), within the
    groups of nets that share a trait (:func:`architecture_traits`), for the traits that split the nets: where a
    gap comes from. ``config`` must be the evaluation's (its architecture caps rebuild the nets' descriptions)."""
    from ghn_jax.train.meta_train import arch_description
    groups: dict[str, dict[str, list]] = {}
    for r in rows:
        if method in r and against in r:
            split, index = r['net'].rsplit('/', 1)
            for trait, value in architecture_traits(arch_description(config, split, int(index))).items():
                groups.setdefault(trait, {}).setdefault(value, []).append(r)
    if not groups:
        raise ValueError(f'no net has both {method!r} and {against!r}; the methods are {methods(rows)}')
    out: dict[str, dict[str, dict[str, float]]] = {}
    for trait, values in groups.items():
        if len(values) < 2:   # a trait all nets share says nothing
            continue
        for value, sub in sorted(values.items()):
            means = summarise(sub)
            out.setdefault(trait, {})[value] = {**paired_differences(sub, method)[f'{method} - {against}'],
                                                method: means[method]['mean'], against: means[against]['mean']}
    return out


def extra_net(name: str, config: ml_collections.ConfigDict) -> tuple[str, Any, tuple]:
    """A net beside the split's -> (name, module, input shape) for the configured images.

    ``name``: ``'bnfree'`` (the bnfree split's first net), a zoo model (``'resnet18'``, ``'resnet34'``,
    ``'resnet50'``, CIFAR-adjusted for 32x32 images, or ``'vit'``), or the path of an architecture JSON (any schema
    of :func:`ghn_jax.nets.from_arch_json`; its results are keyed by the file's name without ``.json``).
    """
    from ghn_jax.train.meta_train import arch_description
    if name == 'bnfree':
        return (name, *from_arch_json(arch_description(config, 'bnfree', 0)))
    if name.endswith('.json'):
        with open(name) as f:
            d = {'num_classes': config.data.num_classes, **json.load(f)}
        return (os.path.splitext(os.path.basename(name))[0], *from_arch_json(d))
    small = config.data.image_size <= 64   # CIFAR-sized images: the reference's CIFAR variants of zoo models
    d = {'model': name, 'adjust_net': small, 'imagenet': not small, 'num_classes': config.data.num_classes,
         'input_size': [config.data.channels, config.data.image_size, config.data.image_size]}
    try:
        return (name, *from_arch_json(d))
    except ValueError as e:
        raise ValueError(f'unknown extra net {name!r}: use bnfree, a zoo model or an architecture .json ({e})') from e


def plot(results: dict[str, Any], path: str) -> None:
    """Bar chart of mean accuracy +- s.e. per method and, where nets have both, the (first) GHN's accuracy against
    each SGD baseline's net by net (a mean hides what this shows: on how many nets either wins, failed baselines)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(results['summary'])
    means = [results['summary'][k]['mean'] for k in names]
    ses = [results['summary'][k]['se'] for k in names]
    sgd = [k for k in names if k.startswith('sgd_')]
    ghn = next((k for k in names if k.startswith('ghn')), None)
    pairs = {k: [r for r in results.get('per_arch', []) if ghn in r and k in r] for k in sgd}
    pairs = {k: both for k, both in pairs.items() if both}   # SGD baselines run on nets the GHN was evaluated on
    fig, axes = plt.subplots(1, 2 if pairs else 1, figsize=(1.4 * len(names) + 2 + 4 * bool(pairs), 3.5),
                             squeeze=False)
    ax = axes[0, 0]
    labels = [f"{textwrap.fill(n.replace('_', ' '), 10)}\n(n={results['summary'][n]['n']})" for n in names]
    def colour(name: str):  # grey: random init; blue: the GHN (pale: any further GHN column); C1, C2...: SGD
        base = '0.6' if name == 'random_init' else 'C0' if name.startswith('ghn') else f'C{sgd.index(name) + 1}'
        return matplotlib.colors.to_rgba(base, 0.45 if name.startswith('ghn') and name != ghn else 1.0)
    ax.bar(labels, means, yerr=ses, capsize=4, color=[colour(n) for n in names])
    ax.set_ylabel('top-1 accuracy (%)')
    ax.set_title(f"{results['split']} architectures, mean ± s.e. over n nets")
    if pairs:
        ax = axes[0, 1]
        for k, both in pairs.items():
            higher = sum(r[ghn] > r[k] for r in both)
            ax.scatter([100 * r[k] for r in both], [100 * r[ghn] for r in both], s=12, color=colour(k),
                       label=f"{k.replace('_', ' ')}: {ghn} higher on {higher} of {len(both)}")
        ax.plot([0, 100], [0, 100], color='0.5', lw=0.8, ls='--')
        ax.set(xlim=(0, 100), ylim=(0, 100), xlabel='accuracy after SGD from random init (%)',
               ylabel=f'accuracy with {ghn} parameters (%)', title='net by net')
        ax.legend(loc='upper left', fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches='tight')
    plt.close(fig)


def by_split(parts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Split name -> results, in DeepNets-1M's order of splits, from results of one split each (``--out`` files) or
    ``{'splits': {name: results}}`` collections."""
    out = {}
    for data in parts:
        for results in data['splits'].values() if 'splits' in data else [data]:
            if results['split'] in out:
                raise ValueError(f"split {results['split']!r} given twice: merge its parts first (--merge)")
            out[results['split']] = results
    order = deepnets_generator.SPLITS
    return dict(sorted(out.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def plot_splits(results_by_split: dict[str, dict[str, Any]], path: str, method: str = 'ghn') -> None:
    """One method on several splits: mean accuracy +- s.e. per split, and every net's accuracy against its size
    (the out-of-distribution splits, wide and deep, are the larger nets)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    splits = [s for s, r in results_by_split.items() if method in r['summary']]
    if not splits:
        raise ValueError(f'no split has results for {method!r}')
    fig, (bars, nets) = plt.subplots(1, 2, figsize=(11, 3.8))
    summary = [results_by_split[s]['summary'][method] for s in splits]
    bars.bar([f"{s}\n(n={m['n']})" for s, m in zip(splits, summary)], [m['mean'] for m in summary],
             yerr=[m['se'] for m in summary], capsize=4, color=[f'C{i}' for i in range(len(splits))])
    bars.set(ylabel='top-1 accuracy (%)', title=f"{method.replace('_', ' ')} parameters, mean ± s.e. over nets")
    for i, s in enumerate(splits):
        rows = [r for r in results_by_split[s]['per_arch'] if method in r]
        nets.scatter([r['n_params'] for r in rows], [100 * r[method] for r in rows], s=10, color=f'C{i}',
                     alpha=0.7, label=s)
    nets.set(xscale='log', ylim=(0, 100), xlabel='parameters', ylabel='top-1 accuracy (%)', title='net by net')
    nets.legend(fontsize=8, markerscale=1.5)
    fig.savefig(path, dpi=120, bbox_inches='tight')
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description='Evaluate a GHN on DeepNets-1M architectures.')
    parser.add_argument('--ghn', help='GHN checkpoint (.npz / .pt / training workdir); omit for baselines only')
    parser.add_argument('--ghn-name', default='ghn',
                        help="the GHN's column: ghn or ghn_<label>, to merge and pair two checkpoints' results")
    parser.add_argument('--config', default='configs/fashion_mnist_cpu.py', help='config file (data + archs)')
    parser.add_argument('--split', default='test')
    parser.add_argument('--n', type=int, default=100)
    parser.add_argument('--start', type=int, default=0, help='first architecture index (to shard an evaluation)')
    parser.add_argument('--merge', nargs='+', metavar='JSON',
                        help='join results files (shards, or other methods on the same nets) and exit')
    parser.add_argument('--sgd-steps', default='', help='comma-separated SGD budgets, e.g. 100,1000')
    parser.add_argument('--sgd-lr', type=float, default=0.05)
    parser.add_argument('--sgd-clip', type=float, default=5.0,
                        help="clip SGD gradients to this global norm, as the reference (columns sgd_K_clipN); 0: don't")
    parser.add_argument('--sgd-archs', type=int, help='run the SGD baselines on the first N architectures only')
    parser.add_argument('--extra-sgd-max', type=int, default=100, help='largest SGD budget for the extra nets')
    parser.add_argument('--extra', default='', help='comma-separated extra nets: bnfree (bnfree split #0), zoo models '
                        '(resnet18, resnet34, resnet50, vit) or architecture .json files')
    parser.add_argument('--no-random-init', action='store_true',
                        help='skip the random-initialisation baseline (it does not depend on the GHN; slow on CPU)')
    parser.add_argument('--eval-batch-size', type=int,
                        help="images per evaluation batch, whose statistics BatchNorm uses (default: the config's, "
                             '64 as the reference)')
    parser.add_argument('--max-cells', type=int,
                        help="override the config's cap on cells (0: none), e.g. to keep the deep split's 10-36 cells")
    parser.add_argument('--max-channels', type=int,
                        help="override the config's cap on width C (0: none), e.g. for the wide split's 4x width")
    parser.add_argument('--by-trait', metavar='METHOD',
                        help="also pair the GHN with METHOD (e.g. sgd_100_clip5) within groups of nets that share a "
                             "trait (normalisation, pooling, op types...), with --config the evaluation's")
    parser.add_argument('--out', help='write results json here')
    parser.add_argument('--plot', help='write a figure here (mean per method; GHN against SGD net by net)')
    parser.add_argument('--plot-splits', nargs='+', metavar='JSON',
                        help='with --plot: results of several splits (--out files, or {"splits": ...} collections); '
                             'the figure shows the --ghn-name column on each split')
    args = parser.parse_args(argv)
    if not (args.ghn_name == 'ghn' or args.ghn_name.startswith('ghn_')):
        parser.error(f'--ghn-name {args.ghn_name!r}: use ghn or ghn_<label>, so that results know it for a GHN')
    if args.plot_splits:
        if not args.plot:
            parser.error('--plot-splits needs --plot FIGURE.png')
        plot_splits(by_split(_read_results(args.plot_splits, '--plot-splits', parser)), args.plot, args.ghn_name)
        return {}
    if args.merge:
        return _report(merge(_read_results(args.merge, '--merge', parser)), args)
    config = load_config(args.config)
    for cap in ARCH_CAPS:
        if getattr(args, cap) is not None:
            config.archs[cap] = getattr(args, cap) or None
    if args.eval_batch_size:
        config.eval_batch_size = args.eval_batch_size
    ghn = GHN2.from_checkpoint(args.ghn) if args.ghn else None
    steps = tuple(int(s) for s in args.sgd_steps.split(',') if s)
    results = evaluate(ghn, config, args.split, args.n, steps, args.sgd_lr, sgd_archs=args.sgd_archs,
                       start=args.start, random_init=not args.no_random_init, sgd_clip=args.sgd_clip or None,
                       ghn_name=args.ghn_name,
                       on_results=(lambda part: _write_json(part, args.out)) if args.out else None)
    extra = [e for e in args.extra.split(',') if e]
    if extra:
        rows = evaluate_nets(ghn, config, [extra_net(e, config) for e in extra],
                             tuple(k for k in steps if k <= args.extra_sgd_max), args.sgd_lr,
                             random_init=not args.no_random_init, sgd_clip=args.sgd_clip or None,
                             ghn_name=args.ghn_name)
        results['extra'] = {r['net']: r for r in rows}
    return _report(results, args, config)


def _read_results(paths: list[str], flag: str, parser: argparse.ArgumentParser) -> list[dict[str, Any]]:
    parts = []
    for path in paths:
        try:
            with open(path) as f:
                parts.append(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            parser.error(f'{flag} {path}: cannot read it as evaluation results ({e}); pass the --out files of '
                         'earlier evaluations')
    return parts


def _write_json(results: dict[str, Any], path: str) -> None:
    """Write whole or not at all: a kill while writing leaves the previous file."""
    with open(path + '.tmp', 'w') as f:
        json.dump(results, f, indent=1)
    os.replace(path + '.tmp', path)


def _report(results: dict[str, Any], args: argparse.Namespace,
            config: ml_collections.ConfigDict | None = None) -> dict[str, Any]:
    if args.by_trait:
        config = config or load_config(args.config)
        if isinstance(results.get('archs'), dict):   # the caps the nets were evaluated with
            config.archs.update(results['archs'])
        results['by_trait'] = by_trait(results['per_arch'], config, args.by_trait, args.ghn_name)
    if args.out:
        _write_json(results, args.out)
    if args.plot:
        plot(results, args.plot)
    print(json.dumps({k: results[k] for k in ('summary', 'paired', 'by_trait', 'extra') if k in results}, indent=1))
    return results


if __name__ == '__main__':
    host_memory.use_tcmalloc()   # replaces the process once (faster per-op nets on CPU); GHN_JAX_TCMALLOC=0: off
    main(sys.argv[1:])
