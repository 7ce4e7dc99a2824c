"""The pi-VAE on Fashion-MNIST: SS vs ES classification (Berkhahn et al. Tables 7 and 8) and
class-conditional generation grids (Figs 2, 3).

    python -m experiments.pi_vae_fashion_mnist --budget cpu --labels 1000 --net dense
    python -m experiments.pi_vae_fashion_mnist --budget cpu --labels all --net dense
    python -m experiments.pi_vae_fashion_mnist --budget cpu --labels 1000 --net cnn --max-minutes 30

As in sec 3.1.1, SS trains on every training image with the labels of ``--labels`` of them
(1:1 labelled/unlabelled batches, sec 2.3) for 10 epochs, and ES on the labelled images
alone for 20 epochs; both use App. A's RMSprop (lr 5e-4, rho 0.9 as Keras 2.2 defines it: see
``PiVAE.fit_defaults``) and grey levels.
Accuracy and log loss are those of the best-validation epoch (a labelled validation set of
10,000 training images, for model selection only), and ``last_*`` those of the last epoch
(the paper's "fully converged" models). ``--seeds 0,1,2`` repeats everything on a new
labelled subset per seed and adds mean and sd, as the paper's repeats;
``--validation-size 0`` trains on all 60,000 training images, as the paper does;
``--merge`` puts the folders of earlier runs (one process per seed, say) into one table. The SS
model's decoder then draws a grid of images per class with pi set to that class.
Budgets: ``smoke`` (1 epoch each), ``cpu`` and ``paper`` (the paper's 10 / 20 epochs);
``--ss-epochs`` / ``--es-epochs`` override them (to check convergence: at 1000 labels SS
plateaus from epoch 3, results/pi_vae_fashion_mnist_1000_dense_30epochs).
``--matched-steps`` gives ES as many optimiser steps as SS takes. An ES epoch is a pass over
the labelled images alone, so at 1000 labels the paper's 20 ES epochs are ~100 steps against
SS's ~5000, and "SS beats ES" is then partly "SS trained longer". With it, an ES epoch passes
over as many copies of the labelled images as make an SS epoch's steps, and ES trains as many
epochs as SS: both take the same steps and are evaluated, and selected, at the same step
counts (not after every one of ES's thousands of short passes). The ``steps`` column counts
each run's optimiser steps, ``es_copies`` the copies in an ES epoch.
``--precision bf16`` trains under bfloat16 autocast (about twice as fast on CPUs with AMX).
Writes results/pi_vae_fashion_mnist_<labels>_<net>/ (or ``--name``).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from experiments.common import (
    ScriptParser,
    build_seeded,
    claim_results,
    folder_name,
    labels_or_all,
    mean_and_sd,
    non_negative_float,
    non_negative_int,
    paper_fit_arguments,
    plot_curves,
    positive_float,
    positive_int,
    random_seed_list,
    read_results,
    run_script,
    selected_epoch_columns,
    write_results,
)
from ppl_ssvae import data
from ppl_ssvae.data import SemiSupervisedBatches
from ppl_ssvae.evaluation.inspect import generation_grid
from ppl_ssvae.models.pi_vae import PiVAE
from ppl_ssvae.training import PRECISIONS, fit

# Epochs of (SS, ES) per budget; sec 3.1.1 trains SS 10 and ES 20 epochs.
BUDGETS = {"smoke": (1, 1), "cpu": (10, 20), "paper": (10, 20)}


# Seeds are averaged per model and alpha, so merged folders of an alpha sweep stay apart.
SUMMARY_BY = ("model", "alpha")
SUMMARY_COLUMNS = ["test_accuracy", "test_log_loss", "last_test_accuracy", "last_test_log_loss"]
# Figures of a run's first seed, carried over by --merge from the first folder.
FIGURES = ("curve.png", "generation.png")


def results_name(args: argparse.Namespace) -> str:
    default = f"pi_vae_{args.dataset.replace('-', '_')}_{args.labels}_{args.net}"
    return args.name or default + ("_matched_steps" if args.matched_steps else "")


def merge(args: argparse.Namespace) -> Path:
    """One table (and mean and sd) from the folders of earlier runs, e.g. seeds run in
    parallel; the curve and generation grid are the first folder's."""
    folders = [Path(f) for f in args.merge]
    rows = [row for folder in folders for row in read_results(folder)]
    several = len({(r["model"], r["alpha"]) for r in rows}) < len(rows)
    summary = mean_and_sd(rows, SUMMARY_BY, SUMMARY_COLUMNS) if several else None
    config = {"args": vars(args), "merged": [str(f) for f in folders]}
    out = write_results(results_name(args), rows, config, args.results_dir, summary)
    for figure in FIGURES:
        if (folders[0] / figure).is_file():
            shutil.copy(folders[0] / figure, out / figure)
    print((out / "results.md").read_text())
    return out


