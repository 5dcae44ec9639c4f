"""Time-to-accuracy on real Fashion-MNIST: backprop vs forward gradients vs local activity-perturbed FG; prints JSON.

Methods: bp, fg (i.i.d. Rademacher tangents), fg_rank1 (rank-one Rademacher
tangents, same learning-rate grid as fg), fg_local.

Models (the FG paper's MNIST set): logistic regression, MLP 784-1024-1024-10,
CNN with four 3x3x64 convs, two max-pools, FC 1024, FC 10. Batch 64, SGD with
momentum 0.9 and a constant learning rate for every method.

Each method's learning rate is tuned the same way: every value of its grid
trains for `tune_s` seconds of wall-clock, and the one with the best accuracy
on 2,000 held-out *training* images wins (if it diverges in the long run, the
next best is used and the diverged rate is reported). The winner then trains for
`budget_s` seconds; test accuracy (on a fixed 2,000-image test subset) and
the recent training loss are recorded about 15 times along the way, with the
training wall-clock (evaluation excluded). The final parameters are evaluated
on the whole 10,000-image test set.

Usage: python benchmarks/fg_time_to_accuracy.py [--models logreg,mlp,cnn] [--out results.json]
The Fashion-MNIST IDX files come from the Debian package dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from ghn_jax.train import data as data_lib
from ghn_jax.train import finetune
from machine import machine_info  # benchmarks/ is on the path when run as a script
from ghn_jax.train import local_losses as ll

MODELS = {"logreg": ll.make_logreg, "mlp": ll.make_mlp, "cnn": ll.make_cnn}
METHODS = ("bp", "fg", "fg_rank1", "fg_local")
# Learning-rate grids: log-spaced, the same number of values per method, centred on each method's best value in
# 5-second pilot runs (larger FG rates diverge).
GRIDS = {
    "logreg": {"bp": (0.003, 0.01, 0.03, 0.1), "fg": (1e-5, 3e-5, 1e-4, 3e-4), "fg_local": (3e-4, 1e-3, 3e-3, 0.01)},
    "mlp": {"bp": (0.003, 0.01, 0.03, 0.1), "fg": (1e-6, 3e-6, 1e-5, 3e-5), "fg_local": (1e-4, 3e-4, 1e-3, 3e-3)},
    "cnn": {"bp": (0.003, 0.01, 0.03), "fg": (3e-6, 1e-5, 3e-5), "fg_local": (3e-4, 1e-3, 3e-3)},
}
# (tune seconds per grid value, final budget seconds)
BUDGETS = {"logreg": (5.0, 20.0), "mlp": (10.0, 45.0), "cnn": (25.0, 100.0)}
GROUPS = {"logreg": 1, "mlp": 8, "cnn": 8}


def accuracy(module, params, x, y, batch: int = 500) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `params` on normalised arrays."""
    metrics = finetune.evaluate(module, params, (x, y), batch_size=batch)
    return metrics["loss"], metrics["accuracy"]


