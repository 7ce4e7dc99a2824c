"""Shared pieces of the experiment scripts: budgets and the results directory."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ppl_ssvae.models.base import SemiSupervisedModel
from ppl_ssvae.optim import optimizer_args
from ppl_ssvae.train import FitResult, environment

# Read when a script starts, so results name the code that produced them, not a commit
# made while a long run was going.
STARTED_FROM = environment()


def paper_fit_arguments(model_class: type[SemiSupervisedModel]) -> dict[str, Any]:
    """``fit`` keyword arguments from a model's ``fit_defaults`` (its paper's training
    settings): batch composition, binarisation, learning rate and its decay, optimizer."""
    settings = model_class.fit_defaults
    return {
        "labelled_share": settings["labelled_share"],
        "binarize": settings["binarize"],
        "lr": settings["lr"],
        "lr_decay": settings["lr_decay"],
        "optimizer": settings["optimizer"],
        "optimizer_args": optimizer_args(settings),
    }


def write_results(
    name: str,
    rows: list[dict[str, Any]],
    config: dict[str, Any],
    results_dir: str | Path = "results",
) -> Path:
    """Write ``results/<name>/`` with results.md, results.csv and config.json."""
    out = Path(results_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "config.json").write_text(json.dumps({**config, "environment": STARTED_FROM}, indent=2))
    return out


def plot_curves(path: Path, curves: dict[str, FitResult], key: str = "test_accuracy") -> None:
    """Accuracy against CPU-minutes, one line per run (matplotlib only when asked for)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, result in curves.items():
        ax.plot(
            [h["elapsed_cpu_seconds"] / 60 for h in result.history],
            [h[key] for h in result.history],
            marker=".",
            label=label,
        )
    ax.set_xlabel("CPU-minutes")
    ax.set_ylabel(key.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def whole_labels(requested: int, num_classes: int) -> int:
    """The largest label count <= ``requested`` that every class can share equally.

    ``semi_supervised_split`` keeps the same number of labels per class, so it refuses
    e.g. 100 labels over 3 shape classes; the paper's counts (100, 300, ...) become 99, 300.
    """
    return requested // num_classes * num_classes