def labelled_only(split: data.SemiSupervisedData) -> data.SemiSupervisedData:
    """The same split without its unlabelled rows: what the supervised ES sibling sees."""
    keep = split.labelled_mask
    return data.SemiSupervisedData(
        **{**vars(split), "x_train": split.x_train[keep], "y_train": split.y_train[keep],
           "y_train_true": split.y_train_true[keep]}
    )  # fmt: skip


def repeated(split: data.SemiSupervisedData, copies: int) -> data.SemiSupervisedData:
    """``split`` with its training rows ``copies`` times over: an epoch of it is ``copies``
    passes, each row shuffled among all copies."""
    rows = {key: getattr(split, key) for key in ("x_train", "y_train", "y_train_true")}
    tiled = {key: t.repeat(copies, *[1] * (t.dim() - 1)) for key, t in rows.items()}
    return data.SemiSupervisedData(**{**vars(split), **tiled})


def steps_per_epoch(split: data.SemiSupervisedData, batch_size: int) -> int:
    """Optimiser steps in one epoch of ``split`` under the paper's batch composition."""
    share = PiVAE.fit_defaults["labelled_share"]
    return len(SemiSupervisedBatches(split.x_train, split.y_train, batch_size, share))


def run(
    variant: str, split, net: str, epochs: int, seed: int, max_minutes: float | None,
    alpha: float | None = None, batch_size: int = 200, precision: str = "fp32",
):  # fmt: skip
    extra = {} if alpha is None else {"alpha": alpha}
    model = build_seeded(
        "pi-vae",
        seed,
        input_dim=split.input_dim,
        num_classes=split.num_classes,
        variant=variant,
        net=net,
        image_shape=(1, *split.image_shape),
        **extra,
    )
    start = time.process_time()
    result = fit(
        model,
        split,
        epochs=epochs,
        batch_size=batch_size,
        **paper_fit_arguments(PiVAE),
        seed=seed,
        max_minutes=max_minutes,
        precision=precision,
        progress=False,
    )
    return model, result, (time.process_time() - start) / 60


def main(argv: list[str] | None = None) -> Path:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.matched_steps and args.es_epochs is not None:
        parser.error("--matched-steps chooses ES's epochs; leave out --es-epochs")
    if args.merge:
        return merge(args)
    # Taken before any work, so an earlier run's folder is refused before it is computed.
    claim_results(results_name(args), args.results_dir)

    dataset = data.load(args.dataset, args.data_dir)
    ss_epochs, es_epochs = BUDGETS[args.budget]
    ss_epochs = ss_epochs if args.ss_epochs is None else args.ss_epochs
    es_epochs = es_epochs if args.es_epochs is None else args.es_epochs
    seeds = args.seeds
    rows, curves = [], {}
    for seed in seeds:
        seed_rows, results, split, ss_model = _seed_rows(args, dataset, seed, ss_epochs, es_epochs)
        rows += seed_rows
        if seed == seeds[0]:
            curves, first_model, grid_split = results, ss_model, split

    summary = mean_and_sd(rows, SUMMARY_BY, SUMMARY_COLUMNS) if len(seeds) > 1 else None
    out = write_results(results_name(args), rows, {"args": vars(args), "fit": PiVAE.fit_defaults},
                        args.results_dir, summary)  # fmt: skip
    plot_curves(out / "curve.png", curves)
    generation_grid(first_model, 10, out / "generation.png",
                    image_shape=tuple(grid_split.image_shape),
                    class_names=grid_split.class_names, seed=seeds[0])  # fmt: skip
    print((out / "results.md").read_text())
    return out