def run(module, method: str, lr: float, model: str, data: dict, budget_s: float, num_evals: int, seed: int = 0) -> dict:
    """Trains for `budget_s` seconds of wall-clock (evaluation excluded); returns the curve."""
    rank1 = method == "fg_rank1"
    config = finetune.TrainConfig(
        grad="fg" if rank1 else method,
        distribution="rank1" if rank1 else "rademacher",
        optimizer="momentum",
        learning_rate=lr,
        batch_size=64,
        seed=seed,
        num_groups=GROUPS[model],
    )
    x_tr, y_tr = data["train"]
    key = jax.random.key(seed)
    params = module.init(key, jnp.asarray(x_tr[:1]))["params"]
    if method == "fg_local":
        params = module.init_with_heads(key, jnp.asarray(x_tr[:1]))
    optimizer = finetune.make_optimizer(config)
    step = finetune.make_step(module, config, optimizer)
    opt_state = optimizer.init(params)
    body = ll.body_params if method == "fg_local" else (lambda p: p)
    batches = data_lib.batch_iterator(x_tr, y_tr, 64, seed=seed)
    # Compile outside the timed region.
    x0, y0 = next(batches)
    jax.block_until_ready(step(params, opt_state, jax.random.key(0), x0, y0))

    curve, losses, elapsed, i = [], [], 0.0, 0
    next_eval = budget_s / num_evals
    eval_x, eval_y = data["eval"]
    loss0, acc0 = accuracy(module, body(params), eval_x, eval_y)
    curve.append({"step": 0, "time": 0.0, "train_loss": loss0, "eval_loss": loss0, "eval_acc": acc0})
    t0 = time.perf_counter()
    while True:
        x, y = next(batches)
        i += 1
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i), x, y)
        losses.append(loss)
        if i % 10 == 0:
            jax.block_until_ready(loss)
            now = elapsed + time.perf_counter() - t0
            if now >= next_eval or now >= budget_s:
                elapsed = now
                train_loss = float(jnp.mean(jnp.stack(losses)))
                losses = []
                e_loss, e_acc = accuracy(module, body(params), eval_x, eval_y)
                curve.append({"step": i, "time": elapsed, "train_loss": train_loss, "eval_loss": e_loss, "eval_acc": e_acc})
                if not np.isfinite(train_loss) or elapsed >= budget_s:
                    break
                next_eval += budget_s / num_evals
                t0 = time.perf_counter()
    return {"params": body(params), "curve": curve, "steps": i, "step_ms": 1e3 * elapsed / i}


def time_to(curve: list[dict], target: float) -> float | None:
    """First training time at which the eval accuracy reached `target` (None if never)."""
    for point in curve:
        if point["eval_acc"] >= target:
            return point["time"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="logreg,mlp,cnn")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies all time budgets")
    parser.add_argument("--out", default=None, help="also write the JSON (with curves) here")
    args = parser.parse_args()

    mean, std = data_lib.dataset_stats("fashion_mnist")
    x_all, y_all = data_lib.load_dataset("fashion_mnist", "train")
    x_te, y_te = data_lib.load_dataset("fashion_mnist", "test")
    norm = lambda a: (a - mean) / std  # noqa: E731
    data = {
        "train": (norm(x_all[:-2000]), y_all[:-2000]),
        "val": (norm(x_all[-2000:]), y_all[-2000:]),
        "eval": (norm(x_te[:2000]), y_te[:2000]),
        "test": (norm(x_te), y_te),
    }
    results = []
    for model in args.models.split(","):
        module = MODELS[model]()
        tune_s, budget_s = (b * args.scale for b in BUDGETS[model])
        for method in args.methods.split(","):
            tuning = {}
            for lr in GRIDS[model]["fg" if method == "fg_rank1" else method]:
                out = run(module, method, lr, model, {**data, "eval": data["val"]}, tune_s, num_evals=2)
                tuning[lr] = out["curve"][-1]["eval_acc"]
            # Best short-run accuracy first; a rate that diverges in the long run falls back to the next best.
            diverged = []
            for best_lr in sorted(tuning, key=lambda k: -tuning[k]):
                out = run(module, method, best_lr, model, data, budget_s, num_evals=15, seed=1)
                if np.isfinite(out["curve"][-1]["train_loss"]):
                    break
                diverged.append(best_lr)
            test_loss, test_acc = accuracy(module, out["params"], *data["test"])
            results.append(
                {
                    "model": model,
                    "method": method,
                    "tuning_val_acc": {str(k): v for k, v in tuning.items()},
                    "lr": best_lr,
                    "diverged_lrs": diverged,
                    "budget_s": budget_s,
                    "steps": out["steps"],
                    "step_ms": out["step_ms"],
                    "test_acc": test_acc,
                    "test_loss": test_loss,
                    "curve": out["curve"],
                }
            )
            print(json.dumps({k: v for k, v in results[-1].items() if k != "curve"}), flush=True)
    # Time to reach fractions of the best final accuracy per model.
    for r in results:
        best = max(q["test_acc"] for q in results if q["model"] == r["model"])
        r["time_to_acc"] = {f"{t:.3f}": time_to(r["curve"], t) for t in (0.7, 0.8, 0.9 * best)}
    summary = {
        "machine": machine_info(),
        "batch": 64,
        "optimizer": "sgd momentum 0.9, constant lr",
        "results": [{k: v for k, v in r.items() if k != "curve"} for r in results],
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**summary, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
