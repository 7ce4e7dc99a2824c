"""The recurrent pi-VAE on multichannel sequences: SS vs ES classification (Berkhahn et al.
sec 3.3, Table 10; App. A.3, Table 15).

    python -m experiments.pi_vae_sequences --budget cpu
    python -m experiments.pi_vae_sequences --budget cpu --labels 1000
    python -m experiments.pi_vae_sequences --budget paper --dataset uci-har --data-dir DIR --labels 100
    python -m experiments.pi_vae_sequences --budget cpu --net rnn-steps   # a z per time step

The LSTM encoder and decoder of Table 15 (dense 40 -> LSTM 40 -> dense 30 along the
feature axis, z of size 2) with a Gaussian likelihood and a learnt scale, since the
signals are real-valued. As in sec 3.1.1, SS trains on every training window with the
labels of ``--labels`` of them (1:1 labelled/unlabelled batches) and ES, its supervised
sibling, on the labelled windows alone; the pi-VAE's RMSprop (rho 0.9) and App. A.3's lr
of 1e-3. Accuracy and log loss are those of the best-validation epoch (a labelled validation
set taken from the training windows, for model selection only). The default data set is
the synthetic ``sequences`` stand-in (5 classes, 4 channels x 48 steps); ``--dataset
uci-har --data-dir DIR`` runs the paper's data (6 activities, 9 inertial channels x 128 steps) for
users who have the files. A label count that the classes cannot share equally is rounded
down (100 -> 96 for UCI-HAR's six activities). Budgets: ``smoke`` (1 epoch each), ``cpu``
(SS 50, ES 500 epochs, ~4 CPU-minutes on the synthetic set: ES sees one batch per epoch
at 100 labels) and ``paper`` (sec 3.1.1's 10 / 20 epochs; none are given for UCI-HAR).
``--net rnn-steps`` is Table 15 as it lists the layers: a latent of ``--z-dim`` and class
logits per time step (the class of the sequence from the logits averaged over steps).
Writes results/pi_vae_<dataset>_<labels>_<net>/ (results.md, results.csv, config.json,
curve.png: test accuracy against CPU-minutes).
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
    labels_or_all,
    paper_fit_arguments,
    plot_curves,
    positive_float,
    positive_int,
    random_seed,
    run_script,
    selected_epoch_columns,
    whole_labels,
    write_results,
)
from experiments.pi_vae_fashion_mnist import labelled_only
from ppl_ssvae import data
from ppl_ssvae.models.pi_vae import PiVAE
from ppl_ssvae.training import FitResult, fit

# Epochs of (SS, ES) per budget. ES on 100 labels is one step per epoch, hence its many
# epochs on the cpu budget; SS is ~25 steps (~3 CPU-s) per epoch on the synthetic set.
BUDGETS = {"smoke": (1, 1), "cpu": (50, 500), "paper": (10, 20)}
# App. A.3 trains the RNN with lr 1e-3, not the 5e-4 of the MNIST models (A.1-A.2).
LR = 1e-3


def rnn_fit_arguments() -> dict:
    """The paper's fit settings for the sequence pi-VAE (App. A.3)."""
    return {**paper_fit_arguments(PiVAE), "lr": LR}


def run(
    variant: str,
    split: data.SemiSupervisedData,
    epochs: int,
    z_dim: int,
    seed: int,
    max_minutes: float | None,
    net: str = "rnn",
) -> tuple[FitResult, float]:
    """Train one Table 15 pi-VAE variant; returns its history and CPU-minutes."""
    model = build_seeded(
        "pi-vae",
        seed,
        input_dim=split.input_dim,
        num_classes=split.num_classes,
        variant=variant,
        net=net,
        z_dim=z_dim,
        sequence_channels=split.extra["sequence_channels"],
        likelihood="gaussian" if split.support == "real" else "bernoulli",
    )
    start = time.process_time()
    result = fit(
        model,
        split,
        epochs=epochs,
        **rnn_fit_arguments(),
        seed=seed,
        max_minutes=max_minutes,
        progress=False,
    )
    return result, (time.process_time() - start) / 60


def main(argv: list[str] | None = None) -> Path:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=BUDGETS, default="cpu")
    parser.add_argument(
        "--labels", type=labels_or_all, default="100", help="number of labels, or 'all'"
    )
    parser.add_argument("--z-dim", type=positive_int, default=2,
                        help="latent size, per step with rnn-steps (2 in Table 15)")  # fmt: skip
    parser.add_argument("--net", choices=("rnn", "rnn-steps"), default="rnn",
                        help="rnn: one z per sequence; rnn-steps: Table 15 as listed, a z and "
                        "class logits per time step")  # fmt: skip
    parser.add_argument("--max-minutes", type=positive_float, help="wall-clock cap per run")
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="sequences", help="sequences or uci-har")
    add_results_arguments(parser, "named after the script and dataset")
    args = parser.parse_args(argv)
    results_name = (
        args.name
        or f"pi_vae_{args.dataset.replace('-', '_')}_{args.labels}_{args.net.replace('-', '_')}"
    )

    dataset = data.load(args.dataset, args.data_dir)
    if "sequence_channels" not in dataset.extra:
        parser.error(f"{args.dataset} is not a sequence dataset (no extra['sequence_channels'])")
    # Taken before any work, so an earlier run's folder is refused before it is computed.
    claim_results(results_name, args.results_dir)
    if args.labels == "all":
        split = data.semi_supervised_split(dataset, label_fraction=1.0, seed=args.seed)
    else:
        labels = whole_labels(int(args.labels), dataset.num_classes)
        split = data.semi_supervised_split(dataset, labels=labels, seed=args.seed)
    ss_epochs, es_epochs = BUDGETS[args.budget]
    rows, curves = [], {}
    runs = {"ss": (split, ss_epochs), "es": (labelled_only(split), es_epochs)}
    for variant, (train_split, epochs) in runs.items():
        result, cpu_minutes = run(
            variant, train_split, epochs, args.z_dim, args.seed, args.max_minutes, args.net
        )
        rows.append({
            "model": f"{variant.upper()}-{args.net}",
            **selected_epoch_columns(result, split, train_split),
            "cpu_minutes": cpu_minutes,
            "stopped": result.stopped,
        })  # fmt: skip
        curves[variant.upper()] = result

    out = write_results(results_name, rows, {"args": vars(args), "fit": {**PiVAE.fit_defaults, **rnn_fit_arguments()}},
                        args.results_dir)  # fmt: skip
    plot_curves(out / "curve.png", curves)
    print((out / "results.md").read_text())
    return out


if __name__ == "__main__":
    run_script(main)
