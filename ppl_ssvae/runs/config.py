"""A run's config.json checked entry by entry before anything is rebuilt from it.

config.json is read back from a directory that anyone may have edited: a damaged or
crafted entry (a model without ``input_dim``, ``labels: "abc"`` in the data recipe) must
be one line naming it, never a traceback from inside a model or a split. Each kind of run
(``ppl_ssvae.runs.kinds.KINDS``) has one check in ``CHECKS``; ``RunDir.read_config`` runs it.
Entries are checked the way ``FitSettings.from_dict`` reads them: keys of later versions
are refused, missing optional ones take their defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..errors import UserError, is_finite_number, is_int, require
from ..models import MODELS
from ..training.settings import RESUMABLE, FitSettings

# Checks of the JSON value a dataclass field was saved as, by the field's annotation.
_TYPES: dict[str, Callable[[Any], bool]] = {
    "int": is_int,
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "None": lambda v: v is None,
    "dict": lambda v: isinstance(v, dict),
    "Any": lambda v: True,
}

# The data recipe (``SemiSupervisedData.recipe``, read by ``data.load_recipe``).
RECIPE: dict[str, Callable[[Any], bool]] = {
    "dataset": lambda v: isinstance(v, str),
    "data_dir": lambda v: v is None or isinstance(v, str),
    "labels": lambda v: v is None or (is_int(v) and v >= 0),
    "label_fraction": lambda v: v is None or is_finite_number(v),
    "hidden_classes": lambda v: (
        isinstance(v, (str, list)) and all(is_int(c) or isinstance(c, str) for c in v)
    ),
    "validation_size": lambda v: v is None or (is_int(v) and v >= 0),
    "std_threshold": lambda v: v is None or is_finite_number(v),
    "seed": is_int,
}


def check_config(kind: str, config: dict[str, Any]) -> None:
    """Raise one UserError naming the first entry of ``config`` that ``kind`` cannot use."""
    CHECKS[kind](config)


def check_train(config: dict[str, Any]) -> None:
    check_model(config.get("model"))
    _check_fit(config)
    require(config.get("evaluator") is None or isinstance(config["evaluator"], str),
            f"evaluator {config.get('evaluator')!r} must be a name")  # fmt: skip
    data = config.get("data", {})
    require(isinstance(data, dict), "'data' must be a mapping")
    if data.get("recipe") is not None:
        check_recipe(data["recipe"])
    parallel = config.get("distributed")
    require(parallel is None or (isinstance(parallel, dict) and is_int(parallel.get("world_size"))
                                 and parallel["world_size"] >= 1),
            "'distributed' must record a world_size >= 1")  # fmt: skip
    require(config.get("cli") is None or isinstance(config["cli"], dict),
            "'cli' must be a mapping of options")  # fmt: skip
    if config.get("spec") is not None:
        from .spec import RunSpec

        # Its callbacks are rebuilt (and checked) only by a resume, which needs them.
        RunSpec.from_dict(config["spec"], check_callbacks=False)
    require(isinstance(config.get("callbacks", []), list), "'callbacks' must be a list")


def check_model(values: Any) -> None:
    """A model record (``model.to_config()``) that ``models.from_config`` can rebuild."""
    require(isinstance(values, dict), "'model' must be a mapping of model settings")
    name = values.get("model")
    require(isinstance(name, str) and name in MODELS,
            f"model {name!r} is not one of {', '.join(MODELS)}")  # fmt: skip
    config_class = MODELS[name].config_class
    missing = [f.name for f in dataclasses.fields(config_class) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # fmt: skip
    require(not missing, f"model {name!r} lacks {', '.join(missing)}")
    config_class.from_dict({k: v for k, v in values.items() if k != "model"})


def _check_fit(config: dict[str, Any]) -> None:
    fit, resumes = config.get("fit"), config.get("resumes", [])
    require(isinstance(fit, dict), "'fit' must be a mapping of training settings")
    require(isinstance(resumes, list) and all(
        isinstance(r, dict) and isinstance(r.get("changed"), dict)
        and set(r["changed"]) <= set(RESUMABLE) for r in resumes),
        f"'resumes' must list {{'from_epoch', 'changed'}} records changing only {', '.join(RESUMABLE)}",
    )  # fmt: skip
    budget = dict(fit)
    for resumed in resumes:
        budget.update(resumed["changed"])
    for values in (fit, budget):
        check_fields(FitSettings, values, "fit")
        # The device is the resuming machine's question (resolve_device says so then).
        dataclasses.replace(FitSettings.from_dict(values), device="cpu").validate()


def check_recipe(recipe: Any) -> None:
    """A data recipe ``data.load_recipe`` can load: known keys of the right types."""
    require(isinstance(recipe, dict) and "dataset" in recipe,
            "the data recipe must be a mapping with a 'dataset' name")  # fmt: skip
    unknown = sorted(set(recipe) - set(RECIPE))
    require(not unknown, f"the data recipe has unknown entries {unknown}")
    for key, fits in RECIPE.items():
        if key in recipe:
            require(fits(recipe[key]), f"the data recipe's {key}={recipe[key]!r} is not valid")


def check_active(config: dict[str, Any]) -> None:
    from ..active.config import ActiveConfig

    values = config.get("active")
    require(isinstance(values, dict), "'active' must be a mapping of active-labelling settings")
    check_fields(ActiveConfig, values, "active")
    ActiveConfig.from_dict(values).validate()
    require(isinstance(config.get("model"), dict), "'model' must be a mapping of model settings")


def check_fields(cls: type, values: dict[str, Any], where: str) -> None:
    """Each value of ``values`` has the JSON type of ``cls``'s field of that name (unknown
    names are left to ``cls.from_dict``, which refuses them)."""
    for f in dataclasses.fields(cls):
        if f.name in values:
            require(_fits(str(f.type), values[f.name]),
                    f"{where}.{f.name}={values[f.name]!r} is not a {f.type}")  # fmt: skip


def _fits(annotation: str, value: Any) -> bool:
    for part in (p.strip() for p in annotation.split("|")):
        base, _, inner = part.partition("[")
        if base in ("tuple", "list"):
            item = inner.split(",")[0].strip().rstrip("]")
            if isinstance(value, list) and all(_fits(item, v) for v in value):
                return True
        elif _TYPES.get(base, _TYPES["Any"])(value):
            return True
    return False


CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {"train": check_train, "active": check_active}


def wrap(path: Any, error: UserError) -> UserError:
    """``error`` about an entry of the config.json at ``path``, as one line naming the file."""
    return UserError(
        f"{path}: {error}: not as ppl-ssvae wrote it (another program's file, or changed "
        "since); ppl-ssvae will neither use nor delete the run; restore the file or choose "
        "another directory"
    )
