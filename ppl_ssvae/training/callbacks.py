"""Callbacks: everything a training run does besides the SVI steps.

The loop (:class:`~ppl_ssvae.training.loop.Trainer`) calls each callback at five events:
``on_fit_start``, ``on_epoch_start``, ``on_step_end``, ``on_evaluate`` (measurements go
into the epoch's record) and ``on_epoch_end`` (the record is complete), then
``on_fit_end``. Any callback may stop training cleanly with ``trainer.stop(reason)``: the
epoch in progress finishes, its record is kept and checkpointed, and ``fit`` returns a
:class:`~ppl_ssvae.training.loop.FitResult` with ``stopped = reason``.

A callback that carries state across epochs returns it from ``state_dict`` (tensors,
numbers, lists and dicts: what ``torch.load(weights_only=True)`` reads) and takes it back
in ``load_state_dict``; the run's checkpoint holds every callback's state, so a resumed
run continues exactly where the killed one was.

Callbacks run in ``order`` (lower first; ties in the order given):
``EVALUATE`` (0) measures, ``OBSERVE`` (50, the default) decides (best epoch, early
stopping, schedules), ``LOG`` (80) writes loggers, ``PERSIST`` (90) writes the run
directory (metrics.jsonl before checkpoints), ``REPORT`` (100) prints.

A researcher's own callback is a subclass; registering it (``register_callback``) lets a
config file or ``--callback NAME`` name it::

    class PrintKL(Callback):
        def on_epoch_end(self, trainer, record):
            print(record["epoch"], record["train_loss"])
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import UserError, is_finite_number, is_int, require

if TYPE_CHECKING:
    from .loop import Trainer

EVALUATE, OBSERVE, LOG, PERSIST, REPORT = 0, 50, 80, 90, 100


class Callback:
    """Base class of every callback; each hook does nothing unless overridden."""

    order: ClassVar[int] = OBSERVE
    # Hooks run on every rank of a data-parallel run (collectives, parameter checks);
    # otherwise on rank 0 only, which alone evaluates and writes.
    all_ranks: ClassVar[bool] = False

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step (after a resume has restored every state)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before the epoch's first step; ``trainer.stop`` here skips the epoch."""

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        """After each optimisation step; ``loss`` is the step's summed loss."""

    def on_evaluate(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After the epoch's steps: add measurements to ``record`` (timed with the epoch)."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """The epoch's record is complete (it is ``trainer.result.history[-1]``)."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch, also when a callback stopped training."""

    def state_dict(self) -> dict[str, Any]:
        """What must survive a kill -9 and ``--resume``; {} for a stateless callback."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what ``state_dict`` returned."""

    def describe(self) -> dict[str, Any]:
        """How to rebuild this callback (recorded in config.json): its registry name and
        constructor arguments; None where it was not built from the registry."""
        return {"name": callback_name(type(self)), "args": dict(getattr(self, "_args", {}))}


# -- registry -----------------------------------------------------------------------------
CALLBACKS: dict[str, type[Callback]] = {}
# The library's own callbacks that live outside training/ (which must not import them):
# name -> the module that registers it, imported when the name is first built, so a run
# that recorded one (a sweep trial's) resumes from Python as from the CLI.
REGISTERED_ELSEWHERE = {"sweep_trial": "ppl_ssvae.sweeps.pruning"}


def register_callback(name: str) -> Callable[[type[Callback]], type[Callback]]:
    """Class decorator: make a callback class available by ``name`` (config files,
    ``--callback NAME:KEY=VALUE``). Its constructor's keyword arguments are its
    arguments; they are recorded, so a resumed run rebuilds the same callback."""

    def add(cls: type[Callback]) -> type[Callback]:
        if not (isinstance(cls, type) and issubclass(cls, Callback)):
            raise UserError(f"register_callback({name!r}) takes a Callback subclass, got {cls!r}")
        if name in CALLBACKS and CALLBACKS[name] is not cls:
            raise UserError(f"a callback named {name!r} is already registered")
        CALLBACKS[name] = cls
        _record_arguments(cls)
        return cls

    return add


def _record_arguments(cls: type[Callback]) -> None:
    """Wrap ``cls.__init__`` so an instance remembers the arguments that built it."""
    init = cls.__init__
    if getattr(init, "_records_arguments", False):
        return
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self: Callback, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        self._args = {k: v for k, v in list(bound.arguments.items())[1:]}
        init(self, *args, **kwargs)

    recording_init._records_arguments = True  # type: ignore[attr-defined]
    cls.__init__ = recording_init  # type: ignore[method-assign]


def callback_name(cls: type[Callback]) -> str | None:
    return next((name for name, known in CALLBACKS.items() if known is cls), None)


def build_callback(name: str, args: dict[str, Any] | None = None) -> Callback:
    """A registered callback by name, with its arguments checked in one line."""
    if name not in CALLBACKS and name in REGISTERED_ELSEWHERE:
        importlib.import_module(REGISTERED_ELSEWHERE[name])
    if name not in CALLBACKS:
        raise UserError(f"unknown callback {name!r}; choose one of {', '.join(CALLBACKS)}")
    cls, args = CALLBACKS[name], dict(args or {})
    accepted = list(inspect.signature(cls.__init__).parameters)[1:]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise UserError(
            f"callback {name!r} takes no {', '.join(unknown)}; its arguments: "
            f"{', '.join(accepted) or 'none'}"
        )
    try:
        return cls(**args)
    except TypeError as e:
        raise UserError(f"callback {name!r}: {e}") from None


def ordered(callbacks: list[Callback]) -> list[Callback]:
    """The callbacks in the order the loop calls them (stable within one order)."""
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise UserError(f"callbacks must be ppl_ssvae.training.Callback instances, got {cb!r}")
    return sorted(callbacks, key=lambda cb: cb.order)


def state_keys(callbacks: list[Callback]) -> list[str]:
    """One checkpoint key per callback: its class name, numbered when repeated."""
    keys, seen = [], {}
    for cb in callbacks:
        base = type(cb).__name__
        seen[base] = seen.get(base, 0) + 1
        keys.append(base if seen[base] == 1 else f"{base}.{seen[base]}")
    return keys


# -- early stopping -----------------------------------------------------------------------
@register_callback("early_stopping")
class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` (times the best
    value's magnitude with ``relative``) for ``patience`` epochs. ``mode``: ``"max"``
    (accuracies, ELBOs) or ``"min"`` (losses). The epoch that triggers the stop is kept
    (recorded and checkpointed) like any other; the best checkpoint stays what the run's
    selection chose. A resumed run that had stopped trains no further epoch."""

    def __init__(
        self, monitor: str = "val_accuracy", patience: int = 5, min_delta: float = 0.0,
        mode: str = "max", relative: bool = False,
    ) -> None:  # fmt: skip
        require(isinstance(monitor, str) and monitor, f"monitor={monitor!r} must be a name")
        require(
            is_int(patience) and patience >= 1, f"patience={patience!r} must be an integer >= 1"
        )
        require(is_finite_number(min_delta) and min_delta >= 0,
                f"min_delta={min_delta!r} must be a number >= 0")  # fmt: skip
        require(mode in ("max", "min"), f"mode={mode!r} must be 'max' or 'min'")
        require(relative in (True, False), f"relative={relative!r} must be true or false")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.relative = relative
        self.best: float | None = None
        self.wait = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.wait >= self.patience:
            trainer.stop("early_stopping")

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if self.monitor not in record:
            raise UserError(
                f"early stopping monitors {self.monitor!r}, which the epoch's record lacks; "
                f"choose one of {', '.join(k for k, v in record.items() if _is_number(v))}"
            )
        value = float(record[self.monitor])
        sign = 1.0 if self.mode == "max" else -1.0
        margin = self.min_delta * (
            abs(self.best) if self.relative and self.best is not None else 1.0
        )
        if self.best is None or sign * (value - self.best) > margin:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.stop("early_stopping")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state["best"], int(state["wait"])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
