"""Cluster-and-label evaluation and z-unit activity (Willetts et al. sec 6.3, App. C).

When some classes are never labelled (``hidden_classes``), when the model has more
classes than the data (``|y| = N_gt + N_aug``, sec 6.1) or when no label is given at
all, a model class is not a ground-truth class: it is attributed one before accuracy
is computed. Two attributions are offered:

* **majority** (sec 6.3): each model class takes the most common true class among the
  training points it is assigned; works for any ``|y| >= K``.
* **hungarian**: the one-to-one assignment of model to true classes that maximises the
  number of training points on the diagonal (``scipy.optimize.linear_sum_assignment``).

Deviation from the paper: sec 6.3 attributes classes "at test time", i.e. with the
test labels. Here the mapping is fitted on the *training* rows' true labels
(``SemiSupervisedData.y_train_true``) and then applied unchanged to validation and
test rows, so test labels never choose the mapping.

Accuracy is split as in Table 1 into rows whose true class has labels in training
("visible", Semi-Sup) and rows whose true class has none ("hidden", Un-Sup).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix

from ..errors import UserError
from ..models.base import SemiSupervisedModel
from ..runs.checkpoint import write_bytes_atomic, write_text_atomic
from .activity import prior_component_kl, unit_activity
from .metrics import held_out_elbo, log_loss

IDENTITY, MAJORITY, HUNGARIAN = "identity", "majority", "hungarian"
# Mapped id of a model class that no training point falls in and that has no
# ground-truth namesake: test rows predicted there always count as errors.
UNMAPPED = -1

__all__ = [
    "HUNGARIAN",
    "IDENTITY",
    "MAJORITY",
    "UNMAPPED",
    "choose_mapping",
    "clustering_report",
    "confusion_table",
    "contingency",
    "fit_mapping",
    "hungarian_mapping",
    "majority_mapping",
    "save_confusion_matrix",
    "split_accuracy",
    "unit_activity",
    "unsupervised_classes",
    "write_clustering_artifacts",
]


def _as_array(values: torch.Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.int64)


def contingency(
    predicted: torch.Tensor | np.ndarray | Sequence[int],
    true: torch.Tensor | np.ndarray | Sequence[int],
    num_model_classes: int,
    num_classes: int,
) -> np.ndarray:
    """Counts ``C[k, c]`` of rows the model puts in class ``k`` whose true class is ``c``.

    Args:
        predicted: model class per row, in ``0..num_model_classes - 1``.
        true: ground-truth class per row, in ``0..num_classes - 1``.
        num_model_classes: ``|y|``, the model's number of classes.
        num_classes: ``K``, the number of ground-truth classes.

    Returns:
        An int64 array of shape ``(num_model_classes, num_classes)``.
    """
    predicted, true = _as_array(predicted), _as_array(true)
    if predicted.shape != true.shape:
        raise UserError(f"{predicted.shape[0]} predictions but {true.shape[0]} true labels")
    ones = np.ones_like(predicted)
    shape = (num_model_classes, num_classes)
    return coo_matrix((ones, (predicted, true)), shape=shape).toarray().astype(np.int64)


def majority_mapping(
    predicted: torch.Tensor | np.ndarray | Sequence[int],
    true: torch.Tensor | np.ndarray | Sequence[int],
    num_model_classes: int,
    num_classes: int,
) -> np.ndarray:
    """Cluster-and-label (Willetts sec 6.3): model class -> most common true class in it.

    Ties go to the smallest true class id. A model class that no row falls in maps to
    its own id when that is a ground-truth id (``k < num_classes``), so an unused class
    of an M2-sized model keeps its natural meaning, and to ``UNMAPPED`` (-1) otherwise:
    there is no evidence for any class, and rows later predicted there count as errors.

    Args:
        predicted: as for :func:`contingency`, on the rows the mapping is fitted on
            (the training rows), like the three below.
        true: as for :func:`contingency`.
        num_model_classes: as for :func:`contingency`.
        num_classes: as for :func:`contingency`.

    Returns:
        ``mapping`` of shape ``(num_model_classes,)``: ``mapping[k]`` is the true class
        attributed to model class ``k``.

    Example:
        >>> majority_mapping([0, 0, 1, 2, 2, 2], [3, 3, 0, 1, 1, 0], 4, 4).tolist()
        [3, 0, 1, 3]
    """
    counts = contingency(predicted, true, num_model_classes, num_classes)
    mapping = counts.argmax(1)
    empty = counts.sum(1) == 0
    own = np.arange(num_model_classes)
    mapping[empty] = np.where(own[empty] < num_classes, own[empty], UNMAPPED)
    return mapping


def hungarian_mapping(
    predicted: torch.Tensor | np.ndarray | Sequence[int],
    true: torch.Tensor | np.ndarray | Sequence[int],
    num_model_classes: int,
    num_classes: int,
) -> np.ndarray:
    """One-to-one mapping maximising agreement, via ``scipy.optimize.linear_sum_assignment``.

    With ``|y| > K`` only ``K`` model classes get a true class; the rest are ``UNMAPPED``.

    Example:
        >>> hungarian_mapping([0, 0, 1, 1, 2], [1, 1, 2, 0, 2], 3, 3).tolist()
        [1, 0, 2]
    """
    counts = contingency(predicted, true, num_model_classes, num_classes)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.full(num_model_classes, UNMAPPED, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def split_accuracy(
    predicted: torch.Tensor | np.ndarray | Sequence[int],
    true: torch.Tensor | np.ndarray | Sequence[int],
    hidden_classes: Sequence[int] = (),
) -> dict[str, float | None]:
    """Accuracy overall, on visible and on hidden classes (Willetts Table 1 columns).

    A row is "hidden" when its *true* class is in ``hidden_classes`` (whatever the
    model predicted), "visible" otherwise.

    Args:
        predicted: predicted true-class ids (already mapped), ``-1`` allowed.
        true: ground-truth class ids.
        hidden_classes: the classes without training labels.

    Returns:
        ``{"overall", "visible", "hidden"}``; a part with no rows is None, except
        ``overall``, which is NaN on empty input (as :func:`ppl_ssvae.evaluation.metrics.accuracy`).
    """
    predicted, true = _as_array(predicted), _as_array(true)
    correct = predicted == true
    is_hidden = np.isin(true, np.asarray(list(hidden_classes), dtype=np.int64))

    def part(mask: np.ndarray) -> float | None:
        return float(correct[mask].mean()) if mask.any() else None

    overall = float(correct.mean()) if len(correct) else float("nan")
    return {"overall": overall, "visible": part(~is_hidden), "hidden": part(is_hidden)}


def unsupervised_classes(data: Any) -> tuple[int, ...]:
    """Ground-truth classes with no label among the training rows.

    These are the split's ``hidden_classes`` plus any class left without labels
    otherwise (every class with ``labels=0``; a class whose ``label_fraction`` share
    rounds to 0): all of them are learnt without supervision, which is what Table 1's
    Un-Sup column measures.
    """
    labelled = set(data.y_train[data.y_train >= 0].unique().tolist())
    return tuple(c for c in range(data.num_classes) if c not in labelled)


def choose_mapping(num_model_classes: int, data: Any) -> str:
    """``"identity"`` when ``|y| == K`` and every class has training labels, else ``"majority"``."""
    if num_model_classes == data.num_classes and not unsupervised_classes(data):
        return IDENTITY
    return MAJORITY


def fit_mapping(
    model: SemiSupervisedModel,
    data: Any,
    rule: str | None = None,
    train_predictions: torch.Tensor | None = None,
) -> tuple[str, np.ndarray]:
    """The rule (``choose_mapping`` unless given) and its mapping, fitted on training rows.

    Args:
        model: the trained model.
        data: a ``SemiSupervisedData`` (``x_train``, ``y_train_true`` are used).
        rule: ``"identity"``, ``"majority"`` or ``"hungarian"``; None chooses.
        train_predictions: ``model``'s class per training row, if already computed.
    """
    k_model = model.config.num_classes
    rule = rule or choose_mapping(k_model, data)
    if rule == IDENTITY:
        return rule, np.arange(k_model)
    if rule not in (MAJORITY, HUNGARIAN):
        raise UserError(f"unknown mapping {rule!r}; choose identity, majority or hungarian")
    predicted = train_predictions
    if predicted is None:
        predicted = model.classify(data.x_train).argmax(-1)
    rule_fn = majority_mapping if rule == MAJORITY else hungarian_mapping
    return rule, rule_fn(predicted, data.y_train_true, k_model, data.num_classes)


def clustering_report(model: SemiSupervisedModel, data: Any) -> dict[str, Any]:
    """The trainer's evaluator when classes are hidden, added or unlabelled.

    Pass as ``fit(..., evaluate=clustering_report)``. The mapping rule is
    :func:`choose_mapping`'s: identity (the plain accuracy of
    :func:`~ppl_ssvae.evaluation.metrics.classification_report`) when ``|y| == K`` and every class
    has labels, else majority vote on the training rows.

    Returns:
        ``elbo`` (validation ELBO, as the default evaluator), ``val_accuracy``,
        ``test_accuracy``, ``test_accuracy_visible``, ``test_accuracy_hidden`` (None
        when every class has labels), ``cluster_mapping``; ``test_log_loss`` with the
        identity mapping; ``test_accuracy_hungarian`` (and ``val_accuracy_hungarian``)
        when ``|y| == K`` and the mapping is not the identity.
    """
    hidden = unsupervised_classes(data)
    rule = choose_mapping(model.config.num_classes, data)
    train_pred = None if rule == IDENTITY else model.classify(data.x_train).argmax(-1)
    _, mapping = fit_mapping(model, data, rule, train_pred)
    mapping_t = torch.as_tensor(mapping)
    test_probs = model.classify(data.x_test).cpu()
    test_pred = test_probs.argmax(-1)
    has_val = len(data.x_val) > 0
    val_pred = model.classify(data.x_val).argmax(-1).cpu() if has_val else None
    split = split_accuracy(mapping_t[test_pred], data.y_test, hidden)
    report: dict[str, Any] = {
        "elbo": held_out_elbo(model, data.x_val if has_val else data.x_test),
        "val_accuracy": _mapped_accuracy(mapping_t, val_pred, data.y_val),
        "test_accuracy": split["overall"],
        "test_accuracy_visible": split["visible"],
        "test_accuracy_hidden": split["hidden"],
        "cluster_mapping": rule,
    }
    if rule == IDENTITY:
        report["test_log_loss"] = log_loss(test_probs, data.y_test)
    elif model.config.num_classes == data.num_classes:
        _, one_to_one = fit_mapping(model, data, HUNGARIAN, train_pred)
        one_to_one_t = torch.as_tensor(one_to_one)
        report["val_accuracy_hungarian"] = _mapped_accuracy(one_to_one_t, val_pred, data.y_val)
        report["test_accuracy_hungarian"] = split_accuracy(one_to_one_t[test_pred], data.y_test)[
            "overall"
        ]
    return report


def _mapped_accuracy(mapping: torch.Tensor, pred: torch.Tensor | None, y: torch.Tensor) -> float:
    if pred is None or len(y) == 0:
        return float("nan")
    return (mapping[pred] == y.cpu()).float().mean().item()


# -- confusion matrix ------------------------------------------------------------------------


def confusion_table(
    model: SemiSupervisedModel, data: Any, rule: str | None = None
) -> tuple[np.ndarray, list[str], list[str], str]:
    """Test-set counts of true class (rows) by model class (columns).

    Columns are ordered by the class each model class is mapped to (so a good model
    shows a block diagonal) and labelled ``"y<k> -> <class name>"``.

    Returns:
        ``(counts, row_labels, column_labels, rule)``.
    """
    rule, mapping = fit_mapping(model, data, rule)
    k_model = model.config.num_classes
    pred = model.classify(data.x_test).argmax(-1)
    counts = contingency(pred, data.y_test, k_model, data.num_classes).T
    # Unmapped classes sort last; np.lexsort sorts by its last key first.
    order = np.lexsort((np.arange(k_model), np.where(mapping < 0, data.num_classes, mapping)))
    names = list(data.class_names)
    columns = [f"y{k} -> {names[mapping[k]] if mapping[k] >= 0 else 'none'}" for k in order]
    return counts[:, order], names, columns, rule


def save_confusion_matrix(
    counts: np.ndarray,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    path: str | Path,
    title: str = "",
) -> list[Path]:
    """Write ``<path>.csv`` and, when matplotlib is installed, ``<path>.png``.

    matplotlib is imported here only: it is an optional (dev) dependency and the
    package must import without it.

    Returns:
        The files written.
    """
    path = Path(path)
    csv_path = path.with_suffix(".csv")
    # Written atomically (replaced, not opened): a link planted under the name is replaced,
    # never followed out of the run directory.
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["true \\ model", *column_labels])
    for label, row in zip(row_labels, counts, strict=True):
        writer.writerow([label, *(int(v) for v in row)])
    write_text_atomic(csv_path, text.getvalue())
    written = [csv_path]
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return written
    rows, cols = counts.shape
    # A bare Figure needs no pyplot and no GUI backend, so this works headless.
    fig = Figure(figsize=(max(4.0, 0.45 * cols + 2.0), max(3.5, 0.4 * rows + 1.5)))
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues", aspect="auto")
    ax.set_xticks(range(cols), column_labels, rotation=90, fontsize=7)
    ax.set_yticks(range(rows), row_labels, fontsize=7)
    ax.set_xlabel("model class -> mapped class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title, fontsize=9)
    threshold = counts.max() / 2 if counts.size else 0
    for i in range(rows):
        for j in range(cols):
            if counts[i, j]:
                color = "white" if counts[i, j] > threshold else "black"
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=6, color=color)
    fig.tight_layout()
    png_path = path.with_suffix(".png")
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    write_bytes_atomic(png_path, image.getvalue())
    return [*written, png_path]


# -- end-of-run artefacts --------------------------------------------------------------------


# Rows p(z|y) is traced on: it depends on x only through an upstream latent (AGM-DGM's a).
COMPONENT_KL_ROWS = 256


def write_clustering_artifacts(
    model: SemiSupervisedModel, data: Any, run_dir: str | Path, source: str = ""
) -> dict[str, Any]:
    """Confusion matrix (CSV + PNG) and z-unit activity (JSON) of ``model`` into ``run_dir``.

    Args:
        model: the model to describe (the CLI passes the best checkpoint).
        data: the split it was trained on.
        run_dir: where ``confusion_matrix.{csv,png}`` and ``unit_activity.json`` go.
        source: a note on which weights these are, e.g. ``"best.pt (epoch 7)"``.

    Returns:
        ``{"files": [...], "unit_activity_error": str | None}``; unit activity is
        skipped (with the reason) for models whose z is not a diagonal Gaussian.
    """
    run_dir = Path(run_dir)
    counts, rows, columns, rule = confusion_table(model, data)
    title = f"{model.name}, test set, {rule} mapping" + (f", {source}" if source else "")
    files = save_confusion_matrix(counts, rows, columns, run_dir / "confusion_matrix", title)
    error = None
    try:
        activity = unit_activity(model, data.x_test)
    except UserError as e:
        error = str(e)
    else:
        values = activity.tolist()
        payload = {
            "definition": "Willetts et al. App. C eq. 36: mean over the test set of "
            "E_{y~q(y|x)} KL[q(z_i|x, y*) || p(z_i|y)], y* = argmax q(y|x)",
            "data": "test",
            "rows": len(data.x_test),
            "source": source,
            "activity": values,
            "units_by_activity": sorted(range(len(values)), key=lambda i: -values[i]),
            **_component_kl(model, data.x_test),
        }
        path = run_dir / "unit_activity.json"
        write_text_atomic(path, json.dumps(payload, indent=2))
        files.append(path)
    return {"files": files, "unit_activity_error": error}


def _component_kl(model: SemiSupervisedModel, x: torch.Tensor) -> dict[str, Any]:
    """Per unit, the mean and the largest KL between two components p(z|y) over ordered
    pairs (Willetts et al. App. C): near 0 for a "style" unit shared by every class."""
    kl = prior_component_kl(model, x[:COMPONENT_KL_ROWS])
    k = kl.shape[0]
    off_diagonal = kl[~torch.eye(k, dtype=torch.bool)]  # (K * (K - 1), z_dim)
    return {
        "component_kl_definition": "per unit i, KL[p(z_i|y=j) || p(z_i|y=k)] over ordered "
        "pairs j != k, averaged over the first test rows (constant in x for GM-DGM)",
        "component_kl_mean": off_diagonal.mean(0).tolist(),
        "component_kl_max": off_diagonal.max(0).values.tolist(),
    }
