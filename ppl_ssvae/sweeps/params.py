"""The settings a sweep varies: names, grids, ranges, their Optuna distributions.

A sweep file's ``[sweep.settings]`` names each setting as ``ppl-ssvae train`` does (its
option name: ``lr``, ``seed``, ``labels``, ``z_dim``, ``guide``...) or by its path in the
run spec (``fit.lr``, ``model.options.z_dim``, ``model.guide_args.transforms``). The short
names are generated from the run spec's dataclass fields, as the command's options are,
so every training setting can be swept and none is spelt twice::

    seed = [0, 1, 2]                       # a grid (or, in a search, a choice)
    lr = { log_uniform = [1e-4, 3e-3] }    # a range, searched by the sampler
    z_dim = { int = [4, 64] }

Values that are not scalars (``hidden = [[500], [300, 300]]``) are given to Optuna as
their JSON text, since Optuna stores only scalars as categorical choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import UserError, is_finite_number, is_int, require

# Kinds of search range (a TOML inline table with one of these keys) and what they mean.
RANGES = {"uniform": "a float in [low, high]", "log_uniform": "a float in [low, high], log scale",
          "int": "an integer in [low, high]", "log_int": "an integer in [low, high], log scale",
          "choice": "one of the values listed"}  # fmt: skip
# Model config fields that are not settings: the data decides them, or another name does.
NOT_SETTINGS = {"input_dim", "num_classes", "guide", "guide_args"}
# Spec mappings whose keys are free (any optimizer or guide argument).
FREE_MAPPINGS = {"fit.optimizer_args", "fit.lr_scheduler_args", "model.guide_args"}
MAX_NAME = 120


def setting_paths() -> dict[str, str]:
    """Every short setting name -> its path in the run spec: ``DataSpec`` and
    ``FitSettings`` fields, the model's name, guide and extra classes, every registered
    model's config fields and the optimizer arguments papers name (``rho``)."""
    from ..models import MODELS
    from ..runs import DataSpec
    from ..training import FitSettings
    from ..training.optim import OPTIMIZER_OPTIONS

    paths = {f.name: f"data.{f.name}" for f in dataclasses.fields(DataSpec)}
    paths |= {f.name: f"fit.{f.name}" for f in dataclasses.fields(FitSettings)}
    paths.pop("progress")
    paths |= {"model": "model.name", "guide": "model.guide", "extra_classes": "model.extra_classes"}
    for cls in MODELS.values():
        for f in dataclasses.fields(cls.config_class):
            if f.name not in NOT_SETTINGS:
                paths.setdefault(f.name, f"model.options.{f.name}")
    paths |= {name: f"fit.optimizer_args.{torch}" for name, torch in OPTIMIZER_OPTIONS.items()}
    return paths


