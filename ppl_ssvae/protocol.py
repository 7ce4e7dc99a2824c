"""Protocol defaults shared by ``fit``, the CLI and the experiments.

How a run is set up from its data — the labelled share of a batch, the class prior under
the semi-unsupervised protocol, whether accuracy is cluster-and-label, which evaluator
runs after each epoch, how a model's networks see image or sequence layouts — is decided
here, once, from the model and the data, so that a Python user, an experiment script and
``ppl-ssvae train`` get the same run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pyro

from .data import SemiSupervisedData
from .errors import UserError, check_seed
from .models import MODELS, build, semi_unsupervised_prior
from .models.base import SemiSupervisedModel

Evaluator = Callable[[SemiSupervisedModel, SemiSupervisedData], dict[str, Any]]


def is_clustering(num_model_classes: int, data: SemiSupervisedData) -> bool:
    """Hidden classes, extra model classes or no labels at all: accuracy is measured by
    cluster-and-label (Willetts et al. sec 6.3)."""
    return bool(
        data.hidden_classes
        or num_model_classes > data.num_classes
        or not bool(data.labelled_mask.any())
    )


def default_labelled_share(num_model_classes: int, data: SemiSupervisedData) -> str:
    """Willetts et al. (App. B) train with 100 labelled + 100 unlabelled rows per batch.
    Under their protocol (hidden or extra classes, ~1% labelled rows) the natural share puts
    ~2 labelled rows in a batch of 200 and q(y|x) collapsed onto one class in our runs, so
    there the default is 1:1; elsewhere it is the data's natural share."""
    protocol = bool(data.hidden_classes) or num_model_classes > data.num_classes
    return "1:1" if protocol and bool(data.labelled_mask.any()) else "natural"


def default_prior(num_model_classes: int, data: SemiSupervisedData) -> tuple[float, ...] | None:
    """Eq. 34-35 of Willetts et al. over the classes that kept labels; None means uniform.

    Without labels this is the uniform prior of the paper's unsupervised runs. With every
    class labelled and extra classes added, eq. 34 leaves the extra classes no mass, so
    the prior stays uniform rather than refusing the run.
    """
    if not is_clustering(num_model_classes, data):
        return None
    main = data.y_train if data.y_train.dim() == 1 else data.y_train[:, 0]  # the class factor
    visible = sorted(set(main[main >= 0].tolist()))
    if len(visible) == data.num_classes:
        return None
    return semi_unsupervised_prior(num_model_classes, visible, data.num_classes)


def evaluators() -> dict[str, Evaluator]:
    """The evaluators a run may record by name (imported lazily: clustering pulls sklearn)."""
    from .evaluation.clustering import clustering_report
    from .evaluation.metrics import classification_report, elbo_report

    return {
        "classification": classification_report,
        "clustering": clustering_report,
        "elbo": elbo_report,
    }


def default_evaluator_name(model: SemiSupervisedModel, data: SemiSupervisedData) -> str:
    """What ``fit`` evaluates after each epoch unless told otherwise."""
    if not model.can_classify:
        return "elbo"
    return "clustering" if is_clustering(model.config.num_classes, data) else "classification"


def evaluator_name(evaluate: Evaluator) -> str:
    """The registry name of ``evaluate``, or ``custom:module.name`` for a user's function
    (recorded so that a resume from the CLI can refuse to guess it)."""
    for name, fn in evaluators().items():
        if fn is evaluate:
            return name
    return f"custom:{getattr(evaluate, '__module__', '?')}.{getattr(evaluate, '__qualname__', '?')}"


def data_layout(model_name: str, data: SemiSupervisedData) -> dict[str, Any]:
    """Image and sequence layout of the data, for models whose networks need it (CNN / RNN
    pi-VAE); explicit model arguments still override."""
    fields = _config_fields(model_name)
    layout: dict[str, Any] = {}
    if "image_shape" in fields and data.image_shape and data.feature_mask is None:
        shape = tuple(data.image_shape)
        layout["image_shape"] = (1, *shape) if len(shape) == 2 else shape
    if "sequence_channels" in fields and "sequence_channels" in data.extra:
        layout["sequence_channels"] = int(data.extra["sequence_channels"])
    return layout


def model_config(
    name: str, data: SemiSupervisedData, extra_classes: int = 0, **options: Any
) -> dict[str, Any]:
    """The config of model ``name`` for ``data``: its sizes, the likelihood the data's
    support calls for, the semi-unsupervised prior under that protocol, the data layout;
    ``options`` (model config fields) override every default, ``None`` included: for
    ``sigma2`` or ``init_std`` it is a setting (a learned variance, the layers' own
    initialisation), not "unset"."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if not isinstance(extra_classes, int) or extra_classes < 0:
        raise UserError(f"extra_classes={extra_classes!r} must be an integer >= 0")
    num_classes = data.num_classes + extra_classes
    config: dict[str, Any] = {"input_dim": data.input_dim, "num_classes": num_classes}
    prior = default_prior(num_classes, data)
    if prior is not None and "prior" in _config_fields(name):
        config["prior"] = prior
    config["likelihood"] = "bernoulli" if data.support == "unit" else "gaussian"
    config.update(data_layout(name, data))
    config.update(options)
    return config


def build_for_data(
    name: str, data: SemiSupervisedData, seed: int = 0, extra_classes: int = 0, **options: Any
) -> SemiSupervisedModel:
    """``models.build`` with ``model_config``, the initial weights drawn from ``seed`` (so a
    seed run alone equals the same seed inside a multi-seed run)."""
    check_seed(seed)
    config = model_config(name, data, extra_classes, **options)
    pyro.set_rng_seed(seed)
    return build(name, **config)


def _config_fields(name: str) -> set[str]:
    if name not in MODELS:
        return set()
    return {f.name for f in dataclasses.fields(MODELS[name].config_class)}
