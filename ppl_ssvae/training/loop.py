"""The training loop: epochs of SVI steps that emit events to callbacks.

The loop knows nothing of disks, the CLI or protocols: it steps the optimizer over the
batches, keeps the epoch records and its own state (epoch, optimizer, RNGs, clocks, best
epoch), and calls the callbacks (:mod:`ppl_ssvae.training.callbacks`), which do the rest:
evaluation, checkpoints, budgets, the non-finite guard, early stopping, schedules,
loggers and the progress bar.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import SVI

from ..data import SemiSupervisedBatches, SemiSupervisedData
from ..errors import NonFiniteLossError
from ..memory import check_fit_memory
from ..models.base import SemiSupervisedModel
from ..runs.checkpoint import rng_state, set_rng_state
from . import distributed
from .callbacks import Callback, ordered, state_keys
from .devices import denormal_mode, precision_context, resolve_device, resolve_precision
from .distributed import DataParallelSteps, ProcessGroup
from .divergence import is_validation_error
from .optim import SingleOptimizer, weight_prior_decay
from .scales import SiteScales
from .settings import FitSettings, make_optimizer

EVENTS = ("on_fit_start", "on_epoch_start", "on_step_end", "on_evaluate", "on_epoch_end",
          "on_fit_end")  # fmt: skip


@dataclass
class FitResult:
    """What ``fit`` returns; ``history`` holds one dict per epoch (as in metrics.jsonl)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_accuracy: float = -math.inf
    stopped: str = "epochs"
    run_dir: Path | None = None
    # The model's recommended settings (fit_defaults) that fit applied.
    applied_defaults: dict[str, Any] = field(default_factory=dict)
    # Files written at the end of the run beside the checkpoints (``ClusteringArtifacts``).
    artifacts: dict[str, Any] | None = None

    @property
    def best(self) -> dict[str, Any] | None:
        return next((h for h in self.history if h["epoch"] == self.best_epoch), None)


