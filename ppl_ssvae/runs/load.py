"""``load_run``: the one way back from a run directory to its spec, data and model.

``evaluate``, ``--resume``, ``inspect``, the experiments and a researcher's notebook all
rebuild a run here: the data from the recipe config.json recorded, the model from its
recorded config (exactly what was trained, guide included), the evaluator by name, the
callbacks by their registered names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..training import Callback, FitResult, FitSettings, build_callback, fit
from .directory import BEST, CHECKPOINT, CONFIG, RunDir, current_budget
from .spec import RunSpec

# The data options of a CLI run saved before runs recorded their data recipe.
LEGACY_CLI_DATA = ("dataset", "data_dir", "labels", "label_fraction", "hidden_classes",
                   "validation_size", "std_threshold", "seed")  # fmt: skip


@dataclass
class LoadedRun:
    """A run rebuilt from its directory: ``model`` has its initial weights until
    ``load_weights``; ``spec`` is None for runs written before specs were recorded."""

    path: Path
    directory: RunDir
    config: dict[str, Any]
    spec: RunSpec | None
    model: Any
    data: Any
    evaluate: Any

    @property
    def settings(self) -> FitSettings:
        """The training settings as the run's last resume left them."""
        return FitSettings.from_dict(current_budget(self.config))

    def load_weights(self, which: str = "best") -> dict[str, Any]:
        """Load ``"best"`` (best.pt) or ``"last"`` (checkpoint.pt) into ``model``; the
        checkpoint's content (epoch, metrics...)."""
        names = {"best": BEST, "last": CHECKPOINT}
        if which not in names:
            raise UserError(f"checkpoint {which!r}: choose best or last")
        return self.directory.load_weights(self.model, names[which])

    def callbacks(self) -> list[Callback]:
        """The run's recorded callbacks, rebuilt by their registered names."""
        built = []
        for record in self.config.get("callbacks") or []:
            if not record.get("name"):
                raise UserError(
                    f"{self.path} was trained with a callback that is not registered "
                    f"({record}); resume it from Python, passing the same callbacks"
                )
            built.append(build_callback(record["name"], record.get("args")))
        return built

    def resume(self, *, callbacks: list[Callback] | None = None, **budget: Any) -> FitResult:
        """Continue training with the run's settings; ``budget``: ``epochs``,
        ``max_minutes``, ``max_cpu_minutes``, ``device`` (and ``progress``)."""
        return fit(
            self.model, self.data, out=self.directory, resume=True, evaluate=self.evaluate,
            callbacks=self.callbacks() if callbacks is None else callbacks, **budget,
        )  # fmt: skip


def load_run(
    path: str | Path | RunDir, *, data: Any = None, data_dir: str | None = None,
    guide: Any = None, trust_unverified: bool = False,
) -> LoadedRun:  # fmt: skip
    """Rebuild the run in ``path`` (a directory, or a ``RunDir`` already configured).

    Args:
        data: the run's data, for runs trained from Python on data that is not a named
            dataset (config.json then holds no recipe).
        data_dir: where the named dataset's files are now, if not where they were.
        guide: the guide module(s) again, for a model trained with a custom guide module.
        trust_unverified: load checkpoints whose checksum file is missing or malformed,
            with a warning (refused otherwise for runs that wrote checksums).
    """
    from .. import models
    from ..data import load_recipe

    directory = (
        path if isinstance(path, RunDir) else RunDir(path, trust_unverified=trust_unverified)
    )
    config = directory.read_config()
    spec = RunSpec.from_dict(config["spec"], check_callbacks=False) if "spec" in config else None
    if data is None:
        recipe = recipe_of(config, directory)
        data = load_recipe({**recipe, "data_dir": data_dir} if data_dir else recipe)
    try:
        model = models.from_config(config["model"], guide=guide)
    except UserError as e:
        raise UserError(f"{directory.file(CONFIG)}: {e}") from None
    return LoadedRun(directory.path, directory, config, spec, model, data,
                     recorded_evaluator(config, directory))  # fmt: skip


def recipe_of(config: dict[str, Any], run: RunDir) -> dict[str, Any]:
    """How to rebuild the run's data: the recipe it recorded (runs of 0.2+, CLI or Python),
    else the options of a CLI run saved before recipes existed."""
    recipe = (config.get("data") or {}).get("recipe")
    if recipe:
        return recipe
    cli = config.get("cli")
    if cli:
        from .config import check_recipe, wrap

        recipe = {k: cli.get(k) for k in LEGACY_CLI_DATA}
        recipe["dataset"] = recipe["dataset"] or "fashion-mnist"
        recipe["hidden_classes"] = recipe["hidden_classes"] or ""
        try:
            check_recipe(recipe)
        except UserError as e:
            raise wrap(run.file(CONFIG), e) from None
        return recipe
    raise UserError(
        f"{run.path} was trained from Python on data that is not a named dataset; "
        "rebuild it from Python with the same data: ppl_ssvae.runs.load_run(path, data=...)"
    )


def recorded_evaluator(config: dict[str, Any], run: RunDir) -> Any:
    """The evaluator the run recorded by name; None for runs saved before evaluators were
    recorded (the protocol's default then)."""
    from ..protocol import evaluators

    name = config.get("evaluator")
    if name is None:
        return None
    if name not in evaluators():
        raise UserError(
            f"{run.path} was evaluated by a custom function ({name.removeprefix('custom:')}); "
            "resume it from Python: fit(..., evaluate=that_function, resume=True)"
        )
    return evaluators()[name]
