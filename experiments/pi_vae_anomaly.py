"""Label-assisted anomaly detection with the pi-VAE: SS vs EU (Berkhahn et al. sec 3.2.3, Table 9).

    python -m experiments.pi_vae_anomaly --budget cpu
    python -m experiments.pi_vae_anomaly --budget cpu --classes 7 --label-fractions 0.01,0.1,0.5,1
    python -m experiments.pi_vae_anomaly --budget paper --seeds 0,1,2
    python -m experiments.pi_vae_anomaly --budget paper --dataset uci-har --data-dir DIR \
        --net rnn --classes WALKING                    # Table 11

For each held-out ("anomalous") class: train on the nine normal classes, SS with the given
fraction of their labels (1:1 labelled/unlabelled batches) and EU without labels; score
the whole test set by the log reconstruction probability (An & Cho, L = 10 samples of z)
and report the ROC AUC of "lower score = anomalous" per class. Several label fractions
give the sweep of Table 6; ``--steps N`` trains every point the same number of optimiser
steps (an epoch's steps depend on the labelled share), ``--net cnn`` uses the paper's
CNN (Table 14) and ``--net rnn`` its recurrent networks (Table 15) on a sequence data set:
Table 11 is UCI-HAR with walking held out, SS against the unsupervised sibling (the
table's "ES" row must be EU: ES has no decoder to score with), App. A.3's lr of 1e-3 and
a Gaussian likelihood for real-valued signals, as in ``pi_vae_sequences``. Budgets: ``smoke`` (1 epoch), ``cpu`` (3 epochs per model),
``paper`` (10 epochs, sec 3.1.1). Several ``--seeds`` (the paper reruns each case five
times) give mean ± sd per class, SS and EU compared on the means; ``--merge`` summarises
folders written by earlier runs, e.g. one process per seed. Writes
results/pi_vae_anomaly_<dataset>/ (or ``--name``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from experiments.common import (
    ScriptParser,
    build_seeded,
    claim_results,
    folder_name,
    mean_and_sd,
    name_list,
    non_negative_float,
    paper_fit_arguments,
    positive_int,
    random_seed_list,
    read_results,
    run_script,
    unit_fraction_list,
    write_results,
)
from experiments.pi_vae_sequences import rnn_fit_arguments
from ppl_ssvae import data
from ppl_ssvae.data import SemiSupervisedBatches
from ppl_ssvae.evaluation.anomaly import (
    anomaly_auc,
    anomaly_split,
    class_id,
    reconstruction_log_prob,
)
from ppl_ssvae.models.pi_vae import IMAGE_NETS, SEQUENCE_NETS, PiVAE
from ppl_ssvae.training import fit

BUDGETS = {"smoke": 1, "cpu": 3, "paper": 10}
BATCH_SIZE = 200  # the paper does not say; fit's default


def epochs_for(normal, epochs: int, steps: int | None) -> tuple[int, int]:
    """``(epochs, optimiser steps)`` of a run on ``normal``: ``epochs``, or with ``steps``
    the fewest whole epochs that take at least that many steps (Table 6's points then train
    alike: with 1:1 batches an epoch is ~535 steps at 1% labels and ~6 at 99%)."""
    share = PiVAE.fit_defaults["labelled_share"]
    per_epoch = len(SemiSupervisedBatches(normal.x_train, normal.y_train, BATCH_SIZE, share))
    if steps is not None:
        epochs = -(-steps // per_epoch)
    return epochs, epochs * per_epoch


def net_options(net: str, dataset: data.Dataset) -> dict:
    """The pi-VAE options that ``net`` needs on ``dataset``: an image net its image shape, a
    sequence net its channels and a likelihood for the data's support."""
    if net in IMAGE_NETS:
        return {"net": net, "image_shape": (1, *dataset.image_shape)}
    if net in SEQUENCE_NETS:
        likelihood = "gaussian" if dataset.support == "real" else "bernoulli"
        channels = dataset.extra["sequence_channels"]
        return {"net": net, "sequence_channels": channels, "likelihood": likelihood}
    return {"net": net}


def fit_arguments(net: str) -> dict:
    """The paper's fit settings for ``net``: App. A.3 trains the RNN at lr 1e-3."""
    return rnn_fit_arguments() if net in SEQUENCE_NETS else paper_fit_arguments(PiVAE)


