"""``SweepSpec``: a run spec plus a ``[sweep]`` section, validated once before anything
starts.

A sweep file is a ``ppl-ssvae train --config`` file (the same ``[data]``, ``[model]``,
``[fit]`` and ``[[callbacks]]``: the run every trial starts from) with one more section::

    [sweep]
    objective = "val_accuracy"     # or "elbo" (validation ELBO) or "iwae"
    pruner = "median"              # none, median, percentile, successive_halving, ...
    n_trials = 20                  # a search's budget (a grid runs each point once)

    [sweep.settings]
    seed = [0, 1, 2]
    labels = [100, 1000]
    lr = { log_uniform = [1e-4, 3e-3] }

Lists alone make a grid (Optuna's ``GridSampler``; one trial per point). A range makes it
a search (``sampler = "tpe"``, the default then, or ``"random"``), in which lists are
choices the sampler picks from.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError, check_seed, is_int, require
from .params import Param, run_name, set_path
from .pruning import ReportToTrial  # noqa: F401 - registers "sweep_trial"

# objective -> (the per-epoch record key reported to the pruner, its default direction)
OBJECTIVES = {"val_accuracy": ("val_accuracy", "maximize"), "elbo": ("elbo", "maximize"),
              "iwae": ("elbo", "maximize")}  # fmt: skip
SAMPLERS = ("grid", "tpe", "random")
PRUNERS = {"none": "NopPruner", "median": "MedianPruner", "percentile": "PercentilePruner",
           "successive_halving": "SuccessiveHalvingPruner", "hyperband": "HyperbandPruner",
           "threshold": "ThresholdPruner"}  # fmt: skip
SWEEP_KEYS = ("settings", "objective", "direction", "sampler", "pruner", "pruner_args",
              "n_trials", "seed", "iwae_samples", "iwae_rows", "name")  # fmt: skip
# How many grid points are checked one by one before anything starts.
CHECKED_POINTS = 10_000

# The file named in the refusal of a value TOML cannot hold.
SPEC = "a sweep spec"


@dataclass
class SweepSpec:
    """A sweep: the base run spec and how to vary it (see the module docstring).

    Attributes:
        base: the run every trial starts from, as ``RunSpec.to_dict()`` gives it.
        params: the settings varied, in the file's order.
        objective: what a trial is scored by: ``val_accuracy`` (best over epochs),
            ``elbo`` (the validation ELBO, best over epochs) or ``iwae`` (the IWAE
            log-likelihood of validation rows under the best checkpoint).
        direction: ``maximize`` or ``minimize`` [maximize].
        sampler: ``grid``, ``tpe`` or ``random`` [grid for lists only, else tpe].
        pruner: an Optuna pruner by name (``PRUNERS``), fed each epoch's validation metric.
        pruner_args: the pruner's arguments (``n_startup_trials``, ``n_warmup_steps``...).
        n_trials: a search's trials (a grid has one per point).
        seed: the sampler's seed (each trial's draws come from it and the trial's number).
        iwae_samples: importance samples per row of the ``iwae`` objective.
        iwae_rows: validation rows it scores (a fixed seeded subset; None: all).
        name: the Optuna study's name [the sweep directory's name].
    """

    base: dict[str, Any]
    params: tuple[Param, ...]
    objective: str = "val_accuracy"
    direction: str = "maximize"
    sampler: str = "grid"
    pruner: str = "none"
    pruner_args: dict[str, Any] = field(default_factory=dict)
    n_trials: int | None = None
    seed: int = 0
    iwae_samples: int = 100
    iwae_rows: int | None = 1000
    name: str | None = None

    # -- from and to the file --------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SweepSpec:
        """From a sweep file's mapping (``read_spec_file``): every refusal in one line,
        before anything is written."""
        from ..runs import RunSpec

        require(isinstance(values, dict), f"a sweep spec is a mapping of sections, got {values!r}")
        values = dict(values)
        sweep = values.pop("sweep", None)
        require(isinstance(sweep, dict), "a sweep spec needs a [sweep] section with "
                "[sweep.settings] (the settings to vary); see `ppl-ssvae sweep --help`")  # fmt: skip
        unknown = sorted(set(sweep) - set(SWEEP_KEYS))
        require(not unknown, f"unknown [sweep] keys {unknown}; choose from {sorted(SWEEP_KEYS)}")
        settings = sweep.get("settings")
        require(isinstance(settings, dict) and settings,
                "[sweep.settings] must name at least one setting to vary, e.g. seed = [0, 1, 2]")  # fmt: skip
        params = tuple(Param.parse(name, value) for name, value in settings.items())
        paths = [p.path for p in params]
        twice = sorted({p.name for p in params if paths.count(p.path) > 1})
        require(not twice, f"settings {twice} name the same run spec field; give it once")
        base = RunSpec.from_dict(values).to_dict()
        options = {k: v for k, v in sweep.items() if k != "settings"}
        spec = cls(base, params, **_sweep_options(options, params))
        spec.validate()
        return spec

    def to_dict(self) -> dict[str, Any]:
        """The sweep file's mapping; ``from_dict`` reads it back to this spec."""
        sweep = {"settings": {p.name: p.file_value() for p in self.params},
                 "objective": self.objective, "direction": self.direction, "sampler": self.sampler,
                 "pruner": self.pruner, "pruner_args": dict(self.pruner_args),
                 "n_trials": self.n_trials, "seed": self.seed, "iwae_samples": self.iwae_samples,
                 "iwae_rows": self.iwae_rows, "name": self.name}  # fmt: skip
        return {**copy.deepcopy(self.base), "sweep": sweep}

    def to_toml(self) -> str:
        """The spec as a TOML sweep file (None values are left out: they are defaults)."""
        from ..runs.files import to_toml, toml_key, toml_value

        sweep = self.to_dict()["sweep"]
        settings = sweep.pop("settings")
        lines = ["", "[sweep]"] + [
            f"{k} = {toml_value(v, SPEC)}" for k, v in sweep.items() if v is not None
        ]
        lines += ["", "[sweep.settings]"] + [
            f"{toml_key(k)} = {toml_value(v, SPEC)}" for k, v in settings.items()
        ]
        return to_toml(self.base) + "\n".join(lines) + "\n"

    def only(self, selections: list[str]) -> SweepSpec:
        """This sweep with its grid cut to the points where each ``NAME=VALUE`` holds
        (``z_dim=200``): one row of a paper's table out of the file that holds them all.
        A value is written as in the sweep file, a string without its quotes; one line for
        a name the sweep does not vary or a value its list lacks."""
        params = {p.name: p for p in self.params}
        chosen: dict[str, set[int]] = {}
        for selection in selections:
            name, sep, text = selection.partition("=")
            require(sep == "=" and name in params, f"--only {selection!r}: give NAME=VALUE with "
                    f"NAME a setting this sweep varies ({', '.join(params)})")  # fmt: skip
            param = params[name]
            require(not param.is_range, f"--only {selection!r}: {name} is a range, not a list; "
                    "--only picks a list's values")  # fmt: skip
            shown = [_shown(v) for v in param.values]
            require(text in shown, f"--only {selection!r}: {name} lists {', '.join(shown)}")
            chosen.setdefault(name, set()).add(shown.index(text))
        kept = {name: tuple(params[name].values[i] for i in sorted(indices))
                for name, indices in chosen.items()}  # fmt: skip
        cut = tuple(dataclasses.replace(p, values=kept.get(p.name, p.values)) for p in self.params)
        return dataclasses.replace(self, params=cut)

    # -- checks ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Every setting value is a valid run (each grid point; each list value and each
        range end alone in a search), the pruner builds, and the grid's run directories
        have distinct names."""
        self.make_pruner()
        if self.sampler == "grid":
            require(self.grid_size() <= CHECKED_POINTS,
                    f"the grid has {self.grid_size()} points; at most {CHECKED_POINTS}")  # fmt: skip
            names: dict[str, dict[str, Any]] = {}
            for point in self.grid():
                self.trial_spec(point)
                name = run_name(point)
                shown = {p.name: v for p, v in point.items()}
                require(name not in names, f"grid points {names.get(name)} and {shown} would "
                        f"share the run directory {name!r}; make their values differ more")  # fmt: skip
                names[name] = shown
            return
        for param in self.params:
            for value in param.candidates():
                self.trial_spec({param: value})

    def grid_size(self) -> int:
        return math.prod(len(p.values) for p in self.params)

    def grid(self) -> list[dict[Param, Any]]:
        """Every point of a grid, in the file's order (the last setting varies fastest)."""
        combos = itertools.product(*(p.values for p in self.params))
        return [dict(zip(self.params, combo, strict=True)) for combo in combos]

    @property
    def metric(self) -> str:
        """The per-epoch record key the trial reports (and the pruner judges)."""
        return OBJECTIVES[self.objective][0]

    # -- what trials are built from --------------------------------------------------------
    def trial_spec(self, values: dict[Param, Any]) -> Any:
        """The ``RunSpec`` of a trial with these setting values, checked."""
        from ..runs import RunSpec

        spec = copy.deepcopy(self.base)
        for param, value in values.items():
            set_path(spec, param.path, copy.deepcopy(value))
        spec["callbacks"] = [*spec.get("callbacks", []),
                             {"name": "sweep_trial", "args": {"monitor": self.metric}}]  # fmt: skip
        shown = ", ".join(f"{p.name}={v!r}" for p, v in values.items())
        try:
            run = RunSpec.from_dict(spec)
            _check_model_options(run)
        except UserError as e:
            raise UserError(f"sweep setting {shown}: {e}") from None
        run.fit.progress = False  # workers print one line per trial, not bars
        return run

    def make_sampler(self, trial_number: int = 0) -> Any:
        """The Optuna sampler: the grid's, or a search's seeded from the sweep's seed and
        the trial's number (workers that draw at once then draw differently, and a trial
        is drawn the same way whichever worker draws it)."""
        import optuna

        if self.sampler == "grid":
            return optuna.samplers.GridSampler(
                {p.name: p.choices() for p in self.params}, seed=self.seed
            )
        seed = (self.seed * 1_000_003 + trial_number) % 2**32
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed)

    def make_pruner(self) -> Any:
        """The Optuna pruner with its arguments, checked (one line for a bad argument)."""
        import optuna

        cls = getattr(optuna.pruners, PRUNERS[self.pruner])
        accepted = list(inspect.signature(cls).parameters)
        unknown = sorted(set(self.pruner_args) - set(accepted))
        require(not unknown, f"pruner {self.pruner!r} takes no {unknown}; its arguments: "
                f"{', '.join(accepted) or 'none'}")  # fmt: skip
        try:
            return cls(**self.pruner_args)
        except (TypeError, ValueError) as e:
            raise UserError(f"pruner {self.pruner!r}: {e}") from None