def resolve(name: str) -> str:
    """The run spec path of setting ``name``; one line naming the closest names if it is
    not one."""
    require(isinstance(name, str) and name.strip() != "", f"setting name {name!r} is empty")
    key = name.strip().replace("-", "_")
    if "." in key:
        _check_path(name, key)
        return key
    paths = setting_paths()
    if key in paths:
        return paths[key]
    close = difflib.get_close_matches(key, paths, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UserError(
        f"unknown setting {name!r} in [sweep.settings]{hint}; use a `ppl-ssvae train` option "
        "name (lr, seed, labels, z_dim, guide...) or a run spec path such as fit.lr"
    )


def _check_path(name: str, path: str) -> None:
    from ..models import MODELS
    from ..runs import DataSpec
    from ..training import FitSettings

    parts = path.split(".")
    fields = {"data": {f.name for f in dataclasses.fields(DataSpec)},
              "fit": {f.name for f in dataclasses.fields(FitSettings)} - {"progress"},
              "model": {"name", "guide", "extra_classes"}}  # fmt: skip
    options = {f.name for c in MODELS.values() for f in dataclasses.fields(c.config_class)}
    if len(parts) == 2 and parts[0] in fields and parts[1] in fields[parts[0]]:
        return
    if len(parts) == 3 and ".".join(parts[:2]) in FREE_MAPPINGS and parts[2]:
        return
    if len(parts) == 3 and parts[:2] == ["model", "options"] and parts[2] in options - NOT_SETTINGS:
        return
    raise UserError(
        f"unknown setting {name!r} in [sweep.settings]: a path is data.FIELD, fit.FIELD, "
        "model.name / model.guide / model.extra_classes, model.options.FIELD (a model config "
        "field), or fit.optimizer_args.KEY / fit.lr_scheduler_args.KEY / model.guide_args.KEY"
    )


@dataclass(frozen=True, eq=False)  # a dict key by identity (its values may be lists)
class Param:
    """One setting a sweep varies.

    Attributes:
        name: as the sweep file names it (also the Optuna parameter's name).
        path: its place in the run spec (``fit.lr``).
        kind: ``"grid"`` (a list: every value, or a choice in a search) or a ``RANGES`` key.
        values: the grid's or choice's values, or a range's (low, high).
    """

    name: str
    path: str
    kind: str
    values: tuple[Any, ...]

    @classmethod
    def parse(cls, name: str, value: Any) -> Param:
        """From a ``[sweep.settings]`` entry: a list, or ``{KIND = [...]}``."""
        path = resolve(name)
        if isinstance(value, (list, tuple)):
            require(len(value) > 0, f"setting {name!r} has an empty grid; give at least one value")
            return cls(name, path, "grid", _distinct(name, value))
        require(isinstance(value, dict) and len(value) == 1 and next(iter(value)) in RANGES,
                f"setting {name!r} must be a list of values or one of "
                f"{', '.join(f'{{{k} = [...]}}' for k in RANGES)}, got {value!r}")  # fmt: skip
        kind, bounds = next(iter(value.items()))
        if kind == "choice":
            require(isinstance(bounds, list) and len(bounds) > 0,
                    f"setting {name!r}: choice needs a non-empty list, got {bounds!r}")  # fmt: skip
            return cls(name, path, kind, _distinct(name, bounds))
        return cls(name, path, kind, _range(name, kind, bounds))

    @property
    def is_range(self) -> bool:
        return self.kind not in ("grid", "choice")

    def file_value(self) -> Any:
        """The entry as the sweep file writes it (``parse`` reads it back to this param)."""
        return list(self.values) if self.kind == "grid" else {self.kind: list(self.values)}

    def candidates(self) -> list[Any]:
        """Values that stand for the whole param when checking settings: every value of a
        list, both ends of a range."""
        return list(self.values)

    def choices(self) -> list[Any]:
        """The list's values as Optuna stores them (scalars, or JSON text)."""
        return [_encode(v) for v in self.values]

    def suggest(self, trial: Any) -> Any:
        """The value of this setting in ``trial`` (asking its sampler, or reading what the
        trial was given)."""
        if not self.is_range:
            encoded = trial.suggest_categorical(self.name, self.choices())
            return self.decode(encoded)
        low, high = self.values
        log = self.kind.startswith("log_")
        if self.kind in ("int", "log_int"):
            return trial.suggest_int(self.name, low, high, log=log)
        return trial.suggest_float(self.name, low, high, log=log)

    def decode(self, encoded: Any) -> Any:
        """The list value that Optuna's ``encoded`` stands for."""
        for value, choice in zip(self.values, self.choices(), strict=True):
            if type(choice) is type(encoded) and choice == encoded:
                return value
        raise UserError(f"setting {self.name!r}: {encoded!r} is not one of its values")


def _distinct(name: str, values: list[Any]) -> tuple[Any, ...]:
    for v in values:
        _encode(v)  # refuses what JSON cannot hold
    encoded = [json.dumps(v, sort_keys=True) for v in values]
    repeated = sorted({e for e in encoded if encoded.count(e) > 1})
    require(not repeated, f"setting {name!r} lists {', '.join(repeated)} more than once")
    return tuple(values)


def _range(name: str, kind: str, bounds: Any) -> tuple[Any, Any]:
    require(isinstance(bounds, list) and len(bounds) == 2,
            f"setting {name!r}: {kind} takes [low, high], got {bounds!r}")  # fmt: skip
    low, high = bounds
    integer = kind in ("int", "log_int")
    ok = is_int if integer else is_finite_number
    require(ok(low) and ok(high), f"setting {name!r}: {kind} bounds must be "
            f"{'integers' if integer else 'finite numbers'}, got {bounds!r}")  # fmt: skip
    require(low < high, f"setting {name!r}: {kind} range [{low}, {high}] is empty; low < high")
    require(not kind.startswith("log_") or low > 0,
            f"setting {name!r}: {kind} needs low > 0, got {low}")  # fmt: skip
    return (low if integer else float(low), high if integer else float(high))


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        require(math.isfinite(value), f"{value} cannot be a setting's value (not finite)")
        return value
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        raise UserError(f"{value!r} cannot be a setting's value (not JSON)") from None


def set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    """Put ``value`` at ``path`` in a run spec dict (``RunSpec.to_dict()`` form)."""
    *parents, leaf = path.split(".")
    node = spec
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def run_name(values: dict[Param, Any], number: int | None = None) -> str:
    """A trial's run directory name, from its settings: ``labels-100_seed-0``; a search's
    is prefixed with its trial number (two trials may draw the same settings). Never a
    path: every character outside ``[A-Za-z0-9._+-]`` becomes ``_``."""
    parts = [f"{p.name.rsplit('.', 1)[-1]}-{_text(v, p.is_range)}" for p, v in values.items()]
    name = "_".join(([f"{number:04d}"] if number is not None else []) + parts) or "run"
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip(".-") or "run"
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:10]
        name = f"{name[: MAX_NAME - 11]}-{digest}"
    return name


def _text(value: Any, drawn: bool) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.4g}" if drawn else repr(value)
    if isinstance(value, (list, tuple)):
        return "-".join(_text(v, drawn) for v in value)
    if isinstance(value, dict):
        return "-".join(f"{k}-{_text(v, drawn)}" for k, v in value.items())
    return str(value)
