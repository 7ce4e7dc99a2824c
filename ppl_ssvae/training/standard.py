"""The callbacks every run has: evaluation, best-epoch selection, the non-finite guard,
time budgets and the progress bar (``fit`` adds them; a user passes only their own)."""

from __future__ import annotations

import copy
import math
from typing import Any

from tqdm.auto import tqdm

from ..errors import DivergenceError
from ..protocol import Evaluator
from .callbacks import EVALUATE, OBSERVE, PERSIST, REPORT, Callback
from .divergence import DIVERGENCE_FACTOR, DivergenceGuard, is_validation_error
from .loop import Trainer, all_finite


class Evaluation(Callback):
    """Runs the run's evaluator after each epoch's steps and adds its report (validation
    and test accuracy, ELBO...) to the record; timed as part of the epoch."""

    order = EVALUATE

    def __init__(self, evaluate: Evaluator) -> None:
        self.evaluate = evaluate

    def on_evaluate(self, trainer: Trainer, record: dict[str, Any]) -> None:
        try:
            report = self.evaluate(trainer.model, trainer.data)
        except ValueError as e:  # the evaluation's distributions validate the outputs too
            if not is_validation_error(e):
                raise
            raise trainer.non_finite("the networks' outputs became non-finite",
                                     where="the evaluation") from e  # fmt: skip
        record.update(report)


class BestEpoch(Callback):
    """Selects the best epoch by validation accuracy (validation ELBO for models that
    cannot classify); without a finite validation number, the latest epoch. The result
    is ``trainer.result.best_epoch``; ``improved`` tells the checkpoint callback to keep
    this epoch's weights as best.pt."""

    order = OBSERVE - 10

    def __init__(self) -> None:
        self.improved = False

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        result = trainer.result
        val = record.get("val_accuracy", record.get("elbo"))
        val = float(val) if isinstance(val, (int, float)) else float("nan")
        if not math.isfinite(val):
            result.best_epoch, result.best_val_accuracy = record["epoch"], -math.inf
            self.improved = True
        elif val > result.best_val_accuracy:
            result.best_epoch, result.best_val_accuracy = record["epoch"], val
            self.improved = True
        else:
            self.improved = False


class RestoreBestWeights(Callback):
    """Keeps the best epoch's weights in memory and loads them back into the model at the
    end: best.pt for a run without a run directory (the scikit-learn estimators)."""

    order = PERSIST

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if trainer.result.best_epoch == record["epoch"]:
            self.state = copy.deepcopy(trainer.model.state_dict())

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.state is not None:
            trainer.model.load_state_dict(self.state)


class NonFiniteGuard(Callback):
    """Stops training with ``NonFiniteLossError`` when a step's loss is NaN/inf or
    diverges (grows past ``divergence_factor`` times its first step's, a
    ``DivergenceError``), and before a checkpoint when a parameter is NaN/inf (a step with
    a finite loss can still leave NaN weights through an inf gradient): such weights never
    reach a checkpoint. The divergence threshold's start is checkpointed."""

    order = PERSIST - 1
    all_ranks = True

    def __init__(self, divergence_factor: float | None = DIVERGENCE_FACTOR) -> None:
        self.divergence = DivergenceGuard(divergence_factor)

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        if not math.isfinite(loss):
            raise trainer.non_finite(f"the loss ({loss}) became non-finite", step)
        diverged = self.divergence.check(loss / trainer.step_rows[step - 1])
        if diverged:
            fix = "lower the learning rate, or raise divergence_factor if this growth is expected"
            raise trainer.non_finite(diverged, step, error=DivergenceError, fix=fix)

    def state_dict(self) -> dict[str, Any]:
        return {"divergence_start": self.divergence.start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.divergence.start = state.get("divergence_start")

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if not all_finite(trainer.model):
            raise trainer.non_finite(
                "the parameters became non-finite", where="the end of the epoch"
            )


class Budget(Callback):
    """``max_minutes``: stop at the end of the epoch that passes this wall-clock budget;
    ``max_cpu_minutes``: stop before an epoch that would end past this CPU budget, judged
    by the previous epoch's CPU time. Both are normal finishes."""

    order = OBSERVE

    def __init__(self, max_minutes: float | None, max_cpu_minutes: float | None) -> None:
        self.max_minutes, self.max_cpu_minutes = max_minutes, max_cpu_minutes

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        history = trainer.result.history
        if self.max_minutes is not None and trainer.elapsed_wall >= 60 * self.max_minutes:
            trainer.stop("max_minutes")
        elif self.max_cpu_minutes is not None and history:
            next_cpu = history[-1]["epoch_cpu_seconds"]
            if trainer.elapsed_cpu + next_cpu > 60 * self.max_cpu_minutes:
                trainer.stop("max_cpu_minutes")

    def on_fit_end(self, trainer: Trainer) -> None:
        limit = self.max_minutes
        if (
            limit is not None
            and trainer.result.stopped == "epochs"
            and trainer.elapsed_wall >= 60 * limit
        ):
            trainer.result.stopped = "max_minutes"


class ProgressBar(Callback):
    """A tqdm bar over each epoch's steps and one line per finished epoch."""

    order = REPORT

    def __init__(self) -> None:
        self.bar: Any = None

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.bar = tqdm(total=len(trainer.batches), desc=f"epoch {epoch}/{trainer.settings.epochs}",
                        leave=False, dynamic_ncols=True)  # fmt: skip

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        self.bar.update(1)
        if step % 10 == 1:
            self.bar.set_postfix(loss=f"{trainer.mean_loss:.2f}")

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.bar.close()
        tqdm.write(progress_line(record))

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_line(record: dict[str, Any]) -> str:
    nan = float("nan")
    return (
        f"epoch {record['epoch']}: loss {record['train_loss']:.2f}  "
        f"elbo {_num(record.get('elbo', nan)):.2f}  val acc {_num(record.get('val_accuracy', nan)):.4f}  "
        f"test acc {_num(record.get('test_accuracy', nan)):.4f}  ({record['epoch_seconds']:.1f}s)"
    )


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)
