"""``FitSettings``: how a run trains, validated once and recorded in config.json."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .. import protocol
from ..data import SemiSupervisedData, parse_labelled_share
from ..errors import UserError, check_seed, is_finite_number, is_int, require
from ..models.base import SemiSupervisedModel
from .devices import PRECISION_CHOICES, resolve_device
from .divergence import DIVERGENCE_FACTOR
from .optim import (
    OPTIMIZER_OPTIONS,
    SingleOptimizer,
    check_optimizer,
    check_scheduler,
    optimizer_args,
)

# Settings a resume may change (the budget and where it runs); the others are the run's
# identity, and a resume that gives another value for one of them is refused.
RESUMABLE = ("epochs", "max_minutes", "max_cpu_minutes", "device", "divergence_factor")
# Settings whose None means "the model's recommendation (its ``fit_defaults``), else the
# library's": what the paper behind a model trained it with (GM-DGM's Adam at 3e-4 on 1:1
# batches, the pi-VAE's RMSprop) reaches Python and the CLI alike.
LIBRARY_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "lr_decay": 0.9, "optimizer": "adam",
                                    "optimizer_args": {}}  # fmt: skip
# What a run saved before a setting existed had instead of the setting's default now.
LEGACY_VALUES: dict[str, Any] = {"flush_denormal": False}


@dataclass
class FitSettings:
    """How ``fit`` trains; saved as-is (resolved) to config.json's ``fit``.

    Attributes:
        epochs: passes over the unlabelled training rows.
        batch_size: rows per step, labelled and unlabelled together.
        labelled_share: the labelled rows' share of each batch: ``"natural"``, ``"1:1"`` or
            a number in [0, 1); None takes the protocol's (1:1 under hidden or extra
            classes, else the data's natural share; ``protocol.default_labelled_share``).
        binarize: dynamic binarisation, a fresh Bernoulli draw per batch; None binarises
            exactly when the likelihood is Bernoulli, so grey levels become the binary
            data it describes (Willetts et al. App. B).
        lr: learning rate. None (as ``lr_decay``, ``optimizer`` and ``optimizer_args``):
            the model's recommendation (``fit_defaults``), else 1e-3.
        lr_decay: the learning rate is multiplied by this once per epoch (spread evenly
            over its steps); 0.9 (the default) takes 1e-3 to ~5e-5 in 30 epochs.
        optimizer: any ``torch.optim`` optimizer by name, case-insensitive (``"adam"``,
            the default; ``"adamw"``, ``"rmsprop"`` (Berkhahn et al. App. A), ``"sgd"``...),
            one torch optimizer over all parameters (``ppl_ssvae.training.optim.SingleOptimizer``).
        optimizer_args: further arguments of that optimizer, e.g. ``{"momentum": 0.9}``
            (merged over the model's recommended ones when it recommends this optimizer).
        lr_scheduler: any ``torch.optim.lr_scheduler`` class by name (``"CosineAnnealingLR"``)
            stepped once per epoch, after ``lr_decay``; None: none.
        lr_scheduler_args: its arguments, e.g. ``{"T_max": 30}``.
        seed: seeds batches, binarisation and z samples.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        max_minutes: stop, as a normal finish, at the end of the epoch that passes this
            wall-clock budget.
        max_cpu_minutes: stop, as a normal finish, before an epoch that would end past this
            budget of process CPU time (all threads), judged by the previous epoch's CPU
            time (the budgets of Willetts et al.-style comparisons are CPU-minutes).
        precision: ``"fp32"``; ``"bf16"`` to run the training steps under bfloat16
            autocast (about twice the steps per CPU-minute with AMX, several times slower
            where bfloat16 is emulated, which warns); ``"auto"``: bf16 exactly where the
            device has native bfloat16 matrix products. Evaluation is always float32.
            The default is fp32 because precision changes a run's numbers, and a run's
            numbers should not depend on which CPU it lands on unless asked.
        objective: the Pyro objective by name (``ppl_ssvae.objectives``); None: the model's.
        num_particles: samples per row of the objective (vectorised); Willetts et al.
            App. B use 2.
        weight_prior: a standard-normal prior on every kernel weighted as Willetts et al.
            App. B weight theirs (``l2_reg``, 0.5 in their runs): an L2 penalty whose
            strength per row matches their batch-mean objective
            (``ppl_ssvae.training.optim.weight_prior_decay``); None: no prior.
        divergence_factor: stop, like a non-finite loss (``DivergenceError``, the last
            good checkpoint intact), when a step's loss per row grows past this many times
            the first step's (``ppl_ssvae.training.divergence.DivergenceGuard``, which says why 1e4);
            None: no such check. A resume may change it.
        flush_denormal: flush subnormal floats to zero on the CPU while training and
            evaluating (``devices.denormal_mode``). Models that enumerate classes make them
            once the classifier is sure, and each costs an x86 CPU a microcode assist: a
            trained M2's step cost 1.44x more with them kept (``benchmarks/denormal_speed``).
            The values lost are below 1.2e-38. Runs saved before this setting had it off.
        progress: show a progress bar (not saved).
    """

    epochs: int = 30
    batch_size: int = 200
    labelled_share: str | float | None = None
    binarize: bool | None = None
    lr: float | None = None
    lr_decay: float | None = None
    optimizer: str | None = None
    optimizer_args: dict[str, Any] | None = None
    lr_scheduler: str | None = None
    lr_scheduler_args: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    max_minutes: float | None = None
    max_cpu_minutes: float | None = None
    precision: str = "fp32"
    objective: str | None = None
    num_particles: int = 1
    weight_prior: float | None = None
    divergence_factor: float | None = DIVERGENCE_FACTOR
    flush_denormal: bool = True
    progress: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FitSettings:
        """From config.json's ``fit``; keys of later versions are refused, missing ones
        (runs saved before a setting existed) take the default the run had then."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserError(f"unknown fit settings {unknown}; choose from {sorted(names)}")
        return cls(**{**LEGACY_VALUES, **values})

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        del values["progress"]
        return values

    def validate(self) -> None:
        """One UserError for the first bad setting, before anything is written."""
        require(
            is_int(self.epochs) and self.epochs >= 0,
            f"epochs={self.epochs!r} must be an integer >= 0",
        )
        require(is_int(self.batch_size) and self.batch_size >= 1,
                 f"batch_size={self.batch_size!r} must be an integer >= 1")  # fmt: skip
        if self.labelled_share is not None:
            parse_labelled_share(self.labelled_share)
        require(
            self.binarize in (None, True, False),
            f"binarize={self.binarize!r} must be true, false or None",
        )
        require(
            self.lr is None or _positive(self.lr), f"lr={self.lr!r} must be a finite number > 0"
        )
        require(self.lr_decay is None or (is_finite_number(self.lr_decay) and 0.0 < self.lr_decay <= 1.0),
                 f"lr_decay={self.lr_decay!r} must be in (0, 1]")  # fmt: skip
        if self.optimizer is not None:  # else checked once the model's choice is known
            check_optimizer(self.optimizer, self.optimizer_args or {})
        check_scheduler(self.lr_scheduler, self.lr_scheduler_args)
        check_seed(self.seed)
        resolve_device(self.device)
        for name in ("max_minutes", "max_cpu_minutes"):
            value = getattr(self, name)
            require(
                value is None or _positive(value), f"{name}={value!r} must be a finite number > 0"
            )
        require(self.precision in PRECISION_CHOICES,
                 f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")  # fmt: skip
        require(self.objective is None or isinstance(self.objective, str),
                 f"objective={self.objective!r} must be a name")  # fmt: skip
        require(is_int(self.num_particles) and self.num_particles >= 1,
                 f"num_particles={self.num_particles!r} must be an integer >= 1")  # fmt: skip
        require(self.weight_prior is None or _positive(self.weight_prior),
                f"weight_prior={self.weight_prior!r} must be a finite number > 0 (or None)")  # fmt: skip
        factor = self.divergence_factor
        require(factor is None or (is_finite_number(factor) and factor > 1),
                f"divergence_factor={factor!r} must be a finite number > 1 (or None)")  # fmt: skip
        require(isinstance(self.flush_denormal, bool),
                f"flush_denormal={self.flush_denormal!r} must be true or false")  # fmt: skip

    def recommended(self, model: SemiSupervisedModel) -> tuple[FitSettings, dict[str, Any]]:
        """Every None that the model's paper recommends a value for (``fit_defaults``)
        filled with it, the other Nones of ``LIBRARY_DEFAULTS`` with the library's; and
        what was taken from the model (recorded, and said by the CLI)."""
        recs = model_recommendations(model)
        applied = {k: recs[k] for k in ("labelled_share", "binarize", "lr", "lr_decay",
                                         "optimizer") if getattr(self, k) is None and k in recs}  # fmt: skip
        values = {**{k: copy.deepcopy(v) for k, v in LIBRARY_DEFAULTS.items() if getattr(self, k) is None},
                  **applied}  # fmt: skip
        if self.lr_decay is None and "lr_decay" not in applied and self.lr_scheduler:
            values["lr_decay"] = 1.0  # a scheduler replaces the per-epoch decay
        optimizer = values["optimizer"] = (values.get("optimizer") or self.optimizer).lower()
        # The model's optimizer arguments are for the optimizer it recommends (RMSprop's
        # rho is no Adam argument); the user's own arguments win over them.
        rec_args = recs.get("optimizer_args", {})
        if rec_args and optimizer == recs.get("optimizer", LIBRARY_DEFAULTS["optimizer"]):
            taken = {k: v for k, v in rec_args.items() if k not in (self.optimizer_args or {})}
            if taken:
                applied["optimizer_args"] = taken
            values["optimizer_args"] = {**rec_args, **(self.optimizer_args or {})}
        return dataclasses.replace(self, **values), applied

    def resolved(self, model: SemiSupervisedModel, data: SemiSupervisedData) -> FitSettings:
        """The settings with every protocol default filled in from the model and data
        (after ``recommended``)."""
        share = self.labelled_share
        if share is None:
            share = protocol.default_labelled_share(model.config.num_classes, data)
        binarize = (
            model.config.likelihood == "bernoulli" if self.binarize is None else self.binarize
        )
        return dataclasses.replace(self, labelled_share=share, binarize=binarize,
                                   device=str(resolve_device(self.device)))  # fmt: skip

    def resume_changes(self, recorded: FitSettings) -> dict[str, Any]:
        """The settings this resume changes; a change of anything but ``RESUMABLE`` is
        refused in one line (the run's batches, optimiser and seed are its identity)."""
        mine, theirs = self.to_dict(), recorded.to_dict()
        changed = {k: v for k, v in mine.items() if theirs.get(k) != v}
        fixed = sorted(k for k in changed if k not in RESUMABLE)
        require(not fixed, "a resume continues the run with its recorded settings; "
                f"{', '.join(f'{k}={mine[k]!r} (recorded {theirs.get(k)!r})' for k in fixed)} "
                f"cannot change (only {', '.join(RESUMABLE)} may); start a new run instead")  # fmt: skip
        return changed


def model_recommendations(model: SemiSupervisedModel | type[SemiSupervisedModel]) -> dict[str, Any]:
    """A model's ``fit_defaults`` as FitSettings fields (its optimizer flags such as
    ``rho`` become ``optimizer_args`` in torch's names)."""
    defaults = dict(model.fit_defaults)
    args = optimizer_args(defaults)
    recs = {k: v for k, v in defaults.items() if k not in OPTIMIZER_OPTIONS}
    if args:
        recs["optimizer_args"] = args
    return recs


def _positive(value: Any) -> bool:
    return is_finite_number(value) and value > 0


def make_optimizer(
    name: str,
    lr: float,
    lr_decay_per_step: float = 1.0,
    options: dict[str, Any] | None = None,
    kernel_decay: float = 0.0,
) -> SingleOptimizer:
    """The optimizer ``fit`` uses: one torch optimizer (any ``torch.optim`` name) over all
    parameters, with the learning rate multiplied by ``lr_decay_per_step`` after each step
    and an L2 penalty of strength ``kernel_decay`` on the kernels."""
    return SingleOptimizer(name, lr, lr_decay_per_step, kernel_decay, **(options or {}))