class Trainer:
    """One run's SVI loop. Built by :func:`ppl_ssvae.training.fit`; callbacks receive it
    and read ``model``, ``data``, ``settings``, ``optim``, ``result``, ``epoch``,
    ``precision`` and ``is_main``, and call :meth:`stop` and :meth:`scale_sites`."""

    def __init__(
        self,
        model: SemiSupervisedModel,
        data: SemiSupervisedData,
        settings: FitSettings,
        callbacks: list[Callback],
        group: ProcessGroup | None = None,
    ) -> None:
        self.group = group
        self.is_main = group is None or group.is_main
        rank, world = (group.rank, group.world_size) if group else (0, 1)
        self.model, self.data, self.settings = model, data, settings
        self.callbacks = ordered(list(callbacks))
        self._hooks = {event: self._listeners(event) for event in EVENTS}
        self.device = resolve_device(settings.device)
        self.precision = resolve_precision(settings.precision, self.device)
        self.autocast = precision_context(self.device, self.precision)
        pyro.set_rng_seed(distributed.rank_seed(settings.seed, rank))
        model.to(self.device)
        _forget_model_params(model)
        s = settings
        # The training set goes to the GPU once; one too big for it stays in host memory
        # and each batch is copied from pinned memory (``_device_batches``).
        self.host_batches = self.device.type == "cuda" and not _fits_on(self.device, data.x_train)
        where = torch.device("cpu") if self.host_batches else self.device
        self.batches = SemiSupervisedBatches(
            data.x_train.to(where), data.y_train.to(where), s.batch_size * world,
            s.labelled_share, s.binarize, s.seed, shard=(rank, world),
        )  # fmt: skip
        # Rows of each step's global batch (summed over ranks): what a step's loss sums over.
        self.step_rows = [sum(sizes) for sizes in self.batches.batch_sizes()]
        rows = -(-max(self.step_rows) // world)  # per rank
        check_fit_memory(model, model.config.input_dim, model.config.num_classes,
                         (s.batch_size, rows), s.num_particles, self.device)  # fmt: skip
        decay = 0.0 if s.weight_prior is None else weight_prior_decay(
            s.weight_prior, s.batch_size * world, len(data.x_train))  # fmt: skip
        self.optim: SingleOptimizer = make_optimizer(
            s.optimizer, s.lr, s.lr_decay ** (1.0 / len(self.batches)), s.optimizer_args, decay
        )
        elbo = model.make_elbo(**objective_options(s))
        if group is None:
            self._train_step = SVI(model.model, model.guide, self.optim, elbo).step
        else:
            self._train_step = DataParallelSteps(model, elbo, self.optim, group).step
        self.site_scales = SiteScales()
        self.result = FitResult()
        self.epoch = 0
        self.elapsed_wall = self.elapsed_cpu = 0.0
        self.stop_reason: str | None = None
        # What a non-finite error says of the last good checkpoint (the checkpoint
        # callback keeps it current).
        self.checkpoint_note = "no checkpoint is kept (no run directory)"

    def _listeners(self, event: str) -> list[Callback]:
        # Only callbacks that override a hook are called for it: on_step_end runs for
        # every step, and most callbacks do nothing there.
        return [
            cb for cb in self.callbacks
            if getattr(type(cb), event) is not getattr(Callback, event)
            and (self.is_main or cb.all_ranks)
        ]  # fmt: skip

    def _emit(self, event: str, *args: Any) -> None:
        for cb in self._hooks[event]:
            getattr(cb, event)(self, *args)

    # -- what callbacks call ----------------------------------------------------------------
    def stop(self, reason: str) -> None:
        """Stop training after this epoch (before it, from ``on_epoch_start``); the first
        reason given is the one reported."""
        self.stop_reason = self.stop_reason or reason

    def scale_sites(self, weights: dict[str, float]) -> None:
        """Multiply the log-density of the named sample/factor sites (in model and guide)
        by these weights in the following steps: a KL weight on ``z``, a schedule of the
        classifier term. Applied with ``pyro.poutine``, so the objective stays Pyro's."""
        self.site_scales.weights.update(weights)

    def non_finite(
        self, what: str, step: int | None = None, where: str = "",
        error: type[NonFiniteLossError] = NonFiniteLossError,
        fix: str = "lower the learning rate or check the data",
    ) -> NonFiniteLossError:  # fmt: skip
        """The error that stops training when something became NaN/inf (or diverged)."""
        at = (
            f"epoch {self.epoch}, step {step}"
            if step is not None
            else f"epoch {self.epoch}, {where}"
        )
        return error(f"{what} at {at}; training stopped, {self.checkpoint_note}; {fix}")

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The loop's state and every callback's: a checkpoint's content (this rank's RNG;
        the checkpoint callback gathers every rank's)."""
        states = {
            key: cb.state_dict()
            for key, cb in zip(state_keys(self.callbacks), self.callbacks, strict=True)
        }
        return {
            "model": self.model.state_dict(), "optim": self.optim.get_state(),
            "rng": rng_state(), "epoch": self.epoch, "elapsed_wall": self.elapsed_wall,
            "elapsed_cpu": self.elapsed_cpu, "best_epoch": self.result.best_epoch,
            "best_val_accuracy": self.result.best_val_accuracy, "history": self.result.history,
            "callbacks": {k: v for k, v in states.items() if v},
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore a checkpoint (weights already loaded); the epoch to continue from."""
        self.epoch = int(state["epoch"])
        self.optim.set_state(state["optim"])
        rank = self.group.rank if self.group else 0
        set_rng_state(state.get("rng_ranks", [state["rng"]])[rank])
        self.elapsed_wall, self.elapsed_cpu = state["elapsed_wall"], state["elapsed_cpu"]
        self.result.best_epoch = state["best_epoch"]
        self.result.best_val_accuracy = state["best_val_accuracy"]
        self.result.history = list(state.get("history", []))
        # Checkpoints from before callbacks kept the divergence guard's start on their own.
        legacy = {"NonFiniteGuard": {"divergence_start": state.get("divergence_start")}}
        saved = state.get("callbacks", legacy)
        for key, cb in zip(state_keys(self.callbacks), self.callbacks, strict=True):
            if key in saved:
                cb.load_state_dict(saved[key])
        return self.epoch + 1

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, start_epoch: int = 1) -> FitResult:
        with denormal_mode(self.settings.flush_denormal):
            return self._fit(start_epoch)

    def _fit(self, start_epoch: int) -> FitResult:
        self._emit("on_fit_start")
        for epoch in range(start_epoch, self.settings.epochs + 1):
            self._emit("on_epoch_start", epoch)
            if self._agreed_stop():
                break
            self._epoch(epoch)
            if self._agreed_stop():
                break
        self.result.stopped = self.stop_reason or "epochs"
        self._emit("on_fit_end")
        return self.result

    def _agreed_stop(self) -> bool:
        """Rank 0's decision on every rank (its clocks and records decide)."""
        if self.group is not None:
            self.stop_reason = self.group.broadcast(self.stop_reason if self.is_main else None)
        return self.stop_reason is not None

    def _epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.model.training_stage(epoch):  # a new stage: a fresh optimizer
            self.optim.restart()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        record: dict[str, Any] = {"epoch": epoch, "train_loss": self._train_steps(epoch)}
        self.model.training_stage(None)  # evaluation and checkpoints see the whole model
        train_seconds = time.perf_counter() - wall0
        self._emit("on_evaluate", record)
        epoch_wall, epoch_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        self.elapsed_wall += epoch_wall
        self.elapsed_cpu += epoch_cpu
        record |= {
            "epoch_seconds": epoch_wall, "train_seconds": train_seconds,
            "epoch_cpu_seconds": epoch_cpu, "elapsed_seconds": self.elapsed_wall,
            "elapsed_cpu_seconds": self.elapsed_cpu, "precision": self.precision,
        }  # fmt: skip
        if self.is_main:
            self.result.history.append(record)
        self._emit("on_epoch_end", record)

    def _train_steps(self, epoch: int) -> float:
        self.model.train()
        total, rows = 0.0, 0
        for step, (x, y) in enumerate(self._device_batches(epoch), 1):
            loss = self._step(x, y, step)
            total, rows = total + loss, rows + self.step_rows[step - 1]
            self.mean_loss = total / rows
            self._emit("on_step_end", step, loss)
        return total / max(rows, 1)

    def _device_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.batches.epoch(epoch):
            if self.host_batches:
                x = x.pin_memory().to(self.device, non_blocking=True)
                y = y.pin_memory().to(self.device, non_blocking=True)
            yield x, y

    def _step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> float:
        try:
            # An empty SiteScales is left off the handler stack: nothing to pay per site.
            scales = self.site_scales if self.site_scales.weights else contextlib.nullcontext()
            with self.autocast, scales:
                return self._train_step(x, y)
        except ValueError as e:
            # Pyro validates distribution arguments: NaN parameters, or finite ones whose
            # activations overflowed, surface as a ValueError inside svi.step before the
            # loss can be checked.
            if not all_finite(self.model):
                raise self.non_finite("the parameters became non-finite", step) from e
            if is_validation_error(e):
                raise self.non_finite("the networks' outputs became non-finite", step) from e
            raise


def _forget_model_params(model: SemiSupervisedModel) -> None:
    # pyro.module() returns what the param store already holds under a name, so stale
    # tensors of an earlier model with the same name would be optimised instead of ours.
    # This model's own tensors go too, under whatever name they were stored: a model
    # trained first by another objective (``fit_labelled_only``'s "<name>-labelled-only")
    # would otherwise be in the store under two names, and the store (one name per
    # tensor) fails to delete the second.
    store = pyro.get_param_store()
    mine = {id(p) for p in model.parameters()}
    stale = [n for n, v in store.named_parameters()
             if n.startswith(f"{model.name}.") or id(v) in mine]  # fmt: skip
    for name in stale:
        del store[name]


def _fits_on(device: torch.device, x: torch.Tensor) -> bool:
    """Whether ``x`` takes at most a quarter of the GPU's free memory (the rest is for the
    networks, the enumerated batch and the evaluation passes)."""
    free, _ = torch.cuda.mem_get_info(device)
    return x.element_size() * x.nelement() <= free // 4


def objective_options(settings: FitSettings) -> dict[str, Any]:
    """The ``make_elbo`` options of a run's objective (what the trainer optimises)."""
    options: dict[str, Any] = {}
    if settings.objective is not None:
        options["objective"] = settings.objective
    if settings.num_particles != 1:
        options["num_particles"] = settings.num_particles
    return options


def all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())
