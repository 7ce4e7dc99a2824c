"""scikit-learn estimators around the library's models.

``SSVAEClassifier`` is a semi-supervised classifier in the ``sklearn.semi_supervised``
convention (``y = -1`` marks an unlabelled row), ``SSVAEClusterer`` a GM-DGM trained
without labels. Both build a :class:`~ppl_ssvae.data.SemiSupervisedData` and call
:func:`ppl_ssvae.training.fit`, so they train exactly as the library does; they work with
``clone``, ``Pipeline`` and ``GridSearchCV``.

``ppl_ssvae.SSVAEClassifier`` / ``ppl_ssvae.SSVAEClusterer`` import this module lazily, so
``import ppl_ssvae`` itself does not import scikit-learn.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, ClusterMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from . import models
from .data import SemiSupervisedData
from .errors import UserError
from .evaluation.metrics import accuracy
from .models.base import SemiSupervisedModel
from .training import FitSettings, RestoreBestWeights, fit

UNLABELLED = -1
LIKELIHOODS = ("auto", "bernoulli", "gaussian")


class _SSVAEBase(BaseEstimator):
    """What the classifier and the clusterer share: data checks, the model, training."""

    # A parameter of the classifier only: the clusterer has no labelled rows to share out.
    labelled_share: str | float | None = None

    def _settings(self, seed: int) -> FitSettings:
        return FitSettings(
            epochs=self.epochs, batch_size=self.batch_size,
            labelled_share=self.labelled_share, lr=self.lr,
            lr_decay=self.lr_decay, seed=seed, device=self.device, progress=bool(self.verbose),
            optimizer=getattr(self, "optimizer", None),
            optimizer_args=getattr(self, "optimizer_args", None),
            lr_scheduler=getattr(self, "lr_scheduler", None),
            lr_scheduler_args=dict(getattr(self, "lr_scheduler_args", None) or {}),
        )  # fmt: skip

    def _likelihood(self, x: np.ndarray) -> str:
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood={self.likelihood!r}; choose one of {LIKELIHOODS}")
        if self.likelihood != "auto":
            return self.likelihood
        # Bernoulli where the data could be pixel intensities (e.g. after MinMaxScaler).
        return "bernoulli" if x.size and x.min() >= 0.0 and x.max() <= 1.0 else "gaussian"

    def _build(self, name: str, input_dim: int, num_classes: int, x: np.ndarray) -> Any:
        args = dict(self.model_args or {})
        args.setdefault("likelihood", self._likelihood(x))
        return models.build(name, guide=self.guide, input_dim=input_dim,
                            num_classes=num_classes, **args)  # fmt: skip

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        if self.model_.config.likelihood == "bernoulli":
            # A scaler fitted on the training rows maps new rows slightly outside [0, 1];
            # the Bernoulli likelihood needs [0, 1].
            t = t.clamp(0.0, 1.0)
        return t

    def _train(
        self, build: Callable[[], SemiSupervisedModel], data: SemiSupervisedData, seed: int
    ) -> None:
        # The initial weights come from the seed too (two fits give the same model), and the
        # caller's torch RNG is left as it was.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = build()
            # The user's callbacks are copied: an estimator's parameters stay as given.
            callbacks = [
                RestoreBestWeights(),
                *copy.deepcopy(list(getattr(self, "callbacks", None) or [])),
            ]
            self.history_ = fit(model, data, self._settings(seed), evaluate=_validation_accuracy,
                                callbacks=callbacks).history  # fmt: skip
        model.eval()
        # The batch-check cache holds weak references, which cannot be pickled.
        model._last_checked_batch = None
        self.model_ = model

    # Pickled as config + weights: Pyro's param store tags each parameter with a weak
    # reference (``.unconstrained``), which cannot be pickled.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: the base returns __dict__ itself
        model = state.pop("model_", None)
        if model is not None:
            state["_model_state"] = (model.to_config(), model.state_dict())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        saved = state.pop("_model_state", None)
        super().__setstate__(state)
        if saved is not None:
            self.model_ = models.from_config(saved[0])
            self.model_.load_state_dict(saved[1])
            self.model_.eval()


def _validation_accuracy(model: SemiSupervisedModel, data: SemiSupervisedData) -> dict[str, float]:
    """The estimators' evaluation: validation accuracy only (NaN without validation rows,
    so the last epoch counts as the best)."""
    if not len(data.x_val) or not model.can_classify:
        return {"val_accuracy": float("nan")}
    return {"val_accuracy": accuracy(model.classify(data.x_val), data.y_val)}


def _data(
    x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, k: int
) -> SemiSupervisedData:
    as_x = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    as_y = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64))  # noqa: E731
    empty_x, empty_y = torch.zeros((0, x.shape[1])), torch.zeros(0, dtype=torch.long)
    return SemiSupervisedData(
        name="sklearn", x_train=as_x(x), y_train=as_y(y), y_train_true=as_y(y),
        x_val=as_x(x_val), y_val=as_y(y_val), x_test=empty_x, y_test=empty_y,
        num_classes=k, class_names=[str(c) for c in range(k)],
    )  # fmt: skip


def _seed(random_state: Any) -> int:
    return int(check_random_state(random_state).randint(2**31 - 1))


def _unlabelled(y: np.ndarray) -> np.ndarray:
    """The unlabelled rows: ``y == -1`` for numeric labels; for other labels ``-1``,
    ``"-1"`` and ``None``, since numpy turns the -1 of a plain list ``["cat", -1]`` into
    the string ``"-1"``, which would otherwise become a class that ``predict`` returns."""
    if y.dtype.kind in "iuf":
        return y == UNLABELLED
    return np.array([_is_unlabelled(v) for v in y], dtype=bool)


def _is_unlabelled(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value == str(UNLABELLED)
    return isinstance(value, (int, float, np.number)) and value == UNLABELLED


def _check_one_kind(labels: np.ndarray) -> None:
    """Text beside numbers (``"cat"`` and ``3``) has no order to sort classes by (sklearn
    fails with a TypeError), and a typo is the likelier cause: refused in one line."""
    if labels.dtype != object:  # one numpy dtype: one kind
        return
    kinds = {
        "text" if isinstance(v, str) else "numbers" if isinstance(v, (int, float, np.number))
        else type(v).__name__
        for v in labels
    }  # fmt: skip
    if len(kinds) > 1:
        raise UserError(
            f"y mixes labels of kinds {', '.join(sorted(kinds))}; give every label the same "
            "kind, and -1 (or None) for an unlabelled row"
        )


class SSVAEClassifier(ClassifierMixin, _SSVAEBase):
    """A semi-supervised VAE as a scikit-learn classifier.

    ``fit(X, y)`` takes ``y = -1`` for unlabelled rows (as ``sklearn.semi_supervised``;
    beside text labels ``"-1"`` and ``None`` too); the other labels may be any sortable
    values of one kind (strings, non-contiguous ints): they are mapped to class ids and
    back (``classes_``). For model selection it holds out
    ``validation_fraction`` of the labelled rows (or takes ``validation_data=(X, y)``) and
    keeps the epoch with the best validation accuracy.

    Args:
        model: a name in :data:`ppl_ssvae.models.MODELS` (m2, adgm, gmdgm, ...).
        guide: the guide family of z (gaussian, maf, pyro-iaf...).
        epochs: as :class:`ppl_ssvae.training.FitSettings`, like the seven below (None:
            the model's recommendation, else the library's default).
        batch_size: as ``FitSettings``.
        lr: as ``FitSettings``.
        lr_decay: as ``FitSettings``.
        optimizer: as ``FitSettings``.
        optimizer_args: as ``FitSettings``.
        lr_scheduler: as ``FitSettings``.
        lr_scheduler_args: as ``FitSettings``.
        callbacks: training callbacks (``ppl_ssvae.training``), e.g. ``[KLWarmup(10)]``;
            each fit uses fresh copies.
        labelled_share: the labelled rows' share of each batch: ``"natural"`` (the data's
            own), ``"1:1"`` (Jurasiński's 100 + 100; with few labels it is what lets M2
            and the latent-classifier model learn from them), a number in [0, 1), or None for the library's protocol
            default (:func:`ppl_ssvae.protocol.default_labelled_share`).
        validation_fraction: share of the labelled rows held out (0: none; then the last
            epoch is kept).
        validation_data: ``(X_val, y_val)`` to select on instead (no rows are held out).
        likelihood: ``"auto"`` (Bernoulli when every input is in [0, 1], else Gaussian),
            ``"bernoulli"`` or ``"gaussian"``.
        random_state: seeds the split, the initial weights, batches and z samples.
        model_args: further config fields of the model (``{"z_dim": 10, "hidden": [64]}``).
        device: where to train (``"cpu"``, ``"cuda"``, ``"auto"``).
        verbose: show fit's progress.

    Attributes:
        classes_: the labels, sorted; ``predict`` returns them.
        model_: the trained :class:`~ppl_ssvae.models.SemiSupervisedModel` (for
            ``ppl_ssvae.evaluation.inspect.posterior`` and friends; class ids index ``classes_``).
        history_: fit's per-epoch records.
    """

    def __init__(
        self,
        model: str = "m2",
        guide: str = "gaussian",
        epochs: int = 30,
        batch_size: int = 200,
        lr: float | None = None,
        lr_decay: float | None = None,
        labelled_share: str | float | None = None,
        validation_fraction: float = 0.1,
        validation_data: tuple[Any, Any] | None = None,
        likelihood: str = "auto",
        random_state: Any = 0,
        model_args: dict[str, Any] | None = None,
        device: str = "cpu",
        verbose: bool = False,
        optimizer: str | None = None,
        optimizer_args: dict[str, Any] | None = None,
        lr_scheduler: str | None = None,
        lr_scheduler_args: dict[str, Any] | None = None,
        callbacks: list[Any] | None = None,
    ) -> None:
        self.model = model
        self.guide = guide
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_decay = lr_decay
        self.labelled_share = labelled_share
        self.validation_fraction = validation_fraction
        self.validation_data = validation_data
        self.likelihood = likelihood
        self.random_state = random_state
        self.model_args = model_args
        self.device = device
        self.verbose = verbose
        self.optimizer = optimizer
        self.optimizer_args = optimizer_args
        self.lr_scheduler = lr_scheduler
        self.lr_scheduler_args = lr_scheduler_args
        self.callbacks = callbacks

    def fit(self, X: Any, y: Any) -> SSVAEClassifier:
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=False)
        unlabelled = _unlabelled(y)
        labels = y[~unlabelled]
        if not len(labels):
            raise ValueError("fit needs at least one labelled row (y != -1)")
        _check_one_kind(labels)
        check_classification_targets(labels)
        self.classes_ = np.unique(labels)
        ids = np.full(len(y), UNLABELLED, dtype=np.int64)
        ids[~unlabelled] = np.searchsorted(self.classes_, labels)
        seed = _seed(self.random_state)
        x_train, y_train, x_val, y_val = self._validation_split(X, ids, seed)
        data = _data(x_train, y_train, x_val, y_val, len(self.classes_))
        self._train(lambda: self._build(self.model, X.shape[1], len(self.classes_), X), data, seed)
        return self

    def _validation_split(
        self, x: np.ndarray, ids: np.ndarray, seed: int
    ) -> tuple[np.ndarray, ...]:
        if self.validation_data is not None:
            x_val, y_val = self.validation_data
            x_val = validate_data(self, x_val, reset=False, dtype=np.float64)
            y_val = np.asarray(y_val)
            unknown = ~np.isin(y_val, self.classes_)
            if unknown.any():
                raise ValueError(f"validation_data has labels not in y: {set(y_val[unknown])}")
            return x, ids, x_val, np.searchsorted(self.classes_, y_val)
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction={self.validation_fraction} must be in [0, 1)")
        labelled = np.flatnonzero(ids >= 0)
        # At least one labelled row stays for training.
        n_val = min(int(round(self.validation_fraction * len(labelled))), len(labelled) - 1)
        held = np.random.default_rng(seed).permutation(labelled)[:n_val]
        keep = np.ones(len(x), dtype=bool)
        keep[held] = False
        return x[keep], ids[keep], x[held], ids[held]

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.model_.classify(self._tensor(X)).cpu().double().numpy()

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.classes_[self.predict_proba(X).argmax(1)]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


class SSVAEClusterer(ClusterMixin, _SSVAEBase):
    """GM-DGM (Willetts et al. eq. 28-31) trained without labels: a Gaussian mixture in
    the latent space of a VAE; ``predict`` gives the most probable component of q(y|x).

    Args:
        n_clusters: mixture components.

    The other arguments are those of :class:`SSVAEClassifier` (``model`` fixed to
    ``"gmdgm"``).

    Attributes:
        labels_: the cluster of every training row.
        model_: the trained GM-DGM.
    """

    def __init__(
        self,
        n_clusters: int = 10,
        guide: str = "gaussian",
        epochs: int = 30,
        batch_size: int = 200,
        lr: float = 3e-4,
        lr_decay: float = 1.0,
        likelihood: str = "auto",
        random_state: Any = 0,
        model_args: dict[str, Any] | None = None,
        device: str = "cpu",
        verbose: bool = False,
    ) -> None:
        self.n_clusters = n_clusters
        self.guide = guide
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_decay = lr_decay
        self.likelihood = likelihood
        self.random_state = random_state
        self.model_args = model_args
        self.device = device
        self.verbose = verbose

    def fit(self, X: Any, y: Any = None) -> SSVAEClusterer:
        X = validate_data(self, X, dtype=np.float64)
        n = self.n_clusters  # True is an int to Python, not a number of clusters
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n_clusters={self.n_clusters!r} must be an integer >= 1")
        seed = _seed(self.random_state)
        none = np.full(len(X), UNLABELLED)
        data = _data(X, none, X[:0], none[:0], self.n_clusters)
        self._train(lambda: self._build("gmdgm", X.shape[1], int(self.n_clusters), X), data, seed)
        self.labels_ = self.predict(X)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.model_.classify(self._tensor(X)).cpu().double().numpy()

    def predict(self, X: Any) -> np.ndarray:
        return self.predict_proba(X).argmax(1)
