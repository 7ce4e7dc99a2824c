"""Vengalil & Sinha's cluster-then-label active labelling against random labels (the
shape of their Fig. 3-4): test accuracy per iteration, against the queries spent.

    python -m experiments.active_labelling --budget cpu --dataset mnist-5k

Rows, per iteration:

- ``active kmeans/{euclidean,mahalanobis}/{gaussian,exponential}`` and ``active gmm``
  (the paper's grid, sec 3.3): ``ppl_ssvae.active.run_active`` with the simulated oracle
  (the majority true label of the rows nearest a centre, purity as confidence), the
  distance and the decay of eq. 3 (Gaussian) or eq. 2 (exponential); a GMM propagates by
  its responsibilities;
- ``random labels``: the same beta-VAE classifier, from the same unsupervised weights,
  trained with the same schedule on as many uniformly drawn true labels as the active
  loop had asked queries by then, on 1:1 batches;
- ``M2 random labels``: M2 (the same z size, layers and ``--net``) trained from its
  initial weights on the same random labels, on 1:1 batches, for as many epochs as the
  active model had trained by then (the unsupervised phase plus ``epochs`` per
  iteration): the best model the library ships, given as many labels. (On natural batches
  a few dozen labels are one labelled row in a hundred and both baselines collapse to
  chance; M2 trained without labels first learns clusters whose ids are not the
  classes'.)

The loop sees a seeded 70% of the training images (``--train-fraction``; the paper's
70/30 split, sec 3.1, whose 30% tuned hyper-parameters), and ``--net conv`` gives the
paper's network (sec 3.2: a down-sampling convolution under the encoder's dense layers, an
up-sampling deconvolution over the decoder's; ours maps z to the feature map by one dense
layer where the paper has two).

``queries_total`` counts oracle answers (invalid ones too); a random-label row holds that
many labels. The active variants share one unsupervised phase (it does not depend on the
clustering), copied into each run directory. Accuracy is the last epoch's of each
iteration: no labelled validation rows are used anywhere.

Budgets: ``smoke`` (digits-sized, seconds: to check the script runs) and ``cpu``.
Writes results/active_labelling_<dataset>/ (``--name`` to choose) with results.md,
results.csv, curve.png (test accuracy against queries), latent_tsne.png (t-SNE of the test
set's latent means before the first query and after the last iteration, for each
clustering; Figs 5-6) and config.json.

``--merge FOLDER ...`` trains nothing: it joins folders of one configuration run at other
seeds into results/active_labelling_<dataset>_seeds/, with mean ± sd over seeds per
method and iteration, and curve.png with the spread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.common import (
    ScriptParser,
    claim_results,
    comma_list,
    folder_name,
    mean_and_sd,
    non_negative_float,
    positive_float,
    positive_int,
    pyplot,
    random_seed,
    read_results,
    run_script,
    unit_fraction,
    write_results,
)
from ppl_ssvae import protocol
from ppl_ssvae.active import ActiveConfig, load_unlabelled, run_active
from ppl_ssvae.active.loop import build_model, fit_settings
from ppl_ssvae.errors import UserError
from ppl_ssvae.evaluation.metrics import accuracy
from ppl_ssvae.runs.directory import CHECKPOINT, RunDir
from ppl_ssvae.training import fit

BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": dict(iterations=2, queries=10, k=5, z_dim=5, hidden=(64,), pretrain_epochs=2,
                  patience=1, epochs=1, batch_size=500),
    "cpu": dict(iterations=5, queries=20, k=10, z_dim=10, hidden=(256, 128),
                pretrain_epochs=30, patience=3, epochs=5, batch_size=100),
}  # fmt: skip
# The paper's grid (sec 3.3): k-means by Euclidean or Mahalanobis distance, each with eq. 3's
# Gaussian or eq. 2's exponential decay, and a GMM's responsibilities.
VARIANTS = {
    f"active kmeans/{metric}/{decay}": dict(clustering="kmeans", distance=metric, decay=decay)
    for metric in ("euclidean", "mahalanobis")
    for decay in ("gaussian", "exponential")
} | {"active gmm": dict(clustering="gmm")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ScriptParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    p.add_argument("--dataset", default="mnist-5k", help="fashion-mnist, mnist-5k, digits...")
    p.add_argument("--seed", type=random_seed, default=0)
    p.add_argument("--rate", type=positive_float, default=0.1, help="a in eq. 2-3")
    p.add_argument("--gamma", type=non_negative_float, default=10.0, help="gamma in eq. 4")
    p.add_argument("--net", default="dense", help="dense, or conv: the paper's network (sec 3.2)")
    p.add_argument("--channels", type=comma_list(positive_int), help="the conv net's channels")
    p.add_argument("--train-fraction", type=unit_fraction, default=0.7,
                   help="share of the training images the loop sees [0.7, the paper's]")  # fmt: skip
    p.add_argument("--runs-dir", default=None, help="keep the run directories here")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--name", type=folder_name,
                   help="results folder [active_labelling_<dataset>, ..._seeds with --merge]")  # fmt: skip
    p.add_argument("--merge", nargs="+", default=None, metavar="FOLDER",
                   help="train nothing: join these folders (other seeds) into mean and sd")  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.merge:
        return merge_seeds([Path(f) for f in args.merge], args.results_dir, args.name)
    net_args = {} if args.channels is None else {"channels": args.channels}
    base = ActiveConfig(dataset=args.dataset, seed=args.seed, rate=args.rate, gamma=args.gamma,
                        net=args.net, net_args=net_args, train_fraction=args.train_fraction,
                        **BUDGETS[args.budget])  # fmt: skip
    name = args.name or "active_labelling_" + args.dataset.replace("-", "_")
    # Taken before any work, so an earlier run's folder is refused before it is computed.
    tsne_path = claim_results(name, args.results_dir)
    started = time.process_time()
    with tempfile.TemporaryDirectory() as scratch:
        runs = Path(args.runs_dir or scratch)
        rows, active = _active_rows(base, runs)
        totals = [r["queries_total"] for r in active[1:]]
        pretrained = runs / _slug(next(iter(VARIANTS))) / "pretrain"
        rows += _random_rows(base, totals, pretrained, active[0]["pretrain_epochs"])
        latent_maps(base, runs, tsne_path / "latent_tsne.png")
    config = {"arguments": vars(args), "active": base.to_dict(),
              "pretrain_epochs": active[0]["pretrain_epochs"],
              "cpu_seconds": time.process_time() - started}  # fmt: skip
    out = write_results(name, rows, config, args.results_dir)
    _plot(out / "curve.png", rows)
    return out


def merge_seeds(folders: list[Path], results_dir: str | Path, name: str | None = None) -> Path:
    """Join results folders of one configuration run at different seeds: every row with its
    seed, and mean ± sd over seeds per method and iteration. Refuses folders whose settings
    differ other than by seed, and a seed given twice."""
    rows: list[dict[str, Any]] = []
    settings, sources = None, {}
    for folder in folders:
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise UserError(f"--merge: {config_path} not found; pass folders this script wrote")
        config = json.loads(config_path.read_text())
        if not isinstance(config.get("active"), dict):
            raise UserError(
                f"--merge: {config_path} has no active settings; pass folders this script wrote"
            )
        active = dict(config["active"])
        seed = active.pop("seed")
        settings = active if settings is None else settings
        differing = sorted(
            k for k in settings.keys() | active.keys() if settings.get(k) != active.get(k)
        )
        if differing:
            raise UserError(f"--merge: {folder} differs from {folders[0]} in {', '.join(differing)}; "
                            "merge runs of one configuration at other seeds")  # fmt: skip
        if seed in sources:
            raise UserError(
                f"--merge: seed {seed} is in both {sources[seed]['folder']} and {folder}"
            )
        sources[seed] = {"folder": str(folder), "cpu_seconds": config.get("cpu_seconds"),
                         "environment": config.get("environment")}  # fmt: skip
        rows += [{"seed": seed, **row} for row in read_results(folder)]
    columns = ["queries_total", "propagated_label_accuracy", "test_accuracy"]
    summary = mean_and_sd(rows, ("method", "iteration"), columns)
    name = name or "active_labelling_" + settings["dataset"].replace("-", "_") + "_seeds"
    out = write_results(name, rows, {"merged": sources, "active": settings}, results_dir, summary)
    _plot(out / "curve.png", summary, over_seeds=True)
    return out


def _slug(method: str) -> str:
    return method.replace("active ", "").replace("/", "-")


def _active_rows(base: ActiveConfig, runs: Path) -> tuple[list[dict], list[dict]]:
    rows, first, active = [], None, []
    for method, options in VARIANTS.items():
        out = runs / _slug(method)
        if first is not None and not out.exists():
            # Step (1) does not depend on the clustering: the same seed trains the same VAE.
            out.mkdir(parents=True)
            shutil.copytree(first / "pretrain", out / "pretrain")
        resume = (out / "config.json").is_file()
        records = run_active(dataclasses.replace(base, **options), out, resume=resume)
        first = first or out
        rows += [_row(method, r) for r in records]
        active = records if out == first else active
    return rows, active


def _row(method: str, record: dict) -> dict[str, Any]:
    return {
        "method": method,
        "iteration": record["iteration"],
        "queries_total": record["queries_total"],
        "labelled_rows": record["labelled_rows"],
        "propagated_label_accuracy": _num(record["propagated_label_accuracy"]),
        "test_accuracy": float(record["test_accuracy"]),
    }


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _random_rows(
    base: ActiveConfig, totals: list[int], pretrained: Path, pretrain_epochs: int
) -> list[dict]:
    data = load_unlabelled(base)
    order = np.random.default_rng(base.seed).permutation(len(data.x_train))
    truth = data.y_train_true.numpy()
    ours = build_model(base, data)
    RunDir(pretrained).load_weights(ours, CHECKPOINT)
    m2 = _m2(base, data)
    rows = [_baseline_row("random labels", 0, 0, ours, data),
            _baseline_row("M2 random labels", 0, 0, m2, data)]  # fmt: skip
    for i, total in enumerate(totals, 1):
        labels = np.full(len(truth), -1)
        labels[order[:total]] = truth[order[:total]]
        plain = dataclasses.replace(data, y_train=torch.as_tensor(labels))
        # The loop's own model goes on from where it was, as the active model does.
        _fit(ours, plain, base, base.epochs, base.seed * 1000 + i)
        m2 = _m2(base, data)
        _fit(m2, plain, base, pretrain_epochs + i * base.epochs, base.seed * 1000 + i)
        rows += [_baseline_row("random labels", i, total, ours, data),
                 _baseline_row("M2 random labels", i, total, m2, data)]  # fmt: skip
    return rows


def _m2(base: ActiveConfig, data: Any) -> Any:
    return protocol.build_for_data("m2", data, base.seed, z_dim=base.z_dim, hidden=base.hidden,
                                   net=base.net, net_args=dict(base.net_args))  # fmt: skip


def _fit(model: Any, data: Any, base: ActiveConfig, epochs: int, seed: int) -> None:
    # 1:1 batches: at the natural share a few labels give M2 one labelled row per batch.
    share = "1:1" if bool(data.labelled_mask.any()) else "natural"
    fit(model, data, fit_settings(base, seed), epochs=epochs, labelled_share=share,
        evaluate=lambda m, d: {"test_accuracy": accuracy(m.classify(d.x_test), d.y_test)})  # fmt: skip


def _baseline_row(method: str, i: int, total: int, model: Any, data: Any) -> dict[str, Any]:
    return {"method": method, "iteration": i, "queries_total": total, "labelled_rows": total,
            "propagated_label_accuracy": 1.0 if total else float("nan"),
            "test_accuracy": accuracy(model.classify(data.x_test), data.y_test)}  # fmt: skip


def latent_maps(base: ActiveConfig, runs: Path, path: Path, rows: int = 2000) -> None:
    """t-SNE of the latent means of ``rows`` test images, coloured by true class: after
    the unsupervised phase, then after the last iteration of each variant (Figs 5-6)."""
    from ppl_ssvae.evaluation.inspect import embed_2d, scatter_by_class

    plt = pyplot()
    data = load_unlabelled(base)
    x, y = data.x_test[:rows], data.y_test[:rows]
    first = runs / _slug(next(iter(VARIANTS)))
    panels = [("before (unsupervised phase)", first / "pretrain")]
    for method in VARIANTS:
        last = sorted((runs / _slug(method)).glob("iter-*"))[-1]
        panels.append((f"after {last.name.removeprefix('iter-').lstrip('0')}: {method}", last))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0))
    names = [str(c) for c in range(data.num_classes)]
    for ax, (title, run) in zip(axes, panels, strict=True):
        model = build_model(base, data)
        RunDir(run).load_weights(model, CHECKPOINT)
        points = embed_2d(model.encode(x)["z_mean"].cpu().numpy(), "tsne", base.seed)
        scatter_by_class(ax, points, y, names)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot(path: Path, rows: list[dict], over_seeds: bool = False) -> None:
    """Test accuracy against queries per method: one run's rows, or ``mean_and_sd``'s
    summary rows (``over_seeds``) with the sd as error bars."""
    plt = pyplot()
    suffix = "_mean" if over_seeds else ""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        ax.errorbar([r["queries_total" + suffix] for r in mine],
                    [r["test_accuracy" + suffix] for r in mine],
                    yerr=[r.get("test_accuracy_sd", 0.0) for r in mine], marker=".", capsize=2,
                    label=method)  # fmt: skip
    ax.set_xlabel("queries (labels) so far" + (", mean over seeds" if over_seeds else ""))
    ax.set_ylabel("test accuracy" + (", mean ± sd over seeds" if over_seeds else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run_script(lambda: print(main()))
