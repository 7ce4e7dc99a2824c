"""``Dataset``: a labelled dataset with a fixed train/test split, checked when built.

Every loader (``datasets``, ``sequences``, ``shapes``, ``smallnorb``, ``uci_har``) builds
one; it lives in a module of its own so that the loaders import it and ``datasets``
imports the loaders, with no import circle between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError

# The environment variable that points at the directory of a user's dataset files.
DATA_ENV = "PPL_SSVAE_DATA"


@dataclass
class Dataset:
    """A labelled dataset with a fixed train/test split, checked when it is built.

    Attributes:
        x_train, x_test: float32 arrays of shape (N, D); values in [0, 1] when
            ``support == "unit"``.
        y_train, y_test: int64 class ids in [0, num_classes).
        support: ``"unit"`` (pixel intensities, Bernoulli likelihood by default) or
            ``"real"`` (unbounded features, Gaussian likelihood by default).
        default_validation_size: rows carved from the training set for validation.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    image_shape: tuple[int, ...] | None = None
    support: str = "unit"
    default_validation_size: int = 0
    source: str = ""
    extra: dict = field(default_factory=dict)
    # How to load it again: {"dataset": name, "data_dir": ...}, set by ``load``; None for a
    # Dataset built by hand, which a run directory cannot rebuild by itself.
    origin: dict | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse shapes, dtypes and labels that would otherwise fail far from their cause.

        A Dataset holds true labels only (0..K-1, no -1): ``semi_supervised_split`` is
        where labels are hidden. Labels are stored as int64, since the split writes -1
        into a copy of them. Zero test rows are allowed (their metrics are NaN).
        """
        if not self.class_names:
            raise UserError(f"{self.name}: class_names is empty; give one name per class")
        k = self.num_classes
        self.x_train, self.y_train = _checked_rows(
            self.name, "train", self.x_train, self.y_train, k
        )
        self.x_test, self.y_test = _checked_rows(self.name, "test", self.x_test, self.y_test, k)
        if len(self.x_train) == 0:
            raise UserError(f"{self.name}: x_train has no rows; a dataset needs training rows")
        d_train, d_test = self.x_train.shape[1], self.x_test.shape[1]
        if d_test != d_train:
            raise UserError(
                f"{self.name}: test rows have {d_test} features but training rows {d_train}; "
                "give both splits the same image size / feature set"
            )
        if self.image_shape is not None and int(np.prod(self.image_shape)) != d_train:
            raise UserError(
                f"{self.name}: image_shape {tuple(self.image_shape)} does not hold the "
                f"{d_train} features per row; fix image_shape or pass None"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_dim(self) -> int:
        return int(self.x_train.shape[1])


def _checked_rows(
    name: str, split: str, x: np.ndarray, y: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """One split's ``(x, y)`` as arrays, or a one-line UserError naming what is wrong."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.dtype.kind not in "biuf":
        raise UserError(
            f"{name}: x_{split} must be a numeric (rows, features) array, got {x.dtype} of "
            f"shape {x.shape}; flatten images with x.reshape(len(x), -1)"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise UserError(
            f"{name}: y_{split} has shape {y.shape} but x_{split} has {len(x)} rows; "
            "give one class id per row"
        )
    if y.dtype.kind not in "iu":
        raise UserError(
            f"{name}: y_{split} holds {y.dtype} values; class ids must be integers "
            "(convert with y.astype(np.int64))"
        )
    if len(y) and (y.min() < 0 or y.max() >= k):
        hint = (
            "a Dataset holds true labels; hide labels with semi_supervised_split "
            "(labels=, label_fraction=, hidden_classes=)"
            if y.min() == -1
            else "fix the labels or class_names"
        )
        raise UserError(
            f"{name}: y_{split} has labels {y.min()}..{y.max()} but the {k} classes are "
            f"0..{k - 1}; {hint}"
        )
    return x, y.astype(np.int64, copy=False)
