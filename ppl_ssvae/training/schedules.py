"""Callbacks that change the objective or the optimizer as training runs: a KL warm-up,
a schedule of the classifier weight, and any ``torch.optim.lr_scheduler``.

The KL and classifier weights are pure functions of the step (epoch and step within
it), so a resumed run recomputes them exactly; the learning-rate scheduler's state goes
into the checkpoint.
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError, is_finite_number, is_int, require
from .callbacks import OBSERVE, Callback, register_callback
from .loop import Trainer
from .optim import SCHEDULERS, check_scheduler

SCHEDULES = ("linear", "cyclical")


def warmup_weight(
    t: float, total: float, schedule: str = "linear", start: float = 0.0, cycles: int = 4,
    ratio: float = 0.5,
) -> float:  # fmt: skip
    """The weight at step ``t`` (from 0) of ``total`` steps.

    ``linear`` (Sønderby et al. 2016): from ``start`` up to 1 over ``total`` steps, then 1.
    ``cyclical`` (Fu et al. 2019, eq. 6): ``total`` steps split into ``cycles`` cycles;
    within each, the weight rises linearly from ``start`` to 1 over the first ``ratio`` of
    the cycle and stays at 1 for the rest.
    """
    if schedule == "linear":
        return 1.0 if t >= total else start + (1.0 - start) * t / total
    period = total / cycles
    tau = (t % period) / period if t < total else 1.0
    return 1.0 if tau >= ratio else start + (1.0 - start) * tau / ratio


class _StepSchedule(Callback):
    """A weight on named sites, recomputed before every step from the global step."""

    order = OBSERVE

    def __init__(self) -> None:
        self.weight = self.used = 1.0

    def sites(self, trainer: Trainer) -> dict[str, float]:
        raise NotImplementedError

    def weight_at(self, trainer: Trainer, t: int) -> float:
        raise NotImplementedError

    def on_fit_start(self, trainer: Trainer) -> None:
        self.steps_per_epoch = len(trainer.batches)
        self.names = self.sites(trainer)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._set(trainer, (epoch - 1) * self.steps_per_epoch)

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        self.used = self.weight  # the weight this step trained with, for the record
        self._set(trainer, (trainer.epoch - 1) * self.steps_per_epoch + step)

    def _set(self, trainer: Trainer, t: int) -> None:
        self.weight = self.weight_at(trainer, t)
        trainer.scale_sites({name: factor * self.weight for name, factor in self.names.items()})


@register_callback("kl_warmup")
class KLWarmup(_StepSchedule):
    """A weight beta on the continuous latents' terms of the objective,
    ``E_q[log p(x|y,z)] + beta (log p(z|.) - log q(z|.))`` (the KL part of the ELBO),
    growing from ``start`` to 1: linearly over ``epochs`` epochs (Sønderby et al. 2016), or
    ``cyclical`` with ``cycles`` cycles over ``epochs`` epochs, rising over the first
    ``ratio`` of each (Fu et al. 2019). beta applies to every continuous latent of the
    model (z, and a for ADGM / AGM-DGM), in the model and the guide; the label's terms
    keep weight 1. Each epoch's record carries the last step's ``kl_weight``."""

    def __init__(
        self, epochs: float = 10, schedule: str = "linear", start: float = 0.0,
        cycles: int = 4, ratio: float = 0.5,
    ) -> None:  # fmt: skip
        super().__init__()
        require(is_finite_number(epochs) and epochs > 0, f"kl_warmup epochs={epochs!r} must be > 0")
        require(
            schedule in SCHEDULES,
            f"kl_warmup schedule={schedule!r}: choose one of {', '.join(SCHEDULES)}",
        )
        require(
            is_finite_number(start) and 0 <= start <= 1,
            f"kl_warmup start={start!r} must be in [0, 1]",
        )
        require(
            is_int(cycles) and cycles >= 1, f"kl_warmup cycles={cycles!r} must be an integer >= 1"
        )
        require(
            is_finite_number(ratio) and 0 < ratio <= 1,
            f"kl_warmup ratio={ratio!r} must be in (0, 1]",
        )
        self.epochs, self.schedule, self.start = epochs, schedule, start
        self.cycles, self.ratio = cycles, ratio

    def sites(self, trainer: Trainer) -> dict[str, float]:
        latents = trainer.model.guide_latents
        if not latents:
            raise UserError(
                f"kl_warmup weights continuous latents, and model {trainer.model.name!r} has "
                "none with a guide family; drop the callback"
            )
        return dict.fromkeys(latents, 1.0)

    def weight_at(self, trainer: Trainer, t: int) -> float:
        total = self.epochs * self.steps_per_epoch
        return warmup_weight(t, total, self.schedule, self.start, self.cycles, self.ratio)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        record["kl_weight"] = self.used


@register_callback("alpha_schedule")
class AlphaSchedule(_StepSchedule):
    """The classifier weight alpha (``alpha log q(y|x)`` on labelled rows, Kingma et al.
    eq. 9) taken linearly from ``start`` to the model's ``alpha`` over ``epochs`` epochs,
    then kept there. Each epoch's record carries the last step's ``alpha``."""

    def __init__(self, epochs: float = 10, start: float = 0.0) -> None:
        super().__init__()
        require(
            is_finite_number(epochs) and epochs > 0, f"alpha_schedule epochs={epochs!r} must be > 0"
        )
        require(
            is_finite_number(start) and start >= 0, f"alpha_schedule start={start!r} must be >= 0"
        )
        self.epochs, self.start = epochs, start

    def sites(self, trainer: Trainer) -> dict[str, float]:
        alpha = getattr(trainer.model.config, "alpha", None)
        if not alpha:
            raise UserError(
                f"alpha_schedule needs a model with a classifier weight alpha > 0; "
                f"{trainer.model.name!r} has alpha={alpha!r}"
            )
        self.alpha = float(alpha)
        # The guide's "classification" factor already carries alpha: scale it by a_t/alpha.
        return {"classification": 1.0 / self.alpha}

    def weight_at(self, trainer: Trainer, t: int) -> float:
        share = warmup_weight(t, self.epochs * self.steps_per_epoch)
        return self.start + (self.alpha - self.start) * share

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        record["alpha"] = self.used


class LRScheduler(Callback):
    """A ``torch.optim.lr_scheduler`` by name, stepped at the end of every epoch.

    The optimizer is created by the first step (Pyro's parameters exist from then on), so
    the scheduler is built after it: its epoch-0 value (e.g. ``LinearLR``'s
    ``start_factor``) takes effect from the second step. Its state is checkpointed; on
    resume it is rebuilt after the first step and the learning rates that the restored
    optimizer holds are kept, so the resumed run follows the uninterrupted one exactly.
    """

    order = OBSERVE

    def __init__(self, name: str, args: dict[str, Any] | None = None) -> None:
        check_scheduler(name, args or {})
        self.name, self.args = name, dict(args or {})
        self.scheduler: Any = None
        self.pending: dict[str, Any] | None = None

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        if self.scheduler is not None:
            return
        optimizer = trainer.optim.optimizer
        kept = [group["lr"] for group in optimizer.param_groups]
        try:
            self.scheduler = SCHEDULERS[self.name](optimizer, **self.args)
        except (TypeError, ValueError) as e:
            raise UserError(f"lr_scheduler {self.name}: {e}") from None
        if self.pending is not None:
            self.scheduler.load_state_dict(self.pending)
            for group, lr in zip(optimizer.param_groups, kept, strict=True):
                group["lr"] = lr

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if self.scheduler is not None:
            self.scheduler.step()
            record["lr"] = trainer.optim.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        if self.scheduler is None:
            return self.pending or {}
        return {k: v for k, v in self.scheduler.state_dict().items() if _plain(v)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = state


def _plain(value: Any) -> bool:
    # What weights_only loading reads back: numbers, strings, lists and dicts of them.
    if isinstance(value, (int, float, str, bool)) or value is None:
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(v) for v in value.values())
    return False