def missing_for(net: str, dataset: data.Dataset) -> str | None:
    """What ``dataset`` lacks that ``net`` needs, or None."""
    if net in SEQUENCE_NETS and "sequence_channels" not in dataset.extra:
        return "sequence channels"
    if net in IMAGE_NETS and dataset.image_shape is None:
        return "an image shape"
    return None


def train_and_score(
    variant: str, split, normal, epochs: int, seed: int, samples: int, alpha: float | None = None,
    net: str = "dense",
):  # fmt: skip
    """AUC of one pi-VAE variant trained on ``normal`` (a split of the normal classes)."""
    options = {"variant": variant, **net_options(net, normal)}
    if alpha is not None and variant != "eu":  # EU has no pi layer to weight
        options["alpha"] = alpha
    model = build_seeded(
        "pi-vae", seed, input_dim=normal.input_dim, num_classes=normal.num_classes, **options
    )
    start = time.process_time()
    result = fit(
        model,
        normal,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        **fit_arguments(net),
        seed=seed,
        progress=False,
    )
    x, target = split.test_tensors(normal)
    auc = anomaly_auc(reconstruction_log_prob(model, x, samples=samples), target)
    return auc, result, (time.process_time() - start) / 60


def summarise(rows: list[dict]) -> tuple[list[dict], int, int]:
    """Mean ± sd of both AUCs per (class, fraction) over seeds, with ``ss_at_least_eu``
    judged on the means (the paper's Table 9 compares 5-rerun means); and SS's count of
    wins, out of how many (class, fraction) pairs."""
    summary = mean_and_sd(rows, ("anomalous_class", "name", "label_fraction"), ["auc_ss", "auc_eu"])
    for row in summary:
        row["ss_at_least_eu"] = row["auc_ss_mean"] >= row["auc_eu_mean"]
    return summary, sum(r["ss_at_least_eu"] for r in summary), len(summary)


def read_rows(folder: Path) -> list[dict]:
    """The per-seed rows of an earlier run of this script (its results.csv), numbers parsed;
    rows written before the ``seed`` column existed take the seed from its config.json."""
    rows = read_results(folder)  # first: it names a folder that is not a results folder
    seed = json.loads((folder / "config.json").read_text())["args"].get("seed", 0)
    rows = [{"seed": seed, **row} for row in rows]
    for row in rows:
        # Floats even where a value prints as a whole number (an AUC of 1, a fraction of 1).
        for key in ("label_fraction", "alpha_ss", "auc_ss", "auc_eu",
                    "cpu_minutes_ss", "cpu_minutes_eu"):  # fmt: skip
            row[key] = float(row[key])
        row["ss_at_least_eu"] = row["auc_ss"] >= row["auc_eu"]
    return rows


