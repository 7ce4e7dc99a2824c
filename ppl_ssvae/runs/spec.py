"""``RunSpec``: one typed definition of a training run.

A run is a data recipe, a model (its registry name, its config fields, the guide), the
training settings (:class:`~ppl_ssvae.training.FitSettings`), the evaluator and the
callbacks. It is built once (from argv, a TOML/YAML file or Python), validated once,
written once to config.json under ``spec`` and read back by
:func:`ppl_ssvae.runs.load_run`; the CLI's options are generated from these fields::

    spec = RunSpec.from_dict({"data": {"dataset": "digits", "labels": 50},
                              "model": {"name": "m2", "options": {"z_dim": 8}},
                              "fit": {"epochs": 3}})
    result = spec.train(out="runs/m2-digits")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError, check_seed, require
from ..training import Callback, FitResult, FitSettings, build_callback, fit

SPEC_VERSION = 1


@dataclass
class DataSpec:
    """Which data a run trains on and which labels it keeps.

    Attributes:
        dataset: a dataset name (``ppl_ssvae.data.DATASETS``).
        data_dir: directory with the dataset's files (IDX for fashion-mnist / mnist); else
            $PPL_SSVAE_DATA, then /usr/share/datasets/fashion-mnist.
        labels: keep exactly N labels, N/K per labelled class (0 = clustering).
        label_fraction: keep this fraction of each labelled class's labels instead.
        hidden_classes: comma-separated classes whose labels are all removed.
        validation_size: labelled validation rows carved from training [dataset default].
        std_threshold: keep only features with training std above this (0.1 in
            Willetts et al.).
    """

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    labels: int | None = None
    label_fraction: float | None = None
    hidden_classes: str = ""
    validation_size: int | None = None
    std_threshold: float | None = None

    def recipe(self, seed: int) -> dict[str, Any]:
        """The recipe ``ppl_ssvae.data.load_recipe`` rebuilds the split from."""
        return {**dataclasses.asdict(self), "seed": seed}


@dataclass
class ModelSpec:
    """The model: a registry name and its config fields.

    Attributes:
        name: the model family (``ppl_ssvae.models.MODELS``, plus registered ones).
        guide: the guide family of every continuous latent (``ppl_ssvae.guides.GUIDES``).
        guide_args: arguments of the guide family.
        extra_classes: N_aug classes added beyond the dataset's K, |y| = K + N_aug
            (Willetts et al. sec 6.1).
        options: the model's other config fields (z_dim, hidden, alpha, ...); fields the
            data decides (input size, classes, likelihood, prior) are filled in from it
            unless given.
    """

    name: str = "m2"
    guide: str | None = None
    guide_args: dict[str, Any] = field(default_factory=dict)
    extra_classes: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def config_options(self) -> dict[str, Any]:
        options = dict(self.options)
        if self.guide is not None:
            options["guide"] = self.guide
        if self.guide_args:
            options["guide_args"] = dict(self.guide_args)
        return options


@dataclass
class CallbackSpec:
    """A registered callback by name and its arguments (``register_callback``)."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Callback:
        return build_callback(self.name, self.args)


SECTIONS = {"data": DataSpec, "model": ModelSpec, "fit": FitSettings}


