"""Seeded semi-supervised splits: which training labels are kept, validation, preprocessing.

Unlabelled rows carry ``y = -1`` (scikit-learn's ``semi_supervised`` convention).
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError, check_seed
from .dataset import Dataset

UNLABELLED = -1


@dataclass
class SemiSupervisedData:
    """Tensors ready for training.

    Attributes:
        x_train: (N, D) float32 training inputs (labelled and unlabelled rows).
        y_train: (N,) int64 kept labels, ``-1`` where the label is hidden.
        y_train_true: (N,) int64 true labels (for clustering metrics and audits only).
        x_val, y_val: labelled validation rows (model selection only).
        x_test, y_test: the dataset's test split.
        feature_mask: boolean mask over the original features that were kept
            (``None`` when every feature is kept); ``expand`` puts samples back.
        extra: the dataset's metadata (``Dataset.extra``: sequence layout, factors...).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    y_train_true: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    class_names: list[str]
    hidden_classes: tuple[int, ...] = ()
    support: str = "unit"
    image_shape: tuple[int, ...] | None = None
    feature_mask: np.ndarray | None = None
    summary: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    # The dataset and split arguments that rebuild this split (``load_recipe``); None when
    # the dataset was not loaded by name.
    recipe: dict | None = None

    @property
    def input_dim(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def labelled_mask(self) -> torch.Tensor:
        """``(N,)``: the rows with a label; with several label factors ``(N, F)`` (the
        pi-VAE's heads), the rows with any of them, as the batches count them."""
        known = self.y_train >= 0
        return known.any(-1) if known.dim() == 2 else known

    def expand(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Map rows over kept features back to the original feature layout."""
        if self.feature_mask is None:
            return x
        full = x.new_full((*x.shape[:-1], self.feature_mask.size), fill)
        full[..., torch.as_tensor(self.feature_mask)] = x
        return full


def parse_class_ids(
    value: str | int | Iterable[int | str] | None,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> tuple[int, ...]:
    """Class ids from ``"1,2"``, ``[1, 2]``, ``3`` or class names (``"Shirt,Bag"``).

    The one parser for every place that takes a set of classes (``hidden_classes``, the
    CLI's ``--hidden-classes``): a string is split on commas, never into characters, so
    ``"12"`` is class 12, not classes 1 and 2. ``None`` and ``""`` mean no class.

    Returns:
        The sorted distinct ids, each in ``0..num_classes - 1``.

    Raises:
        UserError: for an unknown name, an id out of range, or a value of another type.
    """
    if value is None:
        return ()
    if hasattr(value, "tolist"):  # numpy and torch arrays and scalars
        value = value.tolist()
    if isinstance(value, str):
        items: list = [part.strip() for part in value.split(",")] if value.strip() else []
    elif isinstance(value, Iterable):
        items = list(value)
    else:
        items = [value]
    ids = {_class_id(item, num_classes, class_names) for item in items}
    return tuple(sorted(ids))


def _class_id(item: object, k: int, names: Sequence[str] | None) -> int:
    hint = f"give class ids 0..{k - 1}" + (" or class names" if names else "")
    hint += " separated by commas, e.g. '1,2'"
    if isinstance(item, str):
        if item.lstrip("-").isdigit():
            item = int(item)
        elif names is not None and item in names:
            return list(names).index(item)
        else:
            raise UserError(f"class {item!r} not understood; {hint}")
    if isinstance(item, bool):
        raise UserError(f"class {item!r} is not a class id; {hint}")
    try:
        class_id = operator.index(item)
    except TypeError:
        raise UserError(f"class {item!r} is not a class id; {hint}") from None
    if not 0 <= class_id < k:
        raise UserError(f"class {class_id} out of range; {hint}")
    return class_id


def _is_count(value: object) -> bool:
    """An integer (numpy's too) that is not a bool: 20.0 would reach numpy as a size, and
    True would be 1."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """A finite real number (numpy's too) that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _per_class_counts(
    y: np.ndarray,
    visible: list[int],
    labels: int | None,
    label_fraction: float | None,
) -> dict[int, int]:
    if labels is not None and label_fraction is not None:
        raise UserError("give either labels=N or label_fraction=f, not both")
    if labels is None and label_fraction is None:
        return {c: int((y == c).sum()) for c in visible}  # every visible label is kept
    if label_fraction is not None:
        if not (_is_number(label_fraction) and 0.0 <= label_fraction <= 1.0):
            raise UserError(f"label_fraction={label_fraction!r} must be a number in [0, 1]")
        if label_fraction > 0 and not visible:
            raise UserError(
                f"label_fraction={label_fraction} requested but every class is hidden; "
                "drop label_fraction or hide fewer classes"
            )
        return {c: int(round(label_fraction * (y == c).sum())) for c in visible}
    if not _is_count(labels) or labels < 0:
        raise UserError(f"labels={labels!r} must be an integer >= 0")
    if labels == 0:
        return {c: 0 for c in visible}
    if not visible:
        raise UserError(f"labels={labels} requested but every class is hidden")
    if labels % len(visible):
        raise UserError(
            f"labels={labels} is not divisible by the {len(visible)} labelled classes; "
            f"use a multiple of {len(visible)} so each class gets the same number"
        )
    per_class = labels // len(visible)
    for c in visible:
        available = int((y == c).sum())
        if available < per_class:
            raise UserError(
                f"class {c} has only {available} training examples but {per_class} labels per "
                f"class were requested; ask for at most {available * len(visible)} labels"
            )
    return {c: per_class for c in visible}


def semi_supervised_split(
    dataset: Dataset,
    *,
    labels: int | None = None,
    label_fraction: float | None = None,
    hidden_classes: str | Sequence[int | str] = (),
    validation_size: int | None = None,
    std_threshold: float | None = None,
    seed: int = 0,
) -> SemiSupervisedData:
    """Carve validation rows, choose which training labels are kept, preprocess.

    Args:
        labels: keep exactly ``labels / K_visible`` labels per visible class.
        label_fraction: keep this fraction of each visible class's labels instead.
            With neither, every visible label is kept.
        hidden_classes: classes whose labels are all removed (semi-unsupervised
            learning, Willetts et al. sec 6.1): ids, names or a comma-separated string,
            as :func:`parse_class_ids` reads them.
        validation_size: labelled validation rows taken from the training set
            (default: the dataset's, e.g. 10,000 for Fashion-MNIST).
        std_threshold: keep only features whose training-set std exceeds this
            (Willetts et al. App. B use 0.1).
        seed: makes the split reproducible.
    """
    check_seed(seed)
    dataset.validate()  # again: fields may have been reassigned since construction
    k = dataset.num_classes
    hidden = parse_class_ids(hidden_classes, k, dataset.class_names)
    rng = np.random.default_rng(seed)
    val_idx, train_idx = _carve_validation(dataset, validation_size, rng)
    n_val = len(val_idx)
    x_tr, y_true = dataset.x_train[train_idx], dataset.y_train[train_idx]
    visible = [c for c in range(k) if c not in hidden]
    counts = _per_class_counts(y_true, visible, labels, label_fraction)
    y_kept = _keep_labels(y_true, counts, rng)
    x_tr, x_val, x_te, feature_mask = _select_features(
        std_threshold, x_tr, dataset.x_train[val_idx], dataset.x_test
    )

    summary = {
        "train_rows": int(len(x_tr)),
        "labelled_rows": int((y_kept >= 0).sum()),
        "labels_per_class": {int(c): int(v) for c, v in counts.items()},
        "validation_rows": int(n_val),
        "test_rows": int(len(x_te)),
        "input_dim": int(x_tr.shape[1]),
    }
    as_x = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long)  # noqa: E731
    return SemiSupervisedData(
        name=dataset.name,
        x_train=as_x(x_tr),
        y_train=as_y(y_kept),
        y_train_true=as_y(y_true),
        x_val=as_x(x_val),
        y_val=as_y(dataset.y_train[val_idx]),
        x_test=as_x(x_te),
        y_test=as_y(dataset.y_test),
        num_classes=k,
        class_names=list(dataset.class_names),
        hidden_classes=hidden,
        support=dataset.support,
        image_shape=dataset.image_shape,
        feature_mask=feature_mask,
        summary=summary,
        extra=dataset.extra,
        recipe=None
        if dataset.origin is None
        else {
            **dataset.origin,
            "labels": labels,
            "label_fraction": label_fraction,
            "hidden_classes": list(hidden),
            "validation_size": validation_size,
            "std_threshold": std_threshold,
            "seed": seed,
        },  # fmt: skip
    )


def _carve_validation(
    dataset: Dataset, validation_size: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The validation and training rows' indices (sorted), drawn first from ``rng``."""
    n = len(dataset.x_train)
    n_val = dataset.default_validation_size if validation_size is None else validation_size
    if not (_is_count(n_val) and 0 <= n_val < n):
        raise UserError(
            f"validation_size={n_val!r} must be an integer in [0, {n - 1}] for {dataset.name}"
        )
    order = rng.permutation(n)
    return np.sort(order[:n_val]), np.sort(order[n_val:])


def _keep_labels(y_true: np.ndarray, counts: dict, rng: np.random.Generator) -> np.ndarray:
    """The training labels with all but ``counts[c]`` random rows of each class c hidden."""
    y_kept = np.full_like(y_true, UNLABELLED)
    for c, count in counts.items():
        members = np.flatnonzero(y_true == c)
        y_kept[rng.choice(members, size=count, replace=False)] = c
    return y_kept


def _select_features(
    std_threshold: float | None, x_tr: np.ndarray, x_val: np.ndarray, x_te: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Only the features whose training std exceeds ``std_threshold`` (Willetts App. B),
    and the mask that chose them (None: every feature)."""
    if std_threshold is None:
        return x_tr, x_val, x_te, None
    if not _is_number(std_threshold):
        raise UserError(f"std_threshold={std_threshold!r} must be a number")
    mask = x_tr.std(axis=0) > std_threshold
    if not mask.any():
        raise UserError(f"std_threshold={std_threshold} removes every feature; lower it")
    return x_tr[:, mask], x_val[:, mask], x_te[:, mask], mask


SPLIT_ARGUMENTS = ("labels", "label_fraction", "hidden_classes", "validation_size",
                   "std_threshold", "seed")  # fmt: skip


def load_recipe(recipe: dict) -> SemiSupervisedData:
    """The split a ``SemiSupervisedData.recipe`` describes (what config.json records under
    ``data.recipe``): the named dataset loaded again and split with the same arguments."""
    from .datasets import load

    if not isinstance(recipe, dict) or "dataset" not in recipe:
        raise UserError(f"a data recipe needs at least a 'dataset' name, got {recipe!r}")
    dataset = load(recipe["dataset"], recipe.get("data_dir"))
    arguments = {k: recipe[k] for k in SPLIT_ARGUMENTS if recipe.get(k) is not None}
    return semi_supervised_split(dataset, **arguments)
