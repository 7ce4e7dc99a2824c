"""Disentanglement of the pi-VAE's latent layer against the number of labels (Berkhahn et
al. sec 4, App. A.4, Table 12).

    python -m experiments.pi_vae_disentanglement --budget cpu
    python -m experiments.pi_vae_disentanglement --budget paper --labels 0,100,300,1000 --labelled-only 1000
    python -m experiments.pi_vae_disentanglement --budget cpu --label-factor x --labels 0,102,300
    python -m experiments.pi_vae_disentanglement --budget paper --net cnn  # GPU: ~1 CPU-minute per epoch
    python -m experiments.pi_vae_disentanglement --budget paper --dataset smallnorb --data-dir DIR --net cnn
    python -m experiments.pi_vae_disentanglement --budget paper --dataset smallnorb --data-dir DIR \
        --net norb-cnn --z-dim 32 --factor-heads elevation,azimuth,lighting   # Table 12 as published

As in sec 4, the pi layer is only a loss on the latent layer: it is not fed to the decoder
(``pi_to_decoder=False``), so the network cannot route class information around z, and
the KL weight is beta_norm = 0.25. On the procedural shapes (``ppl_ssvae.data.shapes``,
a stand-in for Small-NORB) one factor (``--label-factor``, shape by default) is the
label. The paper has one pi head per Small-NORB factor (category, elevation, azimuth,
lighting) on its Table 16 network: ``--factor-heads`` adds a head per further factor,
labelled on the same rows (the label counts are of the main factor), and ``--net
norb-cnn`` is that network (7x7 stride-2 convolutions, a dense layer of 256).

For every count in ``--labels`` an SS model trains on every training image unlabelled
plus that many labelled copies (Table 12 keeps its unlabelled set and adds labels on
top) in 1:1 labelled/unlabelled batches; with 0 labels the pi loss is absent, the model
is a beta-VAE and, its batches being all unlabelled, takes half as many steps per epoch.
``--labelled-only N`` adds Table 12's last row: the same model on N labelled images
alone. Counts are rounded down to a multiple of the number of classes (100 -> 99 for
three shapes). The final model's betaVAE score (Higgins et al. 2017: a logistic
regression on the mean absolute difference of the posterior means of z over 2 x 64
images, 2048 train and 2048 test points, as in sec 4) is computed on the full factor grid.

``--alpha`` (100) follows sec 4's rule of thumb, alpha times the cross-entropy of the same
order as the reconstruction loss: ~100-250 nats per shapes image against ln 3 nats for an
untrained 3-way pi; the ``alpha_ce`` column (alpha times the final cross-entropy on the
labelled images) lets one check it against ``val_elbo``. App. A.4's RMSprop (rho 0.9,
lr 1e-3); the paper does not say how long it trains. Budgets: ``smoke`` (1 epoch, a
64-point metric from 8 pairs: plumbing only), ``cpu`` (20 epochs, the paper's metric
sizes, ~6 CPU-minutes for the default sweep) and ``paper`` (50 epochs).

Writes results/pi_vae_disentanglement_<dataset>_<label factor>_<net>/ (results.md,
results.csv, config.json): one row per run with ``beta_vae_score`` (test accuracy of the
metric's classifier), its train accuracy and the pi head's test accuracy on the label.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from experiments.common import (
    ScriptParser,
    add_results_arguments,
    build_seeded,
    claim_results,
    name_list,
    non_negative_float,
    non_negative_int,
    non_negative_int_list,
    paper_fit_arguments,
    positive_float,
    positive_int,
    random_seed,
    run_script,
    whole_labels,
    write_results,
)
from experiments.pi_vae_fashion_mnist import labelled_only
from ppl_ssvae import data
from ppl_ssvae.data.shapes import SHAPE_FACTORS, FactorImages, load_shapes
from ppl_ssvae.errors import UserError
from ppl_ssvae.evaluation.metrics import beta_vae_score, log_loss
from ppl_ssvae.models.pi_vae import PiVAE
from ppl_ssvae.training import FitResult, fit


class Budget(NamedTuple):
    epochs: int
    points: int  # betaVAE classifier points, train and test each
    pairs: int  # image pairs averaged per point


BUDGETS = {
    "smoke": Budget(1, 64, 8),
    # ~3 CPU-s per epoch (dense, 1 thread) and ~30 CPU-s for the metric's 524k encoded
    # images per run: four runs stay near 6 CPU-minutes
    "cpu": Budget(20, 2048, 64),
    "paper": Budget(50, 2048, 64),
}
# App. A.4 trains Small-NORB with lr 1e-3, not the 5e-4 of the MNIST models (A.1-A.2).
LR = 1e-3


class LatentMean(nn.Module):
    """Images -> posterior mean of z: the representation the paper scores (z, not pi).

    An ``nn.Module`` so that the metric finds its device and puts dropout/batch norm of
    the CNN trunk in eval mode.
    """

    def __init__(self, model: PiVAE) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q_z, _ = self.encoder(x)
        return q_z.mean


def labels_on_top(split: data.SemiSupervisedData) -> data.SemiSupervisedData:
    """Every training image unlabelled, plus a labelled copy of each labelled one.

    Table 12 keeps its ~38,000 unlabelled images and adds labels on top; hiding the
    labelled rows' labels as well keeps the unlabelled set (and so the steps per epoch)
    the same across the sweep instead of shrinking it as labels grow.
    """
    keep = split.labelled_mask
    hidden = torch.full_like(split.y_train, data.UNLABELLED)
    return data.SemiSupervisedData(
        **{**vars(split), "x_train": torch.cat([split.x_train[keep], split.x_train]),
           "y_train": torch.cat([split.y_train[keep], hidden]),
           "y_train_true": torch.cat([split.y_train_true[keep], split.y_train_true])}
    )  # fmt: skip


def with_factor_heads(
    split: data.SemiSupervisedData, dataset: data.Dataset, heads: list[str]
) -> data.SemiSupervisedData:
    """Labels ``(N, 1 + len(heads))``: the split's label, then each further factor's value
    on the same labelled rows (-1 elsewhere), one pi head each (Table 16). The split must
    keep the dataset's training rows in order (no validation rows carved)."""
    names = list(dataset.extra["factor_names"])
    unknown = [h for h in heads if h not in names]
    if unknown:
        raise UserError(f"--factor-heads {unknown}: {dataset.name} has factors {names}")
    if not torch.equal(split.y_train_true, torch.as_tensor(dataset.y_train, dtype=torch.long)):
        raise UserError("--factor-heads needs the training rows in the dataset's order")
    factors = torch.as_tensor(dataset.extra["factors_train"][:, [names.index(h) for h in heads]])
    labelled = split.y_train[:, None] >= 0
    extra = torch.where(labelled, factors.long(), data.UNLABELLED)
    return data.SemiSupervisedData(
        **{**vars(split), "y_train": torch.cat([split.y_train[:, None], extra], 1)}
    )


