"""Training: ``fit`` runs an SVI loop (``Trainer``) that emits events to callbacks.

Everything a run does besides the SVI steps is a callback (evaluation, checkpoints,
budgets, the non-finite guard, progress, early stopping, KL warm-up, schedules,
loggers); a researcher's own callback is a subclass of ``Callback``::

    from ppl_ssvae.training import EarlyStopping, KLWarmup, fit
    fit(model, data, epochs=30, callbacks=[KLWarmup(epochs=10), EarlyStopping(patience=5)])
"""

from .callbacks import CALLBACKS, Callback, EarlyStopping, build_callback, register_callback
from .devices import (
    PRECISION_CHOICES,
    PRECISIONS,
    PrecisionWarning,
    environment,
    native_bf16,
    precision_context,
    resolve_device,
    resolve_precision,
)  # fmt: skip
from .fit import check_run_start, fit
from .loggers import CSVLogger, MLflowLogger, TensorBoardLogger
from .loop import FitResult, Trainer
from .schedules import AlphaSchedule, KLWarmup, LRScheduler, warmup_weight
from .settings import RESUMABLE, FitSettings, make_optimizer
from .standard import RestoreBestWeights

__all__ = [
    "CALLBACKS", "PRECISIONS", "PRECISION_CHOICES", "RESUMABLE", "AlphaSchedule", "CSVLogger",
    "Callback", "EarlyStopping", "FitResult", "FitSettings", "KLWarmup", "LRScheduler",
    "MLflowLogger", "PrecisionWarning", "RestoreBestWeights", "TensorBoardLogger", "Trainer", "build_callback",
    "check_run_start", "environment", "fit", "make_optimizer", "native_bf16",
    "precision_context", "register_callback", "resolve_device", "resolve_precision",
    "warmup_weight",
]  # fmt: skip
