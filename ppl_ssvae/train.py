"""Deprecated: ``ppl_ssvae.train`` moved to :mod:`ppl_ssvae.training` (this module is kept
for one release so that existing scripts still run, with a ``DeprecationWarning``)."""

from __future__ import annotations

import warnings

from .runs.directory import BEST, CHECKPOINT, CONFIG, METRICS
from .training import (
    PRECISION_CHOICES,
    PRECISIONS,
    RESUMABLE,
    FitResult,
    FitSettings,
    PrecisionWarning,
    check_run_start,
    environment,
    fit,
    make_optimizer,
    native_bf16,
    precision_context,
    resolve_device,
    resolve_precision,
)  # fmt: skip

warnings.warn(
    "ppl_ssvae.train is deprecated; import from ppl_ssvae.training instead",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "BEST", "CHECKPOINT", "CONFIG", "METRICS", "PRECISIONS", "PRECISION_CHOICES", "RESUMABLE",
    "FitResult", "FitSettings", "PrecisionWarning", "check_run_start", "environment", "fit",
    "make_optimizer", "native_bf16", "precision_context", "resolve_device", "resolve_precision",
]  # fmt: skip