def train(
    split: data.SemiSupervisedData, args: argparse.Namespace, epochs: int,
    factor_classes: tuple[int, ...] = (),
) -> tuple[PiVAE, FitResult, float]:  # fmt: skip
    """One SS pi-VAE of sec 4 trained on ``split``; returns it, its history and CPU-minutes."""
    shape = tuple(split.image_shape or ())
    model = build_seeded(
        "pi-vae",
        args.seed,
        input_dim=split.input_dim,
        num_classes=split.num_classes,
        variant="ss",
        net=args.net,
        z_dim=args.z_dim,
        alpha=args.alpha,
        beta=args.beta,
        pi_to_decoder=False,
        factor_classes=factor_classes,
        **(
            {"image_shape": shape if len(shape) == 3 else (1, *shape)}
            if args.net != "dense"
            else {}
        ),
        **({"conv_hidden": 256} if args.net == "norb-cnn" else {}),  # Table 16's dense layer
    )
    start = time.process_time()
    result = fit(
        model,
        split,
        epochs=epochs,
        **{**paper_fit_arguments(PiVAE), "lr": LR},
        seed=args.seed,
        max_minutes=args.max_minutes,
        progress=False,
    )
    return model, result, (time.process_time() - start) / 60


def main(argv: list[str] | None = None) -> Path:
    parser = _parser()
    args = parser.parse_args(argv)

    if args.dataset == "shapes":
        dataset = load_shapes(label=args.label_factor or "shape")
    elif args.label_factor is not None:
        parser.error("--label-factor is for --dataset shapes; other datasets bring their label")
    else:
        dataset = data.load(args.dataset, args.data_dir)
    # shapes carries its whole grid (train and test images): the metric may ask for any
    # factor combination; other datasets (Small-NORB) cover the grid in their test split.
    factor_images = dataset.extra.get("factor_images")
    if factor_images is None:
        factor_images = FactorImages.from_dataset(dataset, "test")
    label_factor = args.label_factor or ("shape" if args.dataset == "shapes" else "label")
    name = args.name or (
        f"pi_vae_disentanglement_{args.dataset.replace('-', '_')}_{label_factor}_{args.net}"
    )
    # Taken before any work, so an earlier run's folder is refused before it is computed.
    claim_results(name, args.results_dir)
    budget = BUDGETS[args.budget]
    k = dataset.num_classes

    runs = [("SS", whole_labels(n, k)) for n in args.labels]
    if args.labelled_only:
        runs.append(("labelled-only", whole_labels(args.labelled_only, k)))
    names, counts = dataset.extra.get("factor_names", ()), dataset.extra.get("factor_sizes", ())
    head_sizes = tuple(dict(zip(names, counts, strict=True)).get(h, 0) for h in args.factor_heads)
    rows = [_run_row(kind, labels, dataset, factor_images, label_factor, head_sizes, args, budget)
            for kind, labels in runs]  # fmt: skip
    config = {"args": vars(args), "budget": budget._asdict(), "fit": {**PiVAE.fit_defaults, "lr": LR},
              "factor_names": list(getattr(factor_images, "factor_names", ())),
              "factor_sizes": list(factor_images.factor_sizes)}  # fmt: skip
    out = write_results(name, rows, config, args.results_dir)
    print((out / "results.md").read_text())
    return out


