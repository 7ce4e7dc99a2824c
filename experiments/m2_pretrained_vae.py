"""M2 started from a pretrained VAE (Jurasiński 2019, sec 3.2, Fig 5).

    python -m experiments.m2_pretrained_vae --budget cpu

The thesis trains a VAE on the unlabelled data, initialises M2 with its weights and trains
M2: z' then already holds what the decoder needs to reconstruct, the decoder never learns
to use y, the classifier gets no signal from the generative loss and converges to one class
for every image (Fig 5b), worse than the labelled-only baseline, "even when trained with a
small added discriminative loss"; with alpha high enough the classifier does not
deteriorate.

Rows, per seed and alpha:

- ``M2 from VAE``: a VAE (``m1``, the same encoder and decoder sizes) trained on every
  training row, its weights copied into M2 -- the encoder q(z'|x, y)'s x-path and heads, the
  decoder p(x|y, z')'s z'-path and head -- M2's classifier q(y|x) and the y-paths (the
  parts a VAE has no counterpart of) as built; then ``fit`` as M2;
- ``M2``: the same M2 from its own initial weights (the same seed);
- ``labelled-only`` (once per seed): M2's classifier trained on the labelled rows alone
  (``fit_labelled_only``).

Columns: ``test_accuracy`` at the best-validation epoch, ``test_accuracy_last``,
``majority_share_last`` (the largest share of the test images given one class at the last
epoch: 1.0 is Fig 5's "label 6 for all images") and ``y_effect_last``: how much the decoder's
reconstruction depends on y, the mean over test images of ||f(y_hat, z') - f(y', z')||^2 over
the other labels y', divided by ||x - f(y_hat, z')||^2 (0: y is ignored).

Configuration (App. B): one hidden layer of 500 softplus units, z' of 50, Adam 1e-3, 100
labelled + 100 unlabelled rows per batch, 100 labels. What differs: mnist-5k for MNIST; the
thesis states neither its epochs nor the small alpha for this experiment: the ``cpu`` budget
trains the VAE and each M2 30 epochs at alpha 0.1 and 1000; torch's initialisation for
Xavier's.

Budgets: ``smoke`` (1 epoch each, one alpha, one seed), ``cpu`` (above, 3 seeds), ``paper``
(500 epochs, alpha 0.1, 1 and 1000). Writes results/m2_pretrained_vae/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from experiments.common import (
    JURASINSKI_FIT,
    JURASINSKI_MODEL,
    ScriptParser,
    budget_with,
    build_seeded,
    comma_list,
    mean_and_sd,
    non_negative_float,
    positive_int,
    random_seed_list,
    run_script,
    write_results,
)
from ppl_ssvae import data
from ppl_ssvae.evaluation.baselines import fit_labelled_only
from ppl_ssvae.training import fit

BUDGETS = {
    "smoke": {"epochs": 1, "vae_epochs": 1, "baseline_epochs": 1, "alpha": [0.1], "seeds": [0]},
    "cpu": {"epochs": 30, "vae_epochs": 30, "baseline_epochs": 300, "alpha": [0.1, 1000.0],
            "seeds": [0, 1, 2]},
    "paper": {"epochs": 500, "vae_epochs": 500, "baseline_epochs": 1000,
              "alpha": [0.1, 1.0, 1000.0], "seeds": [0, 1, 2]},
}  # fmt: skip
MODEL, FIT = JURASINSKI_MODEL, JURASINSKI_FIT  # App. B
LABELS = 100
# The VAE's decoder is an MLP, M2's a label-conditioned trunk whose x- (z'-) path has the
# same first layer under another name; every other shared weight has the same name.
RENAMED = {"p_x.trunk.0.weight": "p_x.trunk.layers.0.weight",
           "p_x.trunk.0.bias": "p_x.trunk.layers.0.bias"}  # fmt: skip


def main(argv: list[str] | None = None) -> Path:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=BUDGETS, default="cpu")
    parser.add_argument("--alpha", type=comma_list(non_negative_float), help="[the budget's]")
    parser.add_argument("--seeds", type=random_seed_list, help="[the budget's]")
    parser.add_argument("--epochs", type=positive_int, help="M2's and the VAE's [the budget's]")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--data-dir", help="where a user-supplied dataset lives")
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args(argv)
    budget = budget_with(BUDGETS[args.budget], args, ("alpha", "seeds"))
    if args.epochs is not None:
        budget["epochs"] = budget["vae_epochs"] = args.epochs

    dataset = data.load(args.dataset, data_dir=args.data_dir)
    rows: list[dict[str, Any]] = []
    for seed in budget["seeds"]:
        split = data.semi_supervised_split(dataset, labels=LABELS, seed=seed)
        sizes = {"input_dim": split.input_dim, "num_classes": split.num_classes, **MODEL}
        start = time.process_time()
        vae = build_seeded("m1", seed, **sizes)
        fit(vae, split, epochs=budget["vae_epochs"], seed=seed, progress=False, **FIT)
        vae_seconds = time.process_time() - start
        start = time.process_time()
        baseline = build_seeded("m2", seed, **sizes)
        result = fit_labelled_only(baseline, split, epochs=budget["baseline_epochs"], seed=seed)
        rows.append(_row("labelled-only", None, seed, result, baseline, split, start))
        for alpha in budget["alpha"]:
            for method in ("M2 from VAE", "M2"):
                start = time.process_time()
                model = build_seeded("m2", seed, alpha=alpha, **sizes)
                if method == "M2 from VAE":
                    copy_vae_weights(vae, model)
                result = fit(model, split, epochs=budget["epochs"], seed=seed, progress=False,
                             **FIT)  # fmt: skip
                row = _row(method, alpha, seed, result, model, split, start)
                if method == "M2 from VAE":
                    row["cpu_seconds"] += vae_seconds
                rows.append(row)
    metrics = ["test_accuracy", "test_accuracy_last", "majority_share_last", "y_effect_last",
               "cpu_seconds"]  # fmt: skip
    summary = mean_and_sd(rows, ("method", "alpha"), metrics)
    config = {"args": vars(args), "budget": budget, "model": MODEL, "fit": FIT,
              "labels": LABELS, "copied": "every VAE weight, p_x.trunk.0 as p_x.trunk.layers.0"}  # fmt: skip
    out = write_results("m2_pretrained_vae", rows, config, args.results_dir, summary)
    print((out / "results.md").read_text())
    return out


def copy_vae_weights(vae: torch.nn.Module, m2: torch.nn.Module) -> int:
    """Copy every weight of the VAE into M2 (the decoder's first layer renamed); returns how
    many tensors were copied. Refuses a VAE weight M2 has no place for."""
    target = m2.state_dict()
    copied = {}
    for name, tensor in vae.state_dict().items():
        if name == "prior":  # the VAE's unused class prior; M2 keeps its own
            continue
        to = RENAMED.get(name, name)
        if to not in target or target[to].shape != tensor.shape:
            raise ValueError(f"M2 has no weight {to} of shape {tuple(tensor.shape)}")
        copied[to] = tensor
    m2.load_state_dict({**target, **copied})
    return len(copied)


@torch.no_grad()
def y_effect(model: Any, x: torch.Tensor) -> float:
    """How much the decoder's output depends on y (see the module docstring)."""
    encoded = model.encode(x)
    labels, z = encoded["y_probs"].argmax(-1), encoded["z_mean"]
    own = model.decode(z, labels).mean
    error = ((x - own) ** 2).sum(-1).mean()
    k = model.config.num_classes
    shifts = [((model.decode(z, (labels + s) % k).mean - own) ** 2).sum(-1).mean()
              for s in range(1, k)]  # fmt: skip
    return float(torch.stack(shifts).mean() / error)


def _row(
    method: str, alpha: float | None, seed: int, result: Any, model: Any, split: Any, start: float
) -> dict[str, Any]:
    best, last = result.best or result.history[-1], result.history[-1]
    predicted = model.predict(split.x_test)
    share = torch.bincount(predicted, minlength=split.num_classes).max().item() / len(predicted)
    generative = method != "labelled-only"  # the baseline's decoder is untrained
    return {
        "method": method,
        "alpha": "" if alpha is None else alpha,
        "seed": seed,
        "labels": LABELS,
        "epochs": len(result.history),
        "best_epoch": best["epoch"],
        "test_accuracy": best["test_accuracy"],
        "test_accuracy_last": last["test_accuracy"],
        "majority_share_last": share,
        "y_effect_last": y_effect(model, split.x_test) if generative else float("nan"),
        "cpu_seconds": time.process_time() - start,
    }


if __name__ == "__main__":
    run_script(main)
