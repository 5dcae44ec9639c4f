"""Plots loss and accuracy vs training wall-clock from fg_time_to_accuracy.py's --out JSON.

Usage: python benchmarks/fg_plot.py results.json docs/figures/fg_time_to_accuracy.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "bp": "backprop",
    "fg": "forward gradient (K=1)",
    "fg_rank1": "forward gradient, rank-1 tangent",
    "fg_local": "local activity-perturbed FG",
}
COLORS = {"bp": "tab:blue", "fg": "tab:red", "fg_rank1": "tab:orange", "fg_local": "tab:green"}


def main(src: str, dst: str) -> None:
    with open(src) as f:
        results = json.load(f)["results"]
    models = list(dict.fromkeys(r["model"] for r in results))
    fig, axes = plt.subplots(2, len(models), figsize=(4.5 * len(models), 7), squeeze=False)
    for col, model in enumerate(models):
        for r in (r for r in results if r["model"] == model):
            t = [p["time"] for p in r["curve"]]
            label = f"{LABELS[r['method']]} (lr {r['lr']:g})"
            axes[0, col].plot(t[1:], [p["train_loss"] for p in r["curve"][1:]], color=COLORS[r["method"]], label=label)
            axes[1, col].plot(t, [100 * p["eval_acc"] for p in r["curve"]], color=COLORS[r["method"]], label=label)
        axes[0, col].set_title(f"{model}: training loss")
        axes[0, col].set_yscale("log")
        axes[1, col].set_title(f"{model}: test accuracy (2k subset)")
        axes[1, col].set_xlabel("training wall-clock (s, 2-core CPU)")
        axes[1, col].set_ylim(0, 100)
        axes[1, col].legend(fontsize=7, loc="lower right")
        for row in range(2):
            axes[row, col].grid(alpha=0.3)
    fig.suptitle("Fashion-MNIST, batch 64, SGD momentum 0.9, tuned constant learning rates")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
