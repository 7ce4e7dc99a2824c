"""M2 trained with its generative loss only, with and without a KL warm-up, on two moons
(Jurasiński 2019, supplement sec 3.1, Figs 8-11).

    python -m experiments.m2_kl_warmup_moons --budget cpu

The thesis trains M2 on two moons "with only generative loss" (alpha = 0) and a KL
warm-up whose weight grows linearly until the KL term is "fully incorporated at epoch 100".
At epoch 70 (KL weight 0.7, Fig 8) both classifiers, q(y|x) and the one that picks the
class whose reconstruction is best (softmax of the negative reconstruction losses), "perform
relatively well" ("accuracy of nearly 100%", Fig 8's caption); with the KL term fully in
(Figs 10-11) "the classification boundaries dramatically change". It gives no accuracy
after training, no number of labels, sigma^2, networks or seeds for this experiment.

Here, per sigma^2 and seed, two runs of the same M2 from the same initial weights:

- ``warm-up``: ``ppl_ssvae.training.KLWarmup(epochs=100)``, the weight of the continuous
  latent's terms (log p(z') - log q(z'|x, y)) linear from 0 to 1 over 100 epochs;
- ``no warm-up``: the full ELBO from the first step.

Rows are the states at the budget's probe epochs (70: Fig 8; 100: the end of the warm-up;
the last epoch: Figs 10-11), with ``kl_weight``, the test accuracy of q(y|x)
(``test_accuracy``), of the reconstruction classifier (``test_accuracy_reconstruction``:
argmin over y of ||x - f(y, z')||^2, z' the mean of q(z'|x, y)) and the test
reconstruction error (||x - f(y_hat, z')||^2, y_hat predicted by q(y|x)).

Configuration (the thesis's sec 3.1 toy setting where the supplement says nothing): the
library's ``moons`` (scikit-learn ``make_moons``, 2000 points, noise 0.1; fixed 1600 / 400
train / test split, 200 validation points), 50 labelled points (25 per class), M2 with
alpha = 0, z' 1-dimensional, every network 3 hidden layers of 50 softplus units, a Gaussian
likelihood with fixed sigma^2 (``--sigma2``: 1, the library's and the "common choice" of
sec 3.1, and 0.01), Adam at 1e-3, batches of 100 with half labelled, 3 seeds.

Budgets: ``smoke`` (3 epochs, to check the script runs), ``cpu`` (150 epochs: 50 with the
KL term fully in), ``paper`` (300 epochs). Writes results/m2_kl_warmup_moons/ with
results.md, results.csv, summary.csv, config.json, epochs.png (accuracies and KL weight
per epoch, first seed) and classifiers.png (Figs 8 and 10's shape, first seed: q(y|x) and
the reconstruction classifier at epoch 70 and at the last epoch of the warm-up run).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch

from experiments.common import (
    ScriptParser,
    add_results_arguments,
    claim_results,
    comma_list,
    mean_and_sd,
    positive_float,
    pyplot,
    random_seed_list,
    run_script,
    write_results,
)
from experiments.m2_sigma2_circles import FIT, MODEL, build_m2, reconstructions
from ppl_ssvae import data
from ppl_ssvae.training import Callback, FitResult, KLWarmup, fit

BUDGETS = {
    "smoke": {"epochs": 3, "warmup_epochs": 2, "probes": [1, 2, 3], "seeds": [0]},
    "cpu": {"epochs": 150, "warmup_epochs": 100, "probes": [70, 100, 150], "seeds": [0, 1, 2]},
    "paper": {"epochs": 300, "warmup_epochs": 100, "probes": [70, 100, 300],
              "seeds": [0, 1, 2]},
}  # fmt: skip
ALPHA = 0.0  # "only generative loss"
LABELS = 50
CONDITIONS = ("warm-up", "no warm-up")


def main(argv: list[str] | None = None) -> Path:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=BUDGETS, default="cpu")
    parser.add_argument("--sigma2", type=comma_list(positive_float), default="1,0.01",
                        help="comma-separated fixed sigma^2 values [1,0.01]")  # fmt: skip
    parser.add_argument("--seeds", type=random_seed_list, help="[the budget's]")
    parser.add_argument("--dataset", default="moons", help="a two-dimensional toy dataset")
    add_results_arguments(parser, "named after the script and dataset")
    args = parser.parse_args(argv)
    results_name = args.name or (
        "m2_kl_warmup_moons" if args.dataset == "moons" else f"m2_kl_warmup_{args.dataset}"
    )
    budget = dict(BUDGETS[args.budget])
    if args.seeds is not None:
        budget["seeds"] = args.seeds

    # Taken before any work, so an earlier run's folder is refused before it is computed.
    claim_results(results_name, args.results_dir)
    dataset = data.load(args.dataset)
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, Any]]] = {}
    snapshots: dict[str, Any] = {}
    first = budget["seeds"][0]
    for seed in budget["seeds"]:
        split = data.semi_supervised_split(dataset, labels=LABELS, seed=seed)
        if seed == first:
            first_split = split
        for sigma2 in args.sigma2:
            for condition in CONDITIONS:
                result, probe, cpu = _train(condition, split, sigma2, seed, budget)
                rows += [_row(condition, sigma2, seed, h, cpu)
                         for h in result.history if h["epoch"] in budget["probes"]]  # fmt: skip
                if seed == first:
                    curves[f"{condition}, sigma2={sigma2:g}"] = result.history
                    if condition == "warm-up":
                        for epoch, snapshot in probe.models.items():
                            snapshots[f"sigma2={sigma2:g}, epoch {epoch}"] = snapshot

    columns = ["kl_weight", "test_accuracy", "test_accuracy_reconstruction",
               "test_reconstruction_error"]  # fmt: skip
    summary = mean_and_sd(rows, ("condition", "sigma2", "epoch"), columns)
    model_config = {**MODEL, "alpha": ALPHA}
    config = {"args": vars(args), "budget": budget, "model": model_config, "fit": FIT,
              "labels": LABELS,
              "data": {"dataset": args.dataset, "train_points": len(split.x_train),
                       "validation_points": len(split.x_val), "test_points": len(split.x_test)}}  # fmt: skip
    out = write_results(results_name, rows, config, args.results_dir, summary)
    plot_epochs(out / "epochs.png", curves)
    plot_classifiers(out / "classifiers.png", snapshots, first_split, budget["probes"])
    print((out / "results.md").read_text())
    return out


def _train(
    condition: str,
    split: data.SemiSupervisedData,
    sigma2: float,
    seed: int,
    budget: dict[str, Any],
) -> tuple[FitResult, Probe, float]:
    """M2 at ``sigma2`` trained under ``condition`` (with or without the KL warm-up): its
    result, the probe that watched it and the CPU-seconds it took."""
    model = build_m2(split, sigma2, seed, alpha=ALPHA)
    probe = Probe(split, budget["probes"])
    callbacks: list[Callback] = [probe]
    if condition == "warm-up":
        callbacks.insert(0, KLWarmup(epochs=budget["warmup_epochs"]))
    start = time.process_time()
    result = fit(model, split, epochs=budget["epochs"], seed=seed, progress=False,
                 callbacks=callbacks, **FIT)  # fmt: skip
    return result, probe, time.process_time() - start


@torch.no_grad()
def reconstruction_log_likelihoods(model: Any, x: torch.Tensor) -> torch.Tensor:
    """``(N, K)``: for each class y, -||x - f(y, z')||^2 / (2 sigma^2) with z' the mean of
    q(z'|x, y): log p(x|y, z') up to a constant. Its softmax over y is the thesis's
    "classification based on the reconstruction loss" (Fig 8's last panel)."""
    columns = []
    for c in range(model.config.num_classes):
        y = torch.full((len(x),), c, dtype=torch.long)
        error = ((x - reconstructions(model, x, y)) ** 2).sum(-1)
        columns.append(-error / (2 * model.config.sigma2))
    return torch.stack(columns, -1)


class Probe(Callback):
    """Adds to every epoch's record the reconstruction classifier's test accuracy and the
    test reconstruction error, and keeps a copy of the model at the ``probes`` epochs."""

    def __init__(self, split: Any, probes: list[int]) -> None:
        self.split, self.probes = split, set(probes)
        self.models: dict[int, Any] = {}

    def on_evaluate(self, trainer: Any, record: dict[str, Any]) -> None:
        model, x, y = trainer.model, self.split.x_test, self.split.y_test
        by_reconstruction = reconstruction_log_likelihoods(model, x).argmax(-1)
        record["test_accuracy_reconstruction"] = float((by_reconstruction == y).float().mean())
        predicted = reconstructions(model, x)
        record["test_reconstruction_error"] = float(((x - predicted) ** 2).sum(-1).mean())
        if record["epoch"] in self.probes:
            self.models[record["epoch"]] = copy.deepcopy(model)


def _row(
    condition: str, sigma2: float, seed: int, record: dict[str, Any], cpu: float
) -> dict[str, Any]:
    return {
        "condition": condition,
        "sigma2": sigma2,
        "seed": seed,
        "labels": LABELS,
        "epoch": record["epoch"],
        "kl_weight": record.get("kl_weight", 1.0),
        "val_accuracy": record["val_accuracy"],
        "test_accuracy": record["test_accuracy"],
        "test_accuracy_reconstruction": record["test_accuracy_reconstruction"],
        "test_reconstruction_error": record["test_reconstruction_error"],
        "run_cpu_seconds": cpu,  # the whole run's, repeated on each of its probe rows
    }


def plot_epochs(path: Path, curves: dict[str, list[dict[str, Any]]]) -> None:
    """Per epoch of the first seed's runs: q(y|x)'s and the reconstruction classifier's
    test accuracy, and the KL weight."""
    plt = pyplot()
    fig, (ax, kl) = plt.subplots(2, 1, figsize=(6, 5), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1]})  # fmt: skip
    for i, (label, history) in enumerate(curves.items()):
        epochs = [h["epoch"] for h in history]
        color = f"C{i}"
        ax.plot(epochs, [h["test_accuracy"] for h in history], color=color,
                label=f"q(y|x), {label}")  # fmt: skip
        ax.plot(epochs, [h["test_accuracy_reconstruction"] for h in history], color=color,
                ls="--", label=f"reconstruction, {label}")  # fmt: skip
        kl.plot(epochs, [h.get("kl_weight", 1.0) for h in history], color=color)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    kl.set_ylabel("KL weight")
    kl.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_classifiers(path: Path, snapshots: dict[str, Any], split: Any, probes: list[int]) -> None:
    """Figs 8 / 10's shape for the warm-up run of the first seed, one row per sigma^2 and
    probe epoch: the data with the test points' reconstructions, q(y=1|x), and the
    reconstruction classifier's confidence, as backgrounds."""
    plt = pyplot()
    keys = [k for k in snapshots if int(k.rsplit(" ", 1)[1]) in (probes[0], probes[-1])]
    x_all = torch.cat([split.x_train, split.x_test])
    lo, hi = x_all.min(0).values - 0.3, x_all.max(0).values + 0.3
    g0, g1 = torch.meshgrid(torch.linspace(lo[0], hi[0], 100), torch.linspace(lo[1], hi[1], 100),
                            indexing="ij")  # fmt: skip
    grid = torch.stack([g0.reshape(-1), g1.reshape(-1)], -1)
    fig, axes = plt.subplots(len(keys), 3, figsize=(9, 2.9 * len(keys)), squeeze=False)
    x, y = split.x_test, split.y_test
    for row, key in zip(axes, keys, strict=True):
        model = snapshots[key]
        recon = reconstructions(model, x)
        predicted = model.predict(x)
        row[0].scatter(*x.T, s=3, c=y, cmap="coolwarm", vmin=0, vmax=1, alpha=0.4)
        row[0].scatter(*recon.T, s=4, c=predicted, cmap="coolwarm", vmin=0, vmax=1, marker="x")
        row[0].set_title(f"{key}: data (dots), reconstructions (x)", fontsize=7)
        by_q = model.classify(grid)[:, 1]
        by_recon = torch.softmax(reconstruction_log_likelihoods(model, grid), -1)[:, 1]
        for ax, conf, what in [(row[1], by_q, "q(y|x)"), (row[2], by_recon, "reconstruction")]:
            ax.contourf(g0, g1, conf.reshape(g0.shape), levels=20, cmap="coolwarm", vmin=0,
                        vmax=1, alpha=0.6)  # fmt: skip
            ax.scatter(*x.T, s=3, c=y, cmap="coolwarm", vmin=0, vmax=1, edgecolors="none")
            pred = (model.predict(x) if what == "q(y|x)" else
                    reconstruction_log_likelihoods(model, x).argmax(-1))  # fmt: skip
            ax.set_title(f"{what}: test accuracy {(pred == y).float().mean():.3f}", fontsize=7)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    run_script(main)
