"""Is M2's z' free of the class? A linear probe on q(z'|x, y') (Jurasiński 2019, sec 3.3).

    python -m experiments.m2_zprime_probe --budget cpu

The thesis trains M2 in the semi-supervised setting at several weights alpha of the
discriminative term, encodes every training image into z' under *every* label y', and trains
a classifier to predict the image's true class from z'. Were z' disentangled from y, that
classifier would be at chance (1/K); the thesis finds over 85% for every alpha (MNIST, 100
labels), and concludes that the class stays in z'.

Rows, per alpha and seed:

- ``test_accuracy``: M2's own classifier q(y|x) at the best-validation epoch (the library's
  selection), ``test_accuracy_last`` at the last epoch;
- ``probe_accuracy``: the probe's test accuracy. Its inputs are the means of q(z'|x, y') of
  the last epoch's model for every (x, y') pair, y' over all K classes, and its target the
  true class of x; the probe is scikit-learn's ``LogisticRegression`` on standardised
  inputs, fitted on the training pairs (every training image, its hidden labels revealed
  for the probe only) and scored on the test pairs;
- ``probe_accuracy_given_true``: the same probe scored on the test pairs with y' = y only;
- ``chance``: 1/K.

Each alpha also trains App. E's adversarial M2 (``--adversary``, weights w > 0; w = 0 is
M2): an adversary f(y|z') plays against the encoder, which should push the probe towards
chance if the game works (the thesis's preliminary runs found no difference in accuracy;
the probe asks whether it changed z').

Configuration (App. B, sec 5.1): one hidden layer of 500 softplus units per network, z' of
50, Adam 1e-3, 100 labelled + 100 unlabelled rows per batch, 100 labels. What differs: the
data is mnist-5k (the 5000-image MNIST subset) instead of MNIST, and the ``cpu`` budget
trains 30 epochs instead of the thesis's 500 (not stated for this experiment), at three
alphas; torch's default initialisation instead of Xavier's.

Budgets: ``smoke`` (1 epoch, one alpha, one seed), ``cpu`` (30 epochs, alpha 1, 100 and
10000, 3 seeds), ``paper`` (500 epochs, alpha 0.1 to 10000, 3 seeds). Writes
results/m2_zprime_probe/ (results.md, results.csv, summary.csv, config.json).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from experiments.common import (
    JURASINSKI_FIT,
    JURASINSKI_MODEL,
    ScriptParser,
    add_results_arguments,
    budget_with,
    build_seeded,
    claim_results,
    comma_list,
    mean_and_sd,
    non_negative_float,
    positive_int,
    random_seed_list,
    run_script,
    write_results,
)
from ppl_ssvae import data
from ppl_ssvae.training import fit

BUDGETS = {
    "smoke": {"epochs": 1, "alpha": [1.0], "seeds": [0], "adversary": [0.0, 1.0]},
    "cpu": {"epochs": 30, "alpha": [1.0, 100.0, 10000.0], "seeds": [0, 1, 2],
            "adversary": [0.0, 1.0]},
    "paper": {"epochs": 500, "alpha": [0.1, 1.0, 10.0, 100.0, 10000.0], "seeds": [0, 1, 2],
              "adversary": [0.0, 1.0]},
}  # fmt: skip
MODEL, FIT = JURASINSKI_MODEL, JURASINSKI_FIT  # App. B
LABELS = 100


def main(argv: list[str] | None = None) -> Path:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=BUDGETS, default="cpu")
    parser.add_argument("--alpha", type=comma_list(non_negative_float),
                        help="comma-separated alphas [the budget's]")  # fmt: skip
    parser.add_argument("--adversary", type=comma_list(non_negative_float),
                        help="adversary weights w: 0 is M2, w > 0 App. E's adversarial M2 "
                        "[the budget's: 0,1]")  # fmt: skip
    parser.add_argument("--seeds", type=random_seed_list, help="[the budget's]")
    parser.add_argument("--epochs", type=positive_int, help="[the budget's]")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--data-dir", help="where a user-supplied dataset lives")
    add_results_arguments(parser, "named after the script and dataset")
    args = parser.parse_args(argv)
    results_name = args.name or "m2_zprime_probe"
    budget = budget_with(BUDGETS[args.budget], args, ("alpha", "seeds", "epochs", "adversary"))

    # Taken before any work, so an earlier run's folder is refused before it is computed.
    claim_results(results_name, args.results_dir)
    dataset = data.load(args.dataset, data_dir=args.data_dir)
    rows: list[dict[str, Any]] = []
    for seed in budget["seeds"]:
        split = data.semi_supervised_split(dataset, labels=LABELS, seed=seed)
        for alpha, weight in itertools.product(budget["alpha"], budget["adversary"]):
            start = time.process_time()
            game = {"adversary_weight": weight} if weight else {}
            model = build_seeded("m2-adversarial" if weight else "m2", seed, alpha=alpha,
                                 input_dim=split.input_dim, num_classes=split.num_classes,
                                 **MODEL, **game)  # fmt: skip
            result = fit(model, split, epochs=budget["epochs"], seed=seed, progress=False, **FIT)
            best, last = result.best or result.history[-1], result.history[-1]
            probe, given_true = probe_accuracy(model, split, seed)
            rows.append({"alpha": alpha, "adversary_weight": weight, "seed": seed, "labels": LABELS,
                         "epochs": len(result.history), "best_epoch": best["epoch"],
                         "test_accuracy": best["test_accuracy"],
                         "test_accuracy_last": last["test_accuracy"],
                         "probe_accuracy": probe, "probe_accuracy_given_true": given_true,
                         "chance": 1.0 / split.num_classes,
                         "cpu_seconds": time.process_time() - start})  # fmt: skip
    metrics = ["test_accuracy", "test_accuracy_last", "probe_accuracy",
               "probe_accuracy_given_true", "cpu_seconds"]  # fmt: skip
    summary = mean_and_sd(rows, ("alpha", "adversary_weight"), metrics)
    config = {"args": vars(args), "budget": budget, "model": MODEL, "fit": FIT,
              "labels": LABELS, "probe": "StandardScaler + LogisticRegression(max_iter=2000)"}  # fmt: skip
    out = write_results(results_name, rows, config, args.results_dir, summary)
    print((out / "results.md").read_text())
    return out


def zprime_pairs(model: Any, x: torch.Tensor, y_true: torch.Tensor) -> tuple[np.ndarray, ...]:
    """The means of q(z'|x, y') for every row and every class y' (``(N * K, z_dim)``), each
    pair's target (the row's true class) and whether y' is that class."""
    k = model.config.num_classes
    means = [model.encode(x, torch.full((len(x),), c, dtype=torch.long))["z_mean"]
             for c in range(k)]  # fmt: skip
    features = torch.cat(means).cpu().numpy()
    targets = y_true.repeat(k).cpu().numpy()
    given = torch.arange(k).repeat_interleave(len(x)).cpu().numpy()
    return features, targets, given == targets


def probe_accuracy(model: Any, split: Any, seed: int) -> tuple[float, float]:
    """The probe's test accuracy over all (x, y') pairs and over the pairs with y' = y."""
    x_train, y_train, _ = zprime_pairs(model, split.x_train, split.y_train_true)
    x_test, y_test, true_pair = zprime_pairs(model, split.x_test, split.y_test)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(x_train, y_train)
    right = probe.predict(x_test) == y_test
    return float(right.mean()), float(right[true_pair].mean())


if __name__ == "__main__":
    run_script(main)
