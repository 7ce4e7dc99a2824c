"""The cluster-then-label loop of Vengalil & Sinha (sec 3.2-3.3) and its run directory.

Run directory ``DIR``::

    config.json         the ActiveConfig, the model config, versions
    queries.jsonl       every query and its answer, rewritten atomically as each arrives
    iterations.jsonl    one object per iteration (0 = after unsupervised training)
    pretrain/           fit run of step (1), one epoch per fit call (patience)
    labels-NNN.json     the labels and weights iteration NNN trained on
    iter-NNN/           fit run of iteration NNN's training (step 6)
    centres-*.png       the centres shown to a human oracle
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from ..data import SemiSupervisedData, load, semi_supervised_split
from ..errors import is_int, require
from ..evaluation.metrics import accuracy
from ..models import build
from ..models.beta_vae_classifier import BetaVAEClassifier
from ..protocol import data_layout
from ..runs.checkpoint import read_regular_file, write_text_atomic
from ..runs.directory import CHECKPOINT, RunDir, RunDirWarning
from ..runs.kinds import ITERATIONS, run_marker
from ..training import EarlyStopping, FitSettings, environment, fit
from .clusters import Cluster
from .confidence import confidence, distance
from .config import RESUMABLE, ActiveConfig, wrapped_seed
from .oracles import Answer, HumanOracle, Oracle, SimulatedOracle, answer_lines, read_answers
from .queries import QueryLog, ask_tree


# -- data, model, training ---------------------------------------------------------------------
def load_unlabelled(config: ActiveConfig) -> SemiSupervisedData:
    """The dataset with every training label hidden and no validation rows (model selection
    by validation labels would be labels the oracle never gave)."""
    dataset = load(config.dataset, config.data_dir)
    # The rows left out are carved as validation rows and dropped, labels unread.
    left_out = len(dataset.x_train) - round(config.train_fraction * len(dataset.x_train))
    split = semi_supervised_split(dataset, labels=0, validation_size=left_out, seed=config.seed)
    return dataclasses.replace(split, x_val=split.x_val[:0], y_val=split.y_val[:0], recipe=None)


def build_model(config: ActiveConfig, data: SemiSupervisedData) -> BetaVAEClassifier:
    """The beta-VAE with a classifier on z (eq. 1), its weights drawn from the seed."""
    pyro.set_rng_seed(config.seed)
    return build(
        "beta-vae-classifier",
        input_dim=data.input_dim,
        num_classes=data.num_classes,
        likelihood="bernoulli" if data.support == "unit" else "gaussian",
        z_dim=config.z_dim,
        hidden=tuple(config.hidden),
        beta=config.beta,
        gamma=config.gamma,
        net=config.net,
        net_args=dict(config.net_args),
        **data_layout("beta-vae-classifier", data),
    )


def evaluate(model: BetaVAEClassifier, data: SemiSupervisedData) -> dict[str, float]:
    """fit's per-epoch report: the training set's reconstruction loss (what step (1)'s
    patience watches; no labels needed) and test accuracy."""
    return {
        "reconstruction_loss": model.reconstruction_loss(data.x_train),
        "test_accuracy": accuracy(model.classify(data.x_test), data.y_test),
    }


def fit_to(
    model: BetaVAEClassifier,
    data: SemiSupervisedData,
    path: Path,
    epochs: int,
    settings: FitSettings,
) -> list[dict[str, Any]]:
    """Train the fit run in ``path`` up to ``epochs`` epochs: resumed from its checkpoint,
    or only loaded when it has trained that far; the run's history."""
    run = RunDir(path)
    if run.file(CHECKPOINT).is_file():
        state = run.load_checkpoint(CHECKPOINT)
        if state["epoch"] >= epochs:
            run.load_weights(model, CHECKPOINT)
            return list(state["history"])
        result = fit(model, data, settings, out=run, resume=True, epochs=epochs, evaluate=evaluate)
    else:
        # A run killed before its first epoch ended left a config only: start it again.
        result = fit(model, data, settings, out=run, overwrite=run.holds_run(), epochs=epochs,
                     evaluate=evaluate)  # fmt: skip
    return result.history


def pretrain(
    model: BetaVAEClassifier, data: SemiSupervisedData, out: Path, config: ActiveConfig
) -> int:
    """Step (1): the VAE alone (no labels yet, so eq. 4 is eq. 1) until the reconstruction
    loss has not improved (by ``min_improvement`` of its best) for ``patience`` epochs; the
    epochs trained. A killed pretraining resumes from its checkpoint, patience included."""
    stop = EarlyStopping("reconstruction_loss", patience=config.patience,
                         min_delta=config.min_improvement, mode="min", relative=True)  # fmt: skip
    run = RunDir(out)
    settings = fit_settings(config, config.seed)
    if run.file(CHECKPOINT).is_file():
        state = run.load_checkpoint(CHECKPOINT)
        if state["epoch"] >= config.pretrain_epochs:
            run.load_weights(model, CHECKPOINT)
            return int(state["epoch"])
        result = fit(model, data, settings, out=run, resume=True, evaluate=evaluate,
                     callbacks=[stop], epochs=config.pretrain_epochs)  # fmt: skip
    else:
        # A run killed before its first epoch ended left a config only: start it again.
        result = fit(model, data, settings, out=run, overwrite=run.holds_run(), evaluate=evaluate,
                     callbacks=[stop], epochs=config.pretrain_epochs)  # fmt: skip
    return len(result.history)