def main(argv: list[str] | None = None) -> Path:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=BUDGETS, default="cpu")
    parser.add_argument(
        "--classes", type=name_list, help="anomalous classes, ids or names, e.g. 0,7 [all]"
    )
    parser.add_argument("--label-fractions", type=unit_fraction_list, default="1.0",
                        help="labelled fraction of the normal classes for SS, comma-separated")  # fmt: skip
    parser.add_argument(
        "--samples", type=positive_int, default=10, help="L, samples of z per score"
    )
    parser.add_argument(
        "--alpha", type=non_negative_float, help="SS's alpha of eq. 5 [model default]"
    )
    parser.add_argument("--net", choices=("dense", "cnn", *SEQUENCE_NETS), default="dense",
                        help="the pi-VAE's networks: App. A's dense, its CNN (Table 14) or, on "
                        "sequences, its RNN (Table 15; rnn-steps: a z per time step)")  # fmt: skip
    parser.add_argument("--steps", type=positive_int,
                        help="train every model this many optimiser steps (whole epochs, "
                        "rounded up) instead of the budget's epochs: Table 6's label sweep "
                        "with the same training at every point")  # fmt: skip
    parser.add_argument("--seeds", "--seed", type=random_seed_list, default="0",
                        help="comma-separated seeds; each draws its own labelled subset and "
                        "initialisation, and the summary gives mean ± sd over them")  # fmt: skip
    parser.add_argument("--merge", nargs="+", default=None, metavar="FOLDER",
                        help="train nothing: summarise the results.csv of earlier runs of this "
                        "script together (e.g. one process per seed)")  # fmt: skip
    parser.add_argument(
        "--name", type=folder_name, help="results folder [pi_vae_anomaly_<dataset>]"
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="fashion-mnist", help="override for quick checks")
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args(argv)
    name = args.name or f"pi_vae_anomaly_{args.dataset.replace('-', '_')}"
    if args.merge:
        rows = [row for folder in args.merge for row in read_rows(Path(folder))]
    else:
        dataset = data.load(args.dataset, args.data_dir)
        if missing := missing_for(args.net, dataset):
            parser.error(f"--net {args.net} needs {missing}, and {args.dataset} has none; use "
                         "--net rnn on sequences (uci-har), cnn on images, dense on either")  # fmt: skip
        # Taken before any work, so an earlier run's folder is refused before it is computed.
        claim_results(name, args.results_dir)
        rows = train_all(args, dataset)
    summary, wins, pairs = summarise(rows)
    config = {"args": vars(args), "fit": {**PiVAE.fit_defaults, **fit_arguments(args.net)}}
    out = write_results(name, rows, config, args.results_dir, summary)
    print((out / "results.md").read_text())
    seeds = sorted({r["seed"] for r in rows})
    print(f"SS >= EU on {wins} of {pairs} (class, fraction) pairs, on the mean AUC over "
          f"seeds {seeds}")  # fmt: skip
    return out


def train_all(args: argparse.Namespace, dataset: data.Dataset) -> list[dict]:
    """One row per (seed, anomalous class, label fraction): SS's and EU's AUC."""
    # Every class is checked before the first one trains, so a typo costs no run.
    classes = (
        range(dataset.num_classes)
        if args.classes is None
        else [class_id(dataset, c) for c in args.classes]
    )
    fractions = args.label_fractions
    epochs = BUDGETS[args.budget]
    rows = []
    for seed in args.seeds:
        for anomalous in classes:
            rows += train_one_class(args, dataset, anomalous, fractions, epochs, seed)
    return rows


def train_one_class(
    args: argparse.Namespace,
    dataset: data.Dataset,
    anomalous: int,
    fractions: list[float],
    epochs: int,
    seed: int,
) -> list[dict]:
    """EU once and SS per label fraction, with ``anomalous`` held out, for one seed."""
    split = anomaly_split(dataset, anomalous)
    unlabelled = data.semi_supervised_split(split.normal, labels=0, seed=seed)
    eu_epochs, eu_steps = epochs_for(unlabelled, epochs, args.steps)
    eu_auc, _, eu_minutes = train_and_score(
        "eu", split, unlabelled, eu_epochs, seed, args.samples, net=args.net
    )
    rows = []
    for fraction in fractions:
        normal = data.semi_supervised_split(split.normal, label_fraction=fraction, seed=seed)
        ss_epochs, ss_steps = epochs_for(normal, epochs, args.steps)
        ss_auc, _, ss_minutes = train_and_score(
            "ss", split, normal, ss_epochs, seed, args.samples, args.alpha, args.net
        )
        rows.append({
            "seed": seed,
            "anomalous_class": anomalous,
            "name": dataset.class_names[anomalous],
            "label_fraction": fraction,
            "alpha_ss": PiVAE.config_class.alpha if args.alpha is None else args.alpha,
            "auc_ss": ss_auc,
            "auc_eu": eu_auc,
            "ss_at_least_eu": ss_auc >= eu_auc,
            "net": args.net,
            "epochs_ss": ss_epochs,
            "steps_ss": ss_steps,
            "epochs_eu": eu_epochs,
            "steps_eu": eu_steps,
            "cpu_minutes_ss": ss_minutes,
            "cpu_minutes_eu": eu_minutes,
        })  # fmt: skip
        print(f"seed {seed}, class {anomalous} ({dataset.class_names[anomalous]}), fraction "
              f"{fraction}: AUC SS {ss_auc:.4f}, EU {eu_auc:.4f}", flush=True)  # fmt: skip
    return rows


if __name__ == "__main__":
    run_script(main)
