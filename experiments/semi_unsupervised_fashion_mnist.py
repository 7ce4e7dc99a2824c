"""Semi-unsupervised and unsupervised Fashion-MNIST (Willetts et al. sec 6, Tables 1-2).

    python -m experiments.semi_unsupervised_fashion_mnist --budget cpu
    python -m experiments.semi_unsupervised_fashion_mnist --budget cpu --models gmdgm --unsupervised

Semi-unsupervised protocol (sec 6.1): classes 0-4 lose every label, 2% of the labels of
classes 5-9 are kept, N_aug = 20 extra classes (|y| = 30), the class prior of eq. 34-35,
only the pixels with training std > 0.1, dynamic binarisation, |z| = 200 (|a| = 100 for the
auxiliary models), 100 labelled + 100 unlabelled rows per batch (App. B). With
``--unsupervised`` the same models also run with no label at all (``--labels 0``, uniform
prior over |y| = 30; Table 2). Evaluation is cluster-and-label accuracy with the majority
mapping, overall and on visible / hidden classes (sec 6.3), at the best-validation epoch.

Training settings are those of the authors' released code rather than the library's
model defaults: alpha = 1.1 on the batch-mean log q(y|x) (our per-labelled-row alpha is the
same number, since labelled and unlabelled halves are equal), ReLU, output layers drawn from
N(0, 0.001^2) and the other kernels Glorot-normal (``init_layers="heads"``), one z sample.

Budgets: ``smoke`` (1 epoch, to check the script runs), ``cpu`` (at most 60 CPU-minutes per
model, Adam 1e-3 so that the ~6 affordable epochs move), ``paper`` (up to 2000 epochs at
the paper's Adam 3e-4). Each model is one run directory in ``--runs-dir`` (its ``RunSpec`` is
the one ``ppl-ssvae train`` would build from the same settings); the
table, the curves of accuracy against CPU-minutes and each run's confusion matrix and
z-unit activity go to results/semi_unsupervised_<dataset>/ (or ``--name``) via
``report_runs``. ``--precision bf16`` trains under bfloat16 autocast, which on this
project's AMX CPU halves the CPU time of a step (``fit(precision=...)``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments import report_runs
from experiments.common import (
    ScriptParser,
    claim_results,
    folder_name,
    name_list,
    positive_int,
    positive_int_list,
    random_seed,
    run_script,
)
from ppl_ssvae.runs import RunSpec
from ppl_ssvae.training import PRECISIONS

# Per budget: epochs, learning rate, CPU-minute cap per model.
BUDGETS = {
    "smoke": {"epochs": 1, "lr": 1e-3, "max_cpu_minutes": None},
    "cpu": {"epochs": 200, "lr": 1e-3, "max_cpu_minutes": 60.0},
    "paper": {"epochs": 2000, "lr": 3e-4, "max_cpu_minutes": None},
}
# Willetts et al. App. B and their released code.
PROTOCOL = {
    "data": {"std_threshold": 0.1},
    "model": {"extra_classes": 20,
              "options": {"activation": "relu", "init_std": 0.001, "init_layers": "heads"}},
    "fit": {"binarize": True, "labelled_share": "1:1", "batch_size": 200, "lr_decay": 1.0},
}  # fmt: skip
SEMI_UNSUPERVISED = {"label_fraction": 0.02, "hidden_classes": "0,1,2,3,4"}
MODELS = ("m2", "adgm", "gmdgm", "agmdgm")


def run_spec(model: str, budget: str, unsupervised: bool, args: argparse.Namespace) -> RunSpec:
    """The run spec of one model's run (the same as ``ppl-ssvae train --config``'s)."""
    b = BUDGETS[budget]
    data = {**PROTOCOL["data"], "dataset": args.dataset, "data_dir": args.data_dir,
            **({"labels": 0} if unsupervised else SEMI_UNSUPERVISED)}  # fmt: skip
    options = {**PROTOCOL["model"]["options"], "z_dim": args.z_dim, "hidden": tuple(args.hidden),
               **({} if unsupervised else {"alpha": 1.1})}  # fmt: skip
    fit = {**PROTOCOL["fit"], "epochs": b["epochs"], "lr": b["lr"], "seed": args.seed,
           "precision": args.precision, "max_cpu_minutes": b["max_cpu_minutes"],
           "progress": False}  # fmt: skip
    model_spec = {"name": model, "extra_classes": PROTOCOL["model"]["extra_classes"],
                  "options": options}  # fmt: skip
    return RunSpec.from_dict({"data": data, "model": model_spec, "fit": fit})


def main(argv: list[str] | None = None) -> Path:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=BUDGETS, default="cpu")
    parser.add_argument("--models", type=name_list, default=",".join(MODELS),
                        help=f"comma-separated, from {', '.join(MODELS)} [all]")  # fmt: skip
    parser.add_argument("--unsupervised", action="store_true",
                        help="also train each model with no labels (|y| = 30, uniform prior)")  # fmt: skip
    parser.add_argument("--z-dim", type=positive_int, default=200)
    parser.add_argument("--hidden", type=positive_int_list, default="500,500",
                        help="hidden widths [App. B: 500,500]")  # fmt: skip
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="training-step precision; bf16 autocast halves the CPU time of a step "
                        "on a CPU with AMX")  # fmt: skip
    parser.add_argument("--name", type=folder_name,
                        help="results folder [semi_unsupervised_<dataset>]")  # fmt: skip
    parser.add_argument("--dataset", default="fashion-mnist", help="override for quick checks")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--runs-dir", default="runs/semi_unsupervised")
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args(argv)
    chosen = args.models
    unknown = sorted(set(chosen) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")

    name = args.name or f"semi_unsupervised_{args.dataset.replace('-', '_')}"
    # Taken before any work, so an earlier run's folder is refused before it is computed.
    claim_results(name, args.results_dir)
    runs = []
    for unsupervised in (False, True) if args.unsupervised else (False,):
        for model in chosen:
            run = Path(args.runs_dir) / f"{model}-{'us' if unsupervised else 'su'}-{args.budget}"
            run_spec(model, args.budget, unsupervised, args).train(run)
            runs.append(str(run))
    out = report_runs.main([*runs, "--name", name, "--results-dir", args.results_dir])
    print((out / "results.md").read_text())
    return out


if __name__ == "__main__":
    run_script(main)
