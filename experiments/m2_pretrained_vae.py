"""M2 and Jurasiński's latent-classifier models started from a pretrained VAE (Jurasiński
2019, sec 3.2 and Fig 5 for M2, sec 5.2 for the latent models).

    python -m experiments.m2_pretrained_vae --budget cpu

The thesis trains a VAE on the unlabelled data, initialises M2 with its weights and trains
M2: z' then already holds what the decoder needs to reconstruct, the decoder never learns
to use y, the classifier gets no signal from the generative loss and converges to one class
for every image (Fig 5b), worse than the labelled-only baseline, "even when trained with a
small added discriminative loss"; with alpha high enough the classifier does not
deteriorate. Sec 5.2 pretrains "the unlabeled part" of the latent-classifier model the same
way: the full model then fails to beat the baseline, the simplified one (p(x, y|z) ~=
p(x|z) p(y|z)) reaches 81.6 ± 1.2%, as without pretraining.

Rows, per seed, model and weight (M2's alpha, the latent models' lambda):

- ``from VAE``: a VAE (``m1``, the same encoder and decoder sizes) trained on every
  training row, its weights copied into the model -- the encoder q(z|x[, y])'s x-path and
  heads, the decoder p(x|[y,] z)'s z-path and head -- the classifier (M2's q(y|x), the latent
  models' p(y|z)) and the y-paths (the parts a VAE has no counterpart of) as built; then
  ``fit`` as that model;
- ``from scratch``: the same model from its own initial weights (the same seed);
- ``labelled-only`` (once per seed): M2's classifier trained on the labelled rows alone
  (``fit_labelled_only``), the thesis's baseline for every model.

Columns: ``test_accuracy`` at the best-validation epoch, ``test_accuracy_last``,
``majority_share_last`` (the largest share of the test images given one class at the last
epoch: 1.0 is Fig 5's "label 6 for all images") and ``y_effect_last``: how much the decoder's
reconstruction depends on y, the mean over test images of ||f(y_hat, z') - f(y', z')||^2 over
the other labels y', divided by ||x - f(y_hat, z')||^2 (0: y is ignored; the simplified
model's decoder has no y, so 0 by construction).

Configuration (App. B): one hidden layer of 500 softplus units, z' of 50, Adam 1e-3, 100
labelled + 100 unlabelled rows per batch, 100 labels. What differs: mnist-5k for MNIST; the
thesis states neither its epochs nor the weights for this experiment: the ``cpu`` budget
trains the VAE and each model 30 epochs, M2 at alpha 0.1 and 1000, the latent models at
their best lambda of Table 1 (0.5 for the full model, 0.001 for the simplified); torch's
initialisation for Xavier's.

Budgets: ``smoke`` (1 epoch each, one weight per model, one seed), ``cpu`` (above, 3
seeds), ``paper`` (500 epochs; M2 also at alpha 1). Writes results/m2_pretrained_vae/.
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
    add_results_arguments,
    budget_with,
    build_seeded,
    claim_results,
    comma_list,
    mean_and_sd,
    non_negative_float,
    positive_float,
    positive_int,
    random_seed_list,
    run_script,
    write_results,
)
from ppl_ssvae import data
from ppl_ssvae.evaluation.baselines import fit_labelled_only
from ppl_ssvae.training import fit

# The weight of each model's labelled term: M2's alpha, the latent models' lambda.
WEIGHT = {"m2": "alpha", "latent": "lam", "latent-simplified": "lam"}
# The latent models at their best lambda of Table 1, the same at every budget.
LATENT_LAMBDAS = {"latent": [0.5], "latent-simplified": [0.001]}
BUDGETS = {
    "smoke": {"epochs": 1, "vae_epochs": 1, "baseline_epochs": 1, "seeds": [0],
              "weights": {"m2": [0.1], **LATENT_LAMBDAS}},
    "cpu": {"epochs": 30, "vae_epochs": 30, "baseline_epochs": 300, "seeds": [0, 1, 2],
            "weights": {"m2": [0.1, 1000.0], **LATENT_LAMBDAS}},
    "paper": {"epochs": 500, "vae_epochs": 500, "baseline_epochs": 1000, "seeds": [0, 1, 2],
              "weights": {"m2": [0.1, 1.0, 1000.0], **LATENT_LAMBDAS}},
}  # fmt: skip
MODEL, FIT = JURASINSKI_MODEL, JURASINSKI_FIT  # App. B
LABELS = 100
# The VAE's decoder is an MLP; M2's and the full latent model's are label-conditioned
# trunks whose z-path has the same first layer under another name. Every other shared
# weight has the same name (the simplified model's decoder is the VAE's MLP).
RENAMED = {"p_x.trunk.0.weight": "p_x.trunk.layers.0.weight",
           "p_x.trunk.0.bias": "p_x.trunk.layers.0.bias"}  # fmt: skip


def main(argv: list[str] | None = None) -> Path:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=BUDGETS, default="cpu")
    parser.add_argument("--models", type=comma_list(_model), default=list(WEIGHT),
                        help=f"from {', '.join(WEIGHT)} [all]")  # fmt: skip
    parser.add_argument("--alpha", type=comma_list(non_negative_float), help="M2's [the budget's]")
    parser.add_argument("--lam", type=comma_list(positive_float),
                        help="the latent models' lambda [the budget's]")  # fmt: skip
    parser.add_argument("--seeds", type=random_seed_list, help="[the budget's]")
    parser.add_argument(
        "--epochs", type=positive_int, help="the models' and the VAE's [the budget's]"
    )
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--data-dir", help="where a user-supplied dataset lives")
    add_results_arguments(parser, "named after the script and dataset")
    args = parser.parse_args(argv)
    results_name = args.name or "m2_pretrained_vae"
    budget = budget_with(BUDGETS[args.budget], args, ("seeds",))
    given = {"alpha": args.alpha, "lam": args.lam}
    for option, values in given.items():
        if values and not any(WEIGHT[m] == option for m in args.models):
            users = ", ".join(m for m in WEIGHT if WEIGHT[m] == option)
            parser.error(
                f"--{option} is for {users}, which --models leaves out: add it or drop --{option}"
            )
    budget["weights"] = {m: given[WEIGHT[m]] or budget["weights"][m] for m in args.models}
    if args.epochs is not None:
        budget["epochs"] = budget["vae_epochs"] = args.epochs

    # Taken before any work, so an earlier run's folder is refused before it is computed.
    claim_results(results_name, args.results_dir)
    dataset = data.load(args.dataset, data_dir=args.data_dir)
    rows = [row for seed in budget["seeds"] for row in _seed_rows(dataset, seed, budget)]
    metrics = ["test_accuracy", "test_accuracy_last", "majority_share_last", "y_effect_last",
               "cpu_seconds"]  # fmt: skip
    summary = mean_and_sd(rows, ("model", "method", "weight"), metrics)
    config = {"args": vars(args), "budget": budget, "model": MODEL, "fit": FIT,
              "labels": LABELS, "copied": "every VAE weight, p_x.trunk.0 as p_x.trunk.layers.0 "
              "where the model's decoder is label-conditioned"}  # fmt: skip
    out = write_results(results_name, rows, config, args.results_dir, summary)
    print((out / "results.md").read_text())
    return out


def _model(name: str) -> str:
    if name not in WEIGHT:
        raise argparse.ArgumentTypeError(f"unknown model {name!r}; choose from {', '.join(WEIGHT)}")
    return name


def _seed_rows(dataset: Any, seed: int, budget: dict[str, Any]) -> list[dict[str, Any]]:
    """One seed's rows: the baseline, then every model and weight from the VAE and from
    scratch. The VAE is trained once and its CPU time added to every ``from VAE`` row."""
    split = data.semi_supervised_split(dataset, labels=LABELS, seed=seed)
    sizes = {"input_dim": split.input_dim, "num_classes": split.num_classes, **MODEL}
    start = time.process_time()
    vae = build_seeded("m1", seed, **sizes)
    fit(vae, split, epochs=budget["vae_epochs"], seed=seed, progress=False, **FIT)
    vae_seconds = time.process_time() - start
    start = time.process_time()
    baseline = build_seeded("m2", seed, **sizes)
    result = fit_labelled_only(baseline, split, epochs=budget["baseline_epochs"], seed=seed)
    rows = [_row("labelled-only", "m2", None, seed, result, baseline, split, start)]
    for name, weights in budget["weights"].items():
        for weight in weights:
            for method in ("from VAE", "from scratch"):
                start = time.process_time()
                model = build_seeded(name, seed, **{WEIGHT[name]: weight}, **sizes)
                if method == "from VAE":
                    copy_vae_weights(vae, model)
                result = fit(model, split, epochs=budget["epochs"], seed=seed, progress=False,
                             **FIT)  # fmt: skip
                row = _row(method, name, weight, seed, result, model, split, start)
                row["cpu_seconds"] += vae_seconds if method == "from VAE" else 0.0
                rows.append(row)
    return rows


def copy_vae_weights(vae: torch.nn.Module, model: torch.nn.Module) -> int:
    """Copy every weight of the VAE into ``model`` (M2 or a latent model; the decoder's
    first layer renamed where the model's decoder is label-conditioned); returns how many
    tensors were copied. Refuses a VAE weight the model has no place for."""
    target = model.state_dict()
    copied = {}
    for name, tensor in vae.state_dict().items():
        if name == "prior":  # the VAE's unused class prior; the model keeps its own
            continue
        to = name if name in target else RENAMED.get(name, name)
        if to not in target or target[to].shape != tensor.shape:
            raise ValueError(f"the model has no weight {to} of shape {tuple(tensor.shape)}")
        copied[to] = tensor
    model.load_state_dict({**target, **copied})
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
    method: str,
    model_name: str,
    weight: float | None,
    seed: int,
    result: Any,
    model: Any,
    split: Any,
    start: float,
) -> dict[str, Any]:
    best, last = result.best or result.history[-1], result.history[-1]
    predicted = model.predict(split.x_test)
    share = torch.bincount(predicted, minlength=split.num_classes).max().item() / len(predicted)
    generative = method != "labelled-only"  # the baseline's decoder is untrained
    return {
        "model": model_name,
        "method": method,
        "weight": "" if weight is None else f"{WEIGHT[model_name]} {weight:g}",
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