def _parser() -> ScriptParser:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=BUDGETS, default="cpu")
    parser.add_argument(
        "--labels", type=labels_or_all, default="1000", help="number of labels, or 'all'"
    )
    parser.add_argument("--net", choices=("dense", "cnn"), default="dense")
    parser.add_argument("--ss-epochs", type=positive_int, help="SS epochs [budget's]")
    parser.add_argument("--es-epochs", type=positive_int, help="ES epochs [budget's]")
    parser.add_argument("--matched-steps", action="store_true",
                        help="ES epochs chosen so that ES takes as many optimiser steps as SS")  # fmt: skip
    parser.add_argument("--max-minutes", type=positive_float, help="wall-clock cap per run")
    parser.add_argument("--alpha", type=non_negative_float, help="alpha of eq. 5 [model default]")
    parser.add_argument("--batch-size", type=positive_int, default=200,
                        help="rows per step, labelled + unlabelled (the paper does not say; "
                        "Keras's default is 32)")  # fmt: skip
    parser.add_argument("--validation-size", type=non_negative_int, default=None,
                        help="labelled validation rows carved from training [dataset's, 10,000 "
                        "for Fashion-MNIST]; 0 trains on all 60,000 as the paper, and the "
                        "best-validation columns then repeat the last epoch")  # fmt: skip
    parser.add_argument("--seeds", "--seed", type=random_seed_list, default="0",
                        help="comma-separated; each seed draws its own labelled subset and the "
                        "table adds mean and sd over them")  # fmt: skip
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="training-step precision; bf16 autocast is ~2x faster on AMX CPUs")  # fmt: skip
    parser.add_argument("--merge", nargs="+", default=None, metavar="FOLDER",
                        help="train nothing: put the results.csv of earlier runs of this script "
                        "into one table with mean and sd per model and alpha (e.g. one process "
                        "per seed)")  # fmt: skip
    parser.add_argument("--name", type=folder_name,
                        help="results folder [pi_vae_<dataset>_<labels>_<net>]")  # fmt: skip
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="fashion-mnist", help="override for quick checks")
    parser.add_argument("--results-dir", default="results")
    return parser


def _seed_rows(
    args: argparse.Namespace, dataset: Any, seed: int, ss_epochs: int, es_epochs: int
) -> tuple[list[dict[str, Any]], dict[str, Any], Any, Any]:
    """One seed's SS and ES rows, their fit results by variant, the SS split and model."""
    kept_labels = {"label_fraction": 1.0} if args.labels == "all" else {"labels": int(args.labels)}
    # Each seed draws its own labelled subset, as the paper's repeats over 10 subsets.
    split = data.semi_supervised_split(
        dataset, **kept_labels, seed=seed, validation_size=args.validation_size
    )
    es_split, copies = labelled_only(split), 1
    if args.matched_steps:
        rows_per_epoch = steps_per_epoch(split, args.batch_size) * args.batch_size
        copies = -(-rows_per_epoch // len(es_split.x_train))
        es_split, es_epochs = repeated(es_split, copies), ss_epochs
    rows, results, ss_model = [], {}, None
    runs = {"ss": (split, ss_epochs), "es": (es_split, es_epochs)}
    for variant, (train_split, epochs) in runs.items():
        model, result, cpu_minutes = run(
            variant, train_split, args.net, epochs, seed, args.max_minutes, args.alpha,
            args.batch_size, args.precision,
        )  # fmt: skip
        last = result.history[-1]
        rows.append({
            "model": f"{variant.upper()}-{args.net}",
            "seed": seed,
            "alpha": model.config.alpha,
            "batch_size": args.batch_size,
            "steps": len(result.history) * steps_per_epoch(train_split, args.batch_size),
            "es_copies": copies if variant == "es" else "",
            **selected_epoch_columns(result, split, train_split),
            "last_test_accuracy": last["test_accuracy"],
            "last_test_log_loss": last["test_log_loss"],
            "cpu_minutes": cpu_minutes,
            "stopped": result.stopped,
        })  # fmt: skip
        results[variant.upper()] = result
        ss_model = model if variant == "ss" else ss_model
    return rows, results, split, ss_model


if __name__ == "__main__":
    run_script(main)