def _parser() -> ScriptParser:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=BUDGETS, default="cpu")
    parser.add_argument("--labels", type=non_negative_int_list, default="0,100,300,1000",
                        help="comma-separated numbers of labels, one SS run each")  # fmt: skip
    parser.add_argument("--labelled-only", type=non_negative_int, default=0,
                        help="also train on this many labelled images alone (0: no such run)")  # fmt: skip
    parser.add_argument("--label-factor", choices=SHAPE_FACTORS, default=None,
                        help="the shapes factor the labels are for [shape]")  # fmt: skip
    parser.add_argument("--net", choices=("dense", "cnn", "norb-cnn"), default="dense",
                        help="norb-cnn: Table 16's network (Small-NORB)")  # fmt: skip
    parser.add_argument("--factor-heads", type=name_list, default=[],
                        help="further factors, one pi head each, labelled on the same rows "
                        "(Table 16: elevation,azimuth,lighting)")  # fmt: skip
    parser.add_argument("--z-dim", type=positive_int, default=10)
    parser.add_argument(
        "--beta", type=positive_float, default=0.25, help="beta_norm, the KL weight"
    )
    parser.add_argument("--alpha", type=non_negative_float, default=100.0,
                        help="weight of the pi cross-entropy (eq. 5)")  # fmt: skip
    parser.add_argument("--max-minutes", type=positive_float, help="wall-clock cap per run")
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="shapes",
                        help="a dataset with known factors (shapes, smallnorb)")  # fmt: skip
    add_results_arguments(parser, "named after dataset, label factor, net")
    return parser


def _run_row(
    kind: str,
    labels: int,
    dataset: Any,
    factor_images: Any,
    label_factor: str,
    head_sizes: tuple[int, ...],
    args: argparse.Namespace,
    budget: Any,
) -> dict[str, Any]:
    """Train one run (SS, or on its labelled rows alone) and score it: one table row."""
    heads = args.factor_heads
    # Factor labels are read by row: the training rows stay in the dataset's order.
    carve = {"validation_size": 0} if heads else {}
    split = data.semi_supervised_split(dataset, labels=labels, seed=args.seed, **carve)
    if heads:
        split = with_factor_heads(split, dataset, heads)
    split = labelled_only(split) if kind == "labelled-only" else labels_on_top(split)
    model, result, cpu_minutes = train(split, args, budget.epochs, head_sizes)
    start = time.process_time()
    score = beta_vae_score(LatentMean(model), factor_images, batch_size=budget.pairs,
                           num_train=budget.points, num_test=budget.points, seed=args.seed)  # fmt: skip
    last = result.history[-1]
    keep = split.labelled_mask
    # sec 4's rule for alpha, per labelled image, to set beside -val_elbo
    alpha_ce = (
        args.alpha * log_loss(model.classify(split.x_train[keep]), _main(split.y_train[keep]))
        if keep.any()
        else float("nan")
    )
    row = {
        "run": kind,
        "label_factor": label_factor,
        "labels": labels,
        "unlabelled_rows": int((~split.labelled_mask).sum()),
        "epochs": len(result.history),
        "beta_vae_score": score["beta_vae_score"],
        "beta_vae_train_accuracy": score["beta_vae_train_accuracy"],
        # of the final model, the one scored; chance level without labels
        "pi_test_accuracy": last["test_accuracy"],
        "val_elbo": last["elbo"],
        "alpha_ce": alpha_ce,
        "cpu_minutes": cpu_minutes + (time.process_time() - start) / 60,
        "stopped": result.stopped,
    }  # fmt: skip
    print(f"{kind}, {labels} labels: betaVAE score {score['beta_vae_score']:.4f}", flush=True)
    return row


def _main(y: torch.Tensor) -> torch.Tensor:
    """The main pi layer's labels of ``(N,)`` or ``(N, 1 + factors)`` labels."""
    return y[:, 0] if y.dim() == 2 else y


if __name__ == "__main__":
    run_script(main)
