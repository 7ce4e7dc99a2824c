"""The callback through which a sweep's trial hears about its run: each epoch's validation
metric goes to the Optuna trial (``trial.report``), and when the trial's pruner says the
run is not worth finishing, training stops cleanly after that epoch (recorded and
checkpointed like any other) and the sweep records the trial as pruned.

It is registered by name (``sweep_trial``) and recorded in the trial's run spec, so the
run directory stays an ordinary run: ``ppl-ssvae train --resume`` rebuilds the callback,
which does nothing outside a sweep. This module imports nothing of Optuna.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from ..errors import require
from ..training import Callback, register_callback
from ..training.callbacks import OBSERVE

#: ``FitResult.stopped`` of a run its trial's pruner stopped.
PRUNED = "pruned"
_TRIAL: ContextVar[Any] = ContextVar("ppl_ssvae_sweep_trial", default=None)


@contextlib.contextmanager
def reporting_to(trial: Any) -> Iterator[None]:
    """Runs trained inside this block report to ``trial`` (an ``optuna.Trial``). A context
    variable rather than a constructor argument, so that the callback can be rebuilt by
    name from the run's spec (``RunSpec.train``, ``load_run(...).resume()``)."""
    token = _TRIAL.set(trial)
    try:
        yield
    finally:
        _TRIAL.reset(token)


@register_callback("sweep_trial")
class ReportToTrial(Callback):
    """Report ``monitor`` (a key of the epoch's record, e.g. ``val_accuracy`` or ``elbo``)
    to the running sweep trial after each epoch, and stop training when its pruner prunes
    it. Without a running trial (a trial's run resumed by hand), it does nothing."""

    order = OBSERVE + 10  # after the best-epoch selection, before loggers and checkpoints

    def __init__(self, monitor: str = "val_accuracy") -> None:
        require(isinstance(monitor, str) and monitor != "", f"monitor={monitor!r} must be a name")
        self.monitor = monitor

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        trial = _TRIAL.get()
        value = record.get(self.monitor)
        if trial is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        with warnings.catch_warnings():
            # A resumed trial may report again an epoch its killed worker had reported
            # before the checkpoint: Optuna keeps the first value, which is the same.
            warnings.filterwarnings("ignore", message=".*already reported")
            trial.report(float(value), int(record["epoch"]))
        if trial.should_prune():
            trainer.stop(PRUNED)