@dataclass
class RunSpec:
    """Everything that defines a training run; see the module docstring."""

    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    fit: FitSettings = field(default_factory=FitSettings)
    callbacks: list[CallbackSpec] = field(default_factory=list)
    evaluator: str | None = None
    # A trained run whose shared weights the model starts from (``fit(init_from=)``).
    init_from: str | None = None

    # -- JSON round trip -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        fit_values = self.fit.to_dict()
        return {
            "version": SPEC_VERSION,
            "data": dataclasses.asdict(self.data),
            "model": dataclasses.asdict(self.model),
            "fit": fit_values,
            "callbacks": [dataclasses.asdict(c) for c in self.callbacks],
            "evaluator": self.evaluator,
            "init_from": self.init_from,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], check_callbacks: bool = True) -> RunSpec:
        """From ``to_dict``'s form (or a config file's): unknown sections or fields are
        refused in one line that names them; missing ones take their defaults. The
        callbacks are built once to check them unless ``check_callbacks`` is false (a run
        read back for evaluation needs none of them)."""
        require(isinstance(values, dict), f"a run spec is a mapping of sections, got {values!r}")
        values = dict(values)
        version = values.pop("version", SPEC_VERSION)
        require(version == SPEC_VERSION, f"run spec version {version!r} is not one this "
                f"ppl-ssvae reads ({SPEC_VERSION}); upgrade ppl-ssvae")  # fmt: skip
        known = {*SECTIONS, "callbacks", "evaluator", "init_from"}
        unknown = sorted(set(values) - known)
        require(not unknown, f"unknown run spec sections {unknown}; choose from {sorted(known)}")
        sections = {name: _section(kind, {} if values.get(name) is None else values[name], name)
                    for name, kind in SECTIONS.items()}  # fmt: skip
        callbacks = [_callback(c) for c in values.get("callbacks") or []]
        init_from = values.get("init_from")
        require(init_from is None or isinstance(init_from, str),
                f"init_from={init_from!r} must be a run directory's path")  # fmt: skip
        spec = cls(**sections, callbacks=callbacks, evaluator=values.get("evaluator"),
                   init_from=init_from)  # fmt: skip
        spec.validate(check_callbacks)
        return spec

    def validate(self, check_callbacks: bool = True) -> None:
        """The checks that need no data: settings, seed, names of callbacks."""
        self.fit.validate()
        check_seed(self.fit.seed)
        require(isinstance(self.model.options, dict), "model options must be a mapping")
        require(isinstance(self.model.guide_args, dict), "guide_args must be a mapping")
        for callback in self.callbacks if check_callbacks else []:
            callback.build()

    # -- building the run ---------------------------------------------------------------------
    def load_data(self) -> Any:
        from ..data import load_recipe

        return load_recipe(self.data.recipe(self.fit.seed))

    def build_model(self, data: Any) -> Any:
        """The model for ``data``, its initial weights drawn from the run's seed."""
        from ..protocol import build_for_data

        m = self.model
        return build_for_data(m.name, data, self.fit.seed, m.extra_classes, **m.config_options())

    def build_callbacks(self) -> list[Callback]:
        return [c.build() for c in self.callbacks]

    def evaluator_function(self) -> Any:
        from ..protocol import evaluators

        if self.evaluator is None:
            return None
        if self.evaluator not in evaluators():
            raise UserError(
                f"unknown evaluator {self.evaluator!r}; choose one of {', '.join(evaluators())}"
            )
        return evaluators()[self.evaluator]

    def train(
        self, out: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
        data: Any = None, model: Any = None,
    ) -> FitResult:  # fmt: skip
        """Build the data and model this spec describes and train them (``fit``), recording
        the spec in config.json."""
        data = data if data is not None else self.load_data()
        model = model if model is not None else self.build_model(data)
        return fit(
            model, data, self.fit, out=out, resume=resume, overwrite=overwrite,
            evaluate=self.evaluator_function(), callbacks=self.build_callbacks(),
            run_config={"spec": self.to_dict()}, init_from=None if resume else self.init_from,
        )  # fmt: skip


def _section(kind: type, values: Any, name: str) -> Any:
    require(
        isinstance(values, dict), f"run spec section [{name}] must be a mapping, got {values!r}"
    )
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - names)
    require(not unknown, f"unknown settings {unknown} in [{name}]; choose from {sorted(names)}")
    return kind(**values)


def _callback(value: Any) -> CallbackSpec:
    if isinstance(value, str):
        return CallbackSpec(value)
    require(isinstance(value, dict) and "name" in value,
            f"a callback is a name or {{name = ..., args = {{...}}}}, got {value!r}")  # fmt: skip
    unknown = sorted(set(value) - {"name", "args"})
    require(not unknown, f"a callback takes 'name' and 'args', not {unknown}")
    return CallbackSpec(value["name"], dict(value.get("args") or {}))