def fit_settings(config: ActiveConfig, seed: int) -> FitSettings:
    # lr_decay 1: every iteration continues training with a fresh optimiser at the same rate.
    return FitSettings(batch_size=config.batch_size, lr=config.lr, lr_decay=1.0, seed=seed,
                       device="cpu", progress=False)  # fmt: skip


# -- propagation -------------------------------------------------------------------------------
def propagate(
    asked: list[tuple[Cluster, Answer]], z: np.ndarray, config: ActiveConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Step (5): each valid centre's label to its cluster's members with ``w_n = p_c f(d_n)``
    (eq. 2-3), or ``p_c`` times the member's responsibility with a GMM; rows in no
    valid cluster get label -1 and weight 0. Valid centres are never sub-clustered, so
    their clusters do not overlap."""
    labels = np.full(len(z), -1, dtype=np.int64)
    weights = np.zeros(len(z))
    for node, answer in asked:
        if answer.invalid:
            continue
        if config.clustering == "gmm":
            w = answer.confidence * node.responsibility
        else:
            d = distance(config.distance, z[node.members], node.centre, node.covariance)
            w = confidence(answer.confidence, d, config.rate, config.decay)
        labels[node.members], weights[node.members] = answer.label, w
    return labels, weights


def merge(
    previous: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Labels of earlier iterations are kept; a row labelled again takes the new label and
    weight.

    Why: the new latent space was trained with more label information, so its clusters
    are purer and its distances (which set w_n) are the ones the classifier now sees, so
    a row the new round labels is re-propagated. Where the new round says nothing (an
    invalid centre with no budget left below it), the old answer still holds: an oracle's
    answers are never thrown away, and queries_total counts labels that all still act.
    """
    labels, weights = previous[0].copy(), previous[1].copy()
    fresh = new[0] >= 0
    labels[fresh], weights[fresh] = new[0][fresh], new[1][fresh]
    return labels, weights


def weighted_data(
    data: SemiSupervisedData, labels: np.ndarray, weights: np.ndarray
) -> SemiSupervisedData:
    """``data`` with the weighted labels ``(N, 2)`` the model trains on (eq. 4)."""
    y = torch.as_tensor(np.stack([labels, weights], 1), dtype=torch.float32)
    summary = {**data.summary, "labelled_rows": int((weights > 0).sum())}
    return dataclasses.replace(data, y_train=y, summary=summary)


# -- the loop ----------------------------------------------------------------------------------
def run_active(
    config: ActiveConfig,
    out: str | Path,
    resume: bool = False,
    oracle: Oracle | None = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Run (or resume) the active-labelling loop into ``out``; the iteration records.

    Args:
        config: the loop's settings (validated first, before anything is written).
        out: the run directory (see the module docstring).
        resume: continue the run in ``out``: nothing answered is asked again, training
            continues from its checkpoints; ``config`` must equal the run's except
            ``iterations``.
        oracle: any ``Oracle``; None builds the one ``config.oracle`` names.
        overwrite: clear the active-labelling run ``out`` holds (its answers included)
            and start again; without it a directory that holds a run is refused.

    Returns:
        One dict per iteration (as ``iterations.jsonl``), iteration 0 first.
    """
    config.validate()
    run = RunDir(out, kind="active")
    run.check_start(resume, overwrite)
    if oracle is None and config.answers_file is not None:
        read_answers(config.answers_file)  # refused now, not after the unsupervised phase
    data = load_unlabelled(config)
    model = build_model(config, data)
    with run.lock():
        run.start(resume, overwrite)
        _write_config(run, config, model, resume)
        log = QueryLog(run)
        oracle = oracle or make_oracle(config, data, run, answered=len(log))
        return _iterate(config, data, model, run, log, oracle)


def _write_config(run: RunDir, config: ActiveConfig, model: BetaVAEClassifier, resume: bool):
    if resume:
        stored = run.read_config()["active"]
        mine = config.to_dict()
        changed = sorted(k for k in mine if k not in RESUMABLE and stored.get(k) != mine[k])
        require(not changed, f"--resume with other settings than the run's: {changed}; "
                              "only the number of iterations may change")  # fmt: skip
        return
    run.write_config({**run_marker("active"), "active": config.to_dict(),
                      "model": model.to_config(), "environment": environment()})  # fmt: skip


def make_oracle(
    config: ActiveConfig, data: SemiSupervisedData, run: RunDir, answered: int = 0
) -> Oracle:
    """The oracle ``config.oracle`` names; a human's answers file skips the ``answered``
    lines an earlier session used."""
    if config.oracle == "simulated":
        return SimulatedOracle(data.y_train_true.numpy(), config.neighbours,
                               config.purity_threshold)  # fmt: skip
    lines = None if config.answers_file is None else answer_lines(config.answers_file, answered)
    return HumanOracle(run.path, lines, data.num_classes)


def _iterate(
    config: ActiveConfig,
    data: SemiSupervisedData,
    model: BetaVAEClassifier,
    run: RunDir,
    log: QueryLog,
    oracle: Oracle,
) -> list[dict[str, Any]]:
    records = _read_records(run)
    pretrain_epochs = pretrain(model, data, run.file("pretrain"), config)
    if not records:
        records.append(_record(0, model, data, [], (np.full(len(data.x_train), -1),
                                                    np.zeros(len(data.x_train))), 0))  # fmt: skip
        records[0]["pretrain_epochs"] = pretrain_epochs
        _write_records(run, records)
    state = np.full(len(data.x_train), -1, dtype=np.int64), np.zeros(len(data.x_train))
    for i in range(1, config.iterations + 1):
        asked, state = _labels(i, config, data, model, run, log, oracle, state)
        fit_to(model, weighted_data(data, *state), run.file(f"iter-{i:03d}"), config.epochs,
               fit_settings(config, wrapped_seed(config.seed * 1000 + i)))  # fmt: skip
        if len(records) <= i:
            total = records[-1]["queries_total"] + len(asked)
            records.append(_record(i, model, data, asked, state, total))
            _write_records(run, records)
    return records[: config.iterations + 1]


def _labels(
    i: int,
    config: ActiveConfig,
    data: SemiSupervisedData,
    model: BetaVAEClassifier,
    run: RunDir,
    log: QueryLog,
    oracle: Oracle,
    previous: tuple[np.ndarray, np.ndarray],
) -> tuple[list, tuple[np.ndarray, np.ndarray]]:
    """Iteration i's queries and merged labels, read back when the iteration has them."""
    path = run.file(f"labels-{i:03d}.json")
    if path.is_file() or path.is_symlink():
        asked = [q for q in log.records.values() if q["id"].startswith(f"{i}/")]
        return asked, _read_labels(path, len(data.x_train))
    z = model.encode(data.x_train)["z_mean"].cpu().numpy().astype(np.float64)
    asked = ask_tree(i, z, model, data, config, oracle, log)
    labels, weights = merge(previous, propagate(asked, z, config))
    text = json.dumps({"labels": labels.tolist(), "weights": weights.tolist()})
    write_text_atomic(path, text)
    return asked, (labels, weights)


def _read_labels(path: Path, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """An iteration's saved labels and weights, one each per training row."""
    try:
        saved = json.loads(read_regular_file(path))
        labels = np.array(saved["labels"], dtype=np.int64)
        weights = np.array(saved["weights"], dtype=np.float64)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        labels = weights = np.zeros(0)
    require(labels.shape == weights.shape == (rows,) and bool(np.isfinite(weights).all()),
            f"{path} is damaged (not {rows} labels and weights); delete it and resume: "
            "the iteration's labels are propagated again from the saved answers")  # fmt: skip
    return labels, weights


def _record(
    i: int,
    model: BetaVAEClassifier,
    data: SemiSupervisedData,
    asked: list,
    state: tuple[np.ndarray, np.ndarray],
    queries_total: int,
) -> dict[str, Any]:
    labels, weights = state
    kept = weights > 0
    truth = data.y_train_true.numpy()
    invalid = sum(
        1 for a in asked if (a[1].invalid if isinstance(a, tuple) else a["label"] is None)
    )
    return {
        "iteration": i,
        "queries": len(asked),
        "queries_total": queries_total,
        "invalid_answers": invalid,
        "labelled_rows": int(kept.sum()),
        # Against the hidden truth, for the report only: the loop never trains on it.
        "propagated_label_accuracy": float((labels[kept] == truth[kept]).mean())
        if kept.any()
        else None,  # fmt: skip
        "mean_weight": float(weights[kept].mean()) if kept.any() else None,
        "test_accuracy": accuracy(model.classify(data.x_test), data.y_test),
    }


def _read_records(run: RunDir) -> list[dict[str, Any]]:
    """iterations.jsonl up to its first unusable line: the later iterations' records are
    computed again (their answers and checkpoints are kept), with a note."""
    records, dropped = run.read_records(ITERATIONS, _record_problem)
    kept = next((i for i, r in enumerate(records) if r["iteration"] != i), len(records))
    if dropped or kept < len(records):
        notes = ", ".join(dropped) or "records out of order"
        warnings.warn(f"{run.file(ITERATIONS)}: dropped {notes}; the records from iteration "
                      f"{kept} on are made again", RunDirWarning, stacklevel=2)  # fmt: skip
    return records[:kept]


def _record_problem(number: int, record: dict[str, Any]) -> str | None:
    ok = is_int(record.get("iteration")) and is_int(record.get("queries_total"))
    return None if ok else f"unreadable line {number}"


def _write_records(run: RunDir, records: list[dict[str, Any]]) -> None:
    write_text_atomic(run.file(ITERATIONS), "".join(json.dumps(r) + "\n" for r in records))
