"""M2 on Fashion-MNIST with 3000 labels (Kingma et al. 2014; Willetts et al. Table 2 setting).

    python -m experiments.m2_fashion_mnist --budget cpu

Budgets: ``smoke`` (1 epoch, to check the script runs),
``cpu`` (30 epochs, the acceptance budget on 2 CPU cores), ``paper`` (300 epochs).
Writes results/m2_fashion_mnist/ with results.md, results.csv, curve.png, config.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from experiments.common import (
    ScriptParser,
    add_results_arguments,
    build_seeded,
    claim_results,
    plot_curves,
    positive_int,
    random_seed,
    run_script,
    write_results,
)
from ppl_ssvae import data
from ppl_ssvae.training import fit

BUDGETS = {"smoke": 1, "cpu": 30, "paper": 300}
# The settings of `ppl-ssvae train --model m2` that this experiment reports.
SETTINGS = {"labels": 3000, "batch_size": 200, "lr": 1e-3, "lr_decay": 0.93, "seed": 0}


def main(argv: list[str] | None = None) -> Path:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=BUDGETS, default="cpu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="fashion-mnist", help="override for quick checks")
    add_results_arguments(parser, "named after the script and dataset")
    parser.add_argument("--labels", type=positive_int, default=SETTINGS["labels"])
    parser.add_argument("--seed", type=random_seed, default=SETTINGS["seed"])
    args = parser.parse_args(argv)
    results_name = args.name or (
        "m2_fashion_mnist" if args.dataset == "fashion-mnist" else f"m2_{args.dataset}"
    )

    # Taken before any work, so an earlier run's folder is refused before it is computed.
    claim_results(results_name, args.results_dir)
    dataset = data.load(args.dataset, args.data_dir)
    split = data.semi_supervised_split(dataset, labels=args.labels, seed=args.seed)
    model = build_seeded("m2", args.seed, input_dim=split.input_dim, num_classes=split.num_classes)
    start = time.process_time()
    result = fit(
        model,
        split,
        epochs=BUDGETS[args.budget],
        batch_size=SETTINGS["batch_size"],
        lr=SETTINGS["lr"],
        lr_decay=SETTINGS["lr_decay"],
        seed=args.seed,
        progress=False,
    )
    best = result.best
    row = {
        "model": "M2",
        "labels": args.labels,
        "epochs": len(result.history),
        "best_epoch": best["epoch"],
        "val_accuracy": best["val_accuracy"],
        "test_accuracy": best["test_accuracy"],
        "cpu_minutes": (time.process_time() - start) / 60,
    }
    out = write_results(
        results_name, [row], {"args": vars(args), "settings": SETTINGS}, args.results_dir
    )
    plot_curves(out / "curve.png", {"M2": result})
    print((out / "results.md").read_text())
    return out


if __name__ == "__main__":
    run_script(main)
