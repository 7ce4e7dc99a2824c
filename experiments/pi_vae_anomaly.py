"""Label-assisted anomaly detection with the pi-VAE: SS vs EU (Berkhahn et al. sec 3.2.3, Table 9).

    python experiments/pi_vae_anomaly.py --budget cpu
    python experiments/pi_vae_anomaly.py --budget cpu --classes 7 --label-fractions 0.01,0.1,0.5,1

For each held-out ("anomalous") class: train on the nine normal classes, SS with the given
fraction of their labels (1:1 labelled/unlabelled batches) and EU without labels; score
the whole test set by the log reconstruction probability (An & Cho, L = 10 samples of z)
and report the ROC AUC of "lower score = anomalous" per class. Several label fractions
give the sweep of Table 6. Budgets: ``smoke`` (1 epoch), ``cpu`` (3 epochs per model),
``paper`` (10 epochs, sec 3.1.1). Writes results/pi_vae_anomaly_<dataset>/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import paper_fit_arguments, write_results  # noqa: E402
from ppl_ssvae import data, models  # noqa: E402
from ppl_ssvae.anomaly import anomaly_auc, anomaly_split, reconstruction_log_prob  # noqa: E402
from ppl_ssvae.models.pi_vae import PiVAE  # noqa: E402
from ppl_ssvae.train import fit  # noqa: E402

BUDGETS = {"smoke": 1, "cpu": 3, "paper": 10}


def train_and_score(
    variant: str, split, normal, epochs: int, seed: int, samples: int, alpha: float | None = None
):
    """AUC of one pi-VAE variant trained on ``normal`` (a split of the normal classes)."""
    options = {"variant": variant}
    if alpha is not None and variant != "eu":  # EU has no pi layer to weight
        options["alpha"] = alpha
    model = models.build(
        "pi-vae", input_dim=normal.input_dim, num_classes=normal.num_classes, **options
    )
    start = time.process_time()
    result = fit(
        model,
        normal,
        epochs=epochs,
        **paper_fit_arguments(PiVAE),
        seed=seed,
        progress=False,
    )
    x, target = split.test_tensors(normal)
    auc = anomaly_auc(reconstruction_log_prob(model, x, samples=samples), target)
    return auc, result, (time.process_time() - start) / 60


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", choices=BUDGETS, default="cpu")
    parser.add_argument("--classes", default=None, help="anomalous classes, e.g. 0,7 [all]")
    parser.add_argument("--label-fractions", default="1.0",
                        help="labelled fraction of the normal classes for SS, comma-separated")  # fmt: skip
    parser.add_argument("--samples", type=int, default=10, help="L, samples of z per score")
    parser.add_argument(
        "--alpha", type=float, default=None, help="SS's alpha of eq. 5 [model default]"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="fashion-mnist", help="override for quick checks")
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args(argv)

    dataset = data.load(args.dataset, args.data_dir)
    classes = (
        range(dataset.num_classes)
        if args.classes is None
        else [int(c) for c in args.classes.split(",")]
    )
    fractions = [float(f) for f in args.label_fractions.split(",")]
    epochs = BUDGETS[args.budget]
    rows = []
    for anomalous in classes:
        split = anomaly_split(dataset, anomalous)
        unlabelled = data.semi_supervised_split(split.normal, labels=0, seed=args.seed)
        eu_auc, eu_result, eu_minutes = train_and_score(
            "eu", split, unlabelled, epochs, args.seed, args.samples
        )
        for fraction in fractions:
            normal = data.semi_supervised_split(split.normal, label_fraction=fraction,
                                                seed=args.seed)  # fmt: skip
            ss_auc, ss_result, ss_minutes = train_and_score(
                "ss", split, normal, epochs, args.seed, args.samples, args.alpha
            )
            rows.append({
                "anomalous_class": anomalous,
                "name": dataset.class_names[anomalous],
                "label_fraction": fraction,
                "alpha_ss": PiVAE.config_class.alpha if args.alpha is None else args.alpha,
                "auc_ss": ss_auc,
                "auc_eu": eu_auc,
                "ss_at_least_eu": ss_auc >= eu_auc,
                "epochs": epochs,
                "cpu_minutes_ss": ss_minutes,
                "cpu_minutes_eu": eu_minutes,
            })  # fmt: skip
            print(f"class {anomalous} ({dataset.class_names[anomalous]}), fraction {fraction}: "
                  f"AUC SS {ss_auc:.4f}, EU {eu_auc:.4f}", flush=True)  # fmt: skip

    name = f"pi_vae_anomaly_{args.dataset.replace('-', '_')}"
    out = write_results(name, rows, {"args": vars(args), "fit": PiVAE.fit_defaults},
                        args.results_dir)  # fmt: skip
    wins = sum(r["ss_at_least_eu"] for r in rows)
    print((out / "results.md").read_text())
    print(f"SS >= EU on {wins} of {len(rows)} (class, fraction) pairs")
    return out


if __name__ == "__main__":
    main()
