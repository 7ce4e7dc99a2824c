"""M2's accuracy and reconstruction against the Gaussian likelihood's fixed sigma^2 on
concentric circles (Jurasiński 2019, sec 3.1, Figs 3-4).

    python -m experiments.m2_sigma2_circles --budget cpu

The thesis: 50 labelled points (25 per class), the rest unlabelled, M2 with alpha = 0.1, a
1-dimensional z', p(x|y, z') = N(f(y, z'), sigma^2 I) for a grid of sigma^2; a labelled-only
network (the same classifier trained on the 50 points) as the baseline (Fig 3d). Claim
(Figs 3-4): at sigma^2 = 1 M2 over-regularises, reconstructs badly and classifies worse
than the baseline; smaller sigma^2 reconstructs well and classifies well. Also: at
sigma^2 = 1, M2 started from the baseline's (optimal) classifier still drifts away from it.

Rows, per seed (the seed draws the labelled points, the initial weights and the batches):

- ``M2``, one per sigma^2: ``ppl_ssvae.training.fit`` with ``M2Config(sigma2=...)``;
- ``labelled-only``: M2's own classifier q(y|x), from the same initial weights, trained by
  cross-entropy on the 50 labelled points alone
  (``ppl_ssvae.evaluation.baselines.fit_labelled_only``);
- ``M2 from labelled-only`` (``--init-sigma2``, default 1): that trained baseline model,
  then ``fit`` as M2: its classifier starts at the baseline's best-validation weights, the
  encoder q(z|x, y) and decoder as built (the thesis's "classifier initialized to optimal
  values").

Columns: ``test_accuracy`` at the best-validation epoch (200 labelled validation points,
the library's selection), ``test_accuracy_last`` and ``test_reconstruction_error`` at the
last epoch: the mean over test points of ||x - f(y_hat, z')||^2, with z' the mean of
q(z'|x, y_hat) and y_hat the class q(y|x) predicts (``model.encode`` / ``model.decode``);
it does not depend on sigma^2, so it compares across the grid as Fig 4's reconstruction
loss does. ``start_test_accuracy`` is the test accuracy of the classifier M2 starts from.

Configuration, and what differs from the thesis:

- data: the library's ``circles`` (scikit-learn ``make_circles``, 2000 points, noise 0.05,
  factor 0.5; fixed 1600 / 400 train / test split), so 200 validation points, 50 labelled
  and 1350 unlabelled training points instead of the thesis's 50 + 9950 (the thesis gives
  neither noise nor factor);
- networks: the library's M2 has one ``hidden`` for every network, so the classifier
  q(y|x), the encoder q(z'|x, y) and the decoder are all MLPs with 3 hidden layers of 50
  units (softplus, App. B) -- the thesis's classifier has 1 hidden layer of 50;
- training (not stated for this experiment in the thesis): Adam at 1e-3 (App. B), batches of
  100 with half labelled (``labelled_share="1:1"``, sec 5.1's composition), the budget's
  epochs; 3 seeds instead of one figure.

Budgets: ``smoke`` (2 epochs, 2 sigma^2, one seed: checks the script runs), ``cpu`` (150
epochs, ~4000 steps; 500 baseline epochs), ``paper`` (500 epochs as in sec 5.1).
Writes results/m2_sigma2_circles/ with results.md, results.csv, summary.csv, config.json,
sigma2.png (Fig 4's shape: accuracy and reconstruction error against sigma^2) and
classifiers.png (Fig 3's shape, seed 0: the data, the reconstructions and the classifier's
confidence for the baseline, sigma^2 = 1 and the smallest sigma^2).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import pyro
import torch

from experiments.common import (
    ScriptParser,
    add_results_arguments,
    budget_with,
    claim_results,
    comma_list,
    mean_and_sd,
    positive_float,
    positive_int,
    pyplot,
    random_seed_list,
    run_script,
    write_results,
)
from ppl_ssvae import data, models
from ppl_ssvae.evaluation.baselines import fit_labelled_only
from ppl_ssvae.training import Callback, FitResult, fit

BUDGETS = {
    "smoke": {"epochs": 2, "baseline_epochs": 2, "sigma2": [1.0, 0.01], "seeds": [0]},
    "cpu": {"epochs": 150, "baseline_epochs": 500, "sigma2": [1.0, 0.1, 0.01, 1e-3, 1e-4],
            "seeds": [0, 1, 2]},
    "paper": {"epochs": 500, "baseline_epochs": 1000, "sigma2": [1.0, 0.1, 0.01, 1e-3, 1e-4],
              "seeds": [0, 1, 2]},
}  # fmt: skip
# Jurasiński sec 3.1 and App. B; one `hidden` for all three networks (see the docstring).
MODEL = {"z_dim": 1, "hidden": (50, 50, 50), "activation": "softplus", "alpha": 0.1,
         "likelihood": "gaussian"}  # fmt: skip
FIT = {"batch_size": 100, "labelled_share": "1:1", "lr": 1e-3, "lr_decay": 1.0,
       "optimizer": "adam"}  # fmt: skip
BASELINE = {"lr": 1e-3, "batch_size": 50}  # all 50 labelled points in one step
LABELS = 50


def main(argv: list[str] | None = None) -> Path:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=BUDGETS, default="cpu")
    parser.add_argument("--sigma2", type=comma_list(positive_float),
                        help="comma-separated sigma^2 grid [the budget's]")  # fmt: skip
    parser.add_argument("--seeds", type=random_seed_list, help="[the budget's]")
    parser.add_argument("--epochs", type=positive_int, help="M2's epochs [the budget's]")
    parser.add_argument("--baseline-epochs", type=positive_int, help="[the budget's]")
    parser.add_argument("--init-sigma2", type=positive_float, default=1.0,
                        help="sigma^2 of the run started from the baseline [1]")  # fmt: skip
    parser.add_argument("--dataset", default="circles", help="a two-dimensional toy dataset")
    add_results_arguments(parser, "named after the script and dataset")
    args = parser.parse_args(argv)
    results_name = args.name or (
        "m2_sigma2_circles" if args.dataset == "circles" else f"m2_sigma2_{args.dataset}"
    )
    budget = budget_with(
        BUDGETS[args.budget], args, ("sigma2", "seeds", "epochs", "baseline_epochs")
    )

    # Taken before any work, so an earlier run's folder is refused before it is computed.
    claim_results(results_name, args.results_dir)
    dataset = data.load(args.dataset)
    rows: list[dict[str, Any]] = []
    shown: dict[str, torch.nn.Module] = {}  # the first seed's models for classifiers.png
    curves: dict[str, list[dict[str, Any]]] = {}
    for seed in budget["seeds"]:
        split = data.semi_supervised_split(dataset, labels=LABELS, seed=seed)
        first = seed == budget["seeds"][0]
        if first:
            first_split = split
        rows += _run_seed(split, seed, budget, args.init_sigma2, shown if first else None,
                          curves if first else None)  # fmt: skip

    summary = mean_and_sd(
        rows,
        ("method", "sigma2"),
        ["test_accuracy", "test_accuracy_last", "test_reconstruction_error", "cpu_seconds"],
    )
    config = {"args": vars(args), "budget": budget, "model": MODEL, "fit": FIT,
              "baseline": BASELINE, "labels": LABELS,
              "data": {"dataset": args.dataset, "train_points": len(split.x_train),
                       "validation_points": len(split.x_val), "test_points": len(split.x_test)}}  # fmt: skip
    out = write_results(results_name, rows, config, args.results_dir, summary)
    plot_sigma2(out / "sigma2.png", summary)
    plot_classifiers(out / "classifiers.png", shown, first_split)
    plot_epochs(out / "epochs.png", curves)
    print((out / "results.md").read_text())
    return out


def _run_seed(
    split: data.SemiSupervisedData,
    seed: int,
    budget: dict[str, Any],
    init_sigma2: float,
    shown: dict[str, torch.nn.Module] | None,
    curves: dict[str, list[dict[str, Any]]] | None,
) -> list[dict[str, Any]]:
    """One seed's rows: the labelled-only baseline, M2 at every sigma^2, and M2 started
    from the baseline; ``shown`` / ``curves`` (the first seed only) collect the figures'
    models and training curves."""
    baseline = build_m2(split, init_sigma2, seed)
    start = time.process_time()
    result = fit_labelled_only(
        baseline, split, epochs=budget["baseline_epochs"], seed=seed, **BASELINE
    )
    rows = [_row("labelled-only", None, seed, result, baseline, split, start, None)]
    if shown is not None:
        shown.setdefault("labelled-only", copy.deepcopy(baseline))  # trained on below
    # The same model, its classifier now the baseline's best epoch, trained as M2.
    start_accuracy = result.best["test_accuracy"]
    runs = [("M2", s2, build_m2(split, s2, seed), None) for s2 in budget["sigma2"]]
    runs.append(("M2 from labelled-only", init_sigma2, baseline, start_accuracy))
    for method, sigma2, model, started_at in runs:
        start = time.process_time()
        before = started_at if started_at is not None else _accuracy(model, split)
        result = fit(model, split, epochs=budget["epochs"], seed=seed, progress=False,
                     callbacks=[ReconstructionError(split)], **FIT)  # fmt: skip
        rows.append(_row(method, sigma2, seed, result, model, split, start, before))
        if shown is not None and curves is not None:
            shown.setdefault(f"{method}, sigma2={sigma2:g}", model)
            curves[f"{method}, sigma2={sigma2:g}"] = result.history
    return rows


def build_m2(split: Any, sigma2: float, seed: int, **config: Any) -> models.SemiSupervisedModel:
    """M2 of ``MODEL`` (``config`` overriding it), its initial weights drawn from ``seed``:
    the same for every row of a seed."""
    pyro.set_rng_seed(seed)
    return models.build("m2", input_dim=split.input_dim, num_classes=split.num_classes,
                        sigma2=sigma2, **{**MODEL, **config})  # fmt: skip


class ReconstructionError(Callback):
    """Adds the test reconstruction error (:func:`reconstruction_error`) to every epoch's
    record, so the best and the last epoch both carry it."""

    def __init__(self, split: Any) -> None:
        self.split = split

    def on_evaluate(self, trainer: Any, record: dict[str, Any]) -> None:
        record["test_reconstruction_error"] = reconstruction_error(trainer.model, self.split.x_test)


@torch.no_grad()
def reconstructions(model: Any, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """f(y, z') for each row: z' the mean of q(z'|x, y), y the given class, else the one
    q(y|x) predicts (``model.encode``), decoded to the mean of p(x|y, z')."""
    encoded = model.encode(x, y)
    labels = encoded["y_probs"].argmax(-1) if y is None else torch.as_tensor(y)
    return model.decode(encoded["z_mean"], labels).mean


def reconstruction_error(model: Any, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """Mean squared Euclidean distance ||x - f(y, z')||^2 over rows (:func:`reconstructions`)."""
    return float(((x - reconstructions(model, x, y)) ** 2).sum(-1).mean())


def _accuracy(model: Any, split: Any) -> float:
    return float((model.predict(split.x_test) == split.y_test).float().mean())


def _row(
    method: str,
    sigma2: float | None,
    seed: int,
    result: FitResult,
    model: Any,
    split: Any,
    start: float,
    start_accuracy: float | None,
) -> dict[str, Any]:
    best, last = result.best or result.history[-1], result.history[-1]
    return {
        "method": method,
        "sigma2": "" if sigma2 is None else sigma2,
        "seed": seed,
        "labels": int(split.labelled_mask.sum()),
        "epochs": len(result.history),
        "best_epoch": best["epoch"],
        "val_accuracy": best["val_accuracy"],
        "test_accuracy": best["test_accuracy"],
        "test_accuracy_last": last["test_accuracy"],
        # The baseline's decoder is untrained: no reconstruction to report.
        "test_reconstruction_error": last.get("test_reconstruction_error", float("nan")),
        "start_test_accuracy": "" if start_accuracy is None else start_accuracy,
        "cpu_seconds": time.process_time() - start,
    }


def plot_sigma2(path: Path, summary: list[dict[str, Any]]) -> None:
    """Fig 4's shape: accuracy and reconstruction error of M2 against sigma^2 (mean and
    sd over seeds), the labelled-only baseline's accuracy as a line."""
    plt = pyplot()
    m2 = sorted((r for r in summary if r["method"] == "M2"), key=lambda r: r["sigma2"])
    base = [r for r in summary if r["method"] == "labelled-only"]
    s2 = [r["sigma2"] for r in m2]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key, label, ls in [("test_accuracy", "best-validation epoch", "-"),
                           ("test_accuracy_last", "last epoch", "--")]:  # fmt: skip
        ax.errorbar(s2, [r[f"{key}_mean"] for r in m2], [r[f"{key}_sd"] for r in m2],
                    color="tab:red", ls=ls, marker="o", capsize=3,
                    label=f"M2 test accuracy ({label})")  # fmt: skip
    if base:
        ax.axhline(base[0]["test_accuracy_mean"], color="grey", ls=":", label="labelled-only")
    ax.set_xscale("log")
    ax.set_xlabel("sigma^2")
    ax.set_ylabel("test accuracy", color="tab:red")
    right = ax.twinx()
    right.errorbar(s2, [r["test_reconstruction_error_mean"] for r in m2],
                   [r["test_reconstruction_error_sd"] for r in m2], color="tab:blue",
                   marker="s", capsize=3)  # fmt: skip
    right.set_yscale("log")
    right.set_ylabel("test reconstruction error ||x - f||^2 (last epoch)", color="tab:blue")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_classifiers(path: Path, shown: dict[str, Any], split: Any) -> None:
    """Fig 3's shape for one seed: per model the classifier's confidence q(y=1|x) as the
    background, labelled points by class, unlabelled points grey and the test points'
    reconstructions (M2 only) coloured by predicted class."""
    plt = pyplot()
    keys = ["labelled-only"] + [k for k in shown if k.startswith("M2")]
    x = torch.cat([split.x_train, split.x_test])
    lo, hi = x.min(0).values - 0.3, x.max(0).values + 0.3
    g0, g1 = torch.meshgrid(torch.linspace(lo[0], hi[0], 120), torch.linspace(lo[1], hi[1], 120),
                            indexing="ij")  # fmt: skip
    grid = torch.stack([g0.reshape(-1), g1.reshape(-1)], -1)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
    labelled = split.labelled_mask
    for ax, key in zip(axes[0], keys, strict=True):
        model = shown[key]
        conf = model.classify(grid)[:, 1].reshape(g0.shape)
        ax.contourf(g0, g1, conf, levels=20, cmap="coolwarm", vmin=0, vmax=1, alpha=0.6)
        ax.scatter(*split.x_train[~labelled].T, s=2, c="grey", alpha=0.4)
        if key != "labelled-only":
            recon = reconstructions(model, split.x_test)
            pred = model.predict(split.x_test)
            ax.scatter(*recon.T, s=4, c=pred, cmap="coolwarm", vmin=0, vmax=1, marker="x")
        ax.scatter(*split.x_train[labelled].T, s=25, c=split.y_train[labelled], cmap="coolwarm",
                   vmin=0, vmax=1, edgecolors="k")  # fmt: skip
        acc = _accuracy(model, split)
        ax.set_title(f"{key}\ntest accuracy {acc:.3f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_epochs(path: Path, curves: dict[str, list[dict[str, Any]]]) -> None:
    """Test accuracy per epoch of every M2 run of the first seed: whether the budget's
    epochs reached a plateau."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, history in curves.items():
        ax.plot([h["epoch"] for h in history], [h["test_accuracy"] for h in history], label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run_script(main)