def _sweep_options(options: dict[str, Any], params: tuple[Param, ...]) -> dict[str, Any]:
    """The ``[sweep]`` keys besides the settings, with their defaults resolved, checked."""
    objective = options.get("objective", "val_accuracy")
    require(objective in OBJECTIVES,
            f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")  # fmt: skip
    direction = options.get("direction") or OBJECTIVES[objective][1]
    require(direction in ("maximize", "minimize"),
            f"direction {direction!r} must be maximize or minimize")  # fmt: skip
    searched = any(p.is_range for p in params)
    sampler = options.get("sampler") or ("tpe" if searched else "grid")
    require(
        sampler in SAMPLERS, f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}"
    )
    ranges = [p.name for p in params if p.kind != "grid"]
    require(sampler != "grid" or not ranges, f"the grid sampler takes lists only; {ranges} "
            "need a search: sampler = \"tpe\" or \"random\" with n_trials")  # fmt: skip
    n_trials = options.get("n_trials")
    if sampler == "grid":
        require(n_trials is None, "n_trials is for a search; a grid runs each point once")
    else:
        require(is_int(n_trials) and n_trials >= 1,
                f"a {sampler} search needs n_trials, an integer >= 1 (got {n_trials!r})")  # fmt: skip
    pruner = options.get("pruner") or "none"
    require(pruner in PRUNERS, f"unknown pruner {pruner!r}; choose one of {', '.join(PRUNERS)}")
    pruner_args = options.get("pruner_args") or {}
    require(isinstance(pruner_args, dict), f"pruner_args must be a mapping, got {pruner_args!r}")
    seed = check_seed(options.get("seed", 0), "[sweep] seed")
    samples, rows = options.get("iwae_samples", 100), options.get("iwae_rows", 1000)
    require(is_int(samples) and samples >= 1, f"iwae_samples={samples!r} must be an integer >= 1")
    require(rows is None or (is_int(rows) and rows >= 1),
            f"iwae_rows={rows!r} must be an integer >= 1")  # fmt: skip
    name = options.get("name")
    require(name is None or (isinstance(name, str) and name.strip() != ""),
            f"[sweep] name={name!r} must be a non-empty study name")  # fmt: skip
    return {"objective": objective, "direction": direction, "sampler": sampler,
            "pruner": pruner, "pruner_args": pruner_args, "n_trials": n_trials, "seed": seed,
            "iwae_samples": samples, "iwae_rows": rows, "name": name}  # fmt: skip


def _check_model_options(run: Any) -> None:
    """An unknown dataset or model, and model options the model has no field for, are
    refused here, before anything starts, rather than by every trial's build."""
    import dataclasses

    from ..data import DATASETS
    from ..models import MODELS

    if run.data.dataset not in DATASETS:
        raise UserError(
            f"unknown dataset {run.data.dataset!r}; choose one of {', '.join(DATASETS)}"
        )

    if run.model.name not in MODELS:
        raise UserError(f"unknown model {run.model.name!r}; choose one of {', '.join(MODELS)}")
    fields = {f.name for f in dataclasses.fields(MODELS[run.model.name].config_class)}
    unknown = sorted(set(run.model.options) - fields)
    require(not unknown, f"model {run.model.name!r} has no settings {unknown}")


def _shown(value: Any) -> str:
    """A setting's value as ``--only`` takes it: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)
