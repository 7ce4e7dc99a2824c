"""One trial: its settings drawn (or read back) from the Optuna trial, its run directory
(named from them, under the sweep directory) trained through the Python API, and what the
study records of it.

A trial whose worker died left a run directory with a checkpoint; its retry trains into
the same directory and resumes from that checkpoint (``load_run(...).resume()``), so the
epochs already paid for are kept and the result is the uninterrupted run's. A trial that
fails (a bad setting, a non-finite loss) is recorded with its one-line reason, and the
sweep goes on.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NonFiniteLossError, UserError
from ..runs.directory import BEST, CHECKPOINT, RunDir
from .engine import ERROR
from .params import run_name
from .pruning import PRUNED, reporting_to
from .records import finite, summary, write_scores
from .spec import SweepSpec


@dataclass
class Outcome:
    """How a trial ended: ``state`` is ``complete``, ``pruned`` or ``failed``; ``value``
    the objective (complete trials); ``attrs`` the trial's user attributes (``run_dir``,
    the run's numbers, ``error``)."""

    state: str
    value: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def line(self, number: int, objective: str) -> str:
        """What the worker prints for the trial: one line."""
        shown = " ".join(f"{k}={_short(v)}" for k, v in self.settings.items())
        where = self.attrs.get("run_dir", "?")
        if self.state == "complete":
            said = f"complete, {objective} {self.value:.4f}"
        elif self.state == "pruned":
            said = f"pruned after epoch {self.attrs.get('epochs')}"
        else:
            said = f"failed: {self.attrs.get(ERROR)}"
        return f"trial {number} [{shown}]: {said} ({where})"


def run_trial(trial: Any, spec: SweepSpec, sweep_dir: Path) -> Outcome:
    """Train (or resume, or read back) the trial's run; never raises for the run's own
    failures, which the outcome holds."""
    values = {p: p.suggest(trial) for p in spec.params}
    settings = {p.name: v for p, v in values.items()}
    grid = spec.sampler == "grid"
    name = trial.user_attrs.get("run_dir") or run_name(values, None if grid else trial.number)
    trial.set_user_attr("run_dir", name)
    attrs: dict[str, Any] = {"run_dir": name}
    try:
        run_spec = spec.trial_spec(values)
        run = RunDir(sweep_dir / name)
        with reporting_to(trial):
            history, stopped, model, data, resumed = _train(run_spec, run)
        if resumed is not None:
            attrs["resumed_from_epoch"] = resumed
        if not history:
            raise UserError("the run trained no epoch (epochs = 0?)")
        attrs |= {k: v for k, v in summary(history).items() if finite(v)}
        if stopped == PRUNED:
            return Outcome("pruned", None, attrs, settings)
        scores = _scores(spec, run, model, data)
        attrs |= scores
        return Outcome("complete", _objective(spec, history, scores), attrs, settings)
    except (UserError, NonFiniteLossError) as e:
        return Outcome("failed", None, attrs | {ERROR: _one_line(e)}, settings)
    except Exception as e:  # noqa: BLE001 - a bug fails one trial, said in full, not the sweep
        traceback.print_exc(file=sys.stderr)
        return Outcome("failed", None, attrs | {ERROR: f"{type(e).__name__}: {_one_line(e)}"},
                       settings)  # fmt: skip


def _train(run_spec: Any, run: RunDir) -> tuple[list[dict[str, Any]], str, Any, Any, int | None]:
    """The run's epochs, why it stopped, its model and data, and the epoch it resumed
    from (None for a fresh start): a fresh run in a new directory (or over a stub a killed
    start left), else the run there continued from its checkpoint, after checking that it
    is this trial's run."""
    from ..runs import load_run

    if run.holding() == "run" and os.path.lexists(run.file(CHECKPOINT)):
        config = run.read_config()
        if _normal(config.get("spec")) != _normal(run_spec.to_dict()):
            raise UserError(f"{run.path} holds a run of other settings than this trial's; "
                            "move it away and the trial trains there")  # fmt: skip
        loaded = load_run(run)
        trained = run.load_checkpoint(CHECKPOINT)["epoch"]
        if trained >= loaded.settings.epochs:  # finished; its worker died before telling
            return run.read_history(), "epochs", loaded.model, loaded.data, trained
        result = loaded.resume(progress=False)
        return result.history, result.stopped, loaded.model, loaded.data, trained
    data = run_spec.load_data()
    model = run_spec.build_model(data)
    # A start that died before its first checkpoint is started again from scratch.
    overwrite = run.holding() == "run"
    result = run_spec.train(run, overwrite=overwrite, data=data, model=model)
    return result.history, result.stopped, model, data, None


def _scores(spec: SweepSpec, run: RunDir, model: Any, data: Any) -> dict[str, Any]:
    """The best checkpoint's test ELBO (as ``ppl-ssvae evaluate`` reports it) and, for
    the ``iwae`` objective, its IWAE log-likelihood of validation rows; kept in the run."""
    from ..evaluation.likelihood import evaluation_inputs, likelihood_report, seeded_elbo

    run.load_weights(model, BEST)
    scores = {"test_elbo": seeded_elbo(model, evaluation_inputs(model, data.x_test))}
    if spec.objective == "iwae":
        if not len(data.x_val):
            raise UserError("the iwae objective scores validation rows, and this data has "
                            "none; set data.validation_size")  # fmt: skip
        report = likelihood_report(model, data.x_val, spec.iwae_samples, spec.iwae_rows)
        scores |= {"val_iwae": report["test_log_likelihood"], "iwae_samples": spec.iwae_samples}
    write_scores(run, scores)
    return scores


def _objective(spec: SweepSpec, history: list[dict[str, Any]], scores: dict[str, Any]) -> float:
    """The trial's value: the IWAE, or the best epoch's value of the metric."""
    if spec.objective == "iwae":
        value = scores["val_iwae"]
    else:
        values = [h[spec.metric] for h in history if finite(h.get(spec.metric))]
        if not values:
            raise UserError(f"no epoch has a finite {spec.metric} (the objective); a model "
                            "that cannot classify is scored by objective = \"elbo\"")  # fmt: skip
        value = max(values) if spec.direction == "maximize" else min(values)
    if not finite(value):
        raise UserError(f"the objective {spec.objective} is {value}, not a finite number")
    return float(value)


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value, default=str).strip('"')


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
