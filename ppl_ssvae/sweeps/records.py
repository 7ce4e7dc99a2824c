"""What a run directory says about its run, read the same way by the sweep (a trial's
objective and user attributes) and by the report (its table): the best-validation epoch,
the last epoch, and the scores a sweep added (``sweep-scores.json``: the test ELBO of the
best checkpoint, and the validation IWAE of an ``iwae`` objective), kept beside the run's
files and keyed by best.pt's SHA-256 so a later best.pt is never described by old scores.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from ..errors import UserError
from ..runs.checkpoint import link_refusal, read_regular_file, write_text_atomic
from ..runs.directory import BEST, RunDir

SCORES = "sweep-scores.json"


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best_record(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch a run selects (as ``fit``'s best-epoch callback does): the first with the
    highest validation accuracy; for models that cannot classify, the highest validation
    ELBO; without either, the last epoch."""
    for key in ("val_accuracy", "elbo"):
        scored = [h for h in history if finite(h.get(key))]
        if scored:
            return max(scored, key=lambda h: h[key])  # max keeps the first of equals
    return history[-1]


def lowest_loss_record(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch with the lowest training loss (the first of equals): selection without a
    validation set, which a semi-supervised run with few labels may not have (Jurasinski
    2019, supplement sec 3.2, Fig 12); the last epoch where no loss was recorded."""
    scored = [h for h in history if finite(h.get("train_loss"))]
    return min(scored, key=lambda h: h["train_loss"]) if scored else history[-1]


def summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's numbers from its epochs (metrics.jsonl)."""
    best, last, lowest = best_record(history), history[-1], lowest_loss_record(history)
    return {
        "best_epoch": best["epoch"],
        "val_accuracy": best.get("val_accuracy"),
        "test_accuracy": best.get("test_accuracy"),
        "last_test_accuracy": last.get("test_accuracy"),
        "lowest_loss_epoch": lowest["epoch"],
        "lowest_loss_test_accuracy": lowest.get("test_accuracy"),
        "test_elbo": best.get("test_elbo"),
        # Cluster-and-label runs (Willetts et al. Table 1): the model-to-true class mapping,
        # and the accuracy on classes with labels and on those without.
        "cluster_mapping": best.get("cluster_mapping"),
        "test_accuracy_visible": best.get("test_accuracy_visible"),
        "test_accuracy_hidden": best.get("test_accuracy_hidden"),
        "epochs": len(history),
        "cpu_minutes": last.get("elapsed_cpu_seconds", math.nan) / 60,
    }


def best_digest(run: RunDir) -> str | None:
    """best.pt's SHA-256; None where there is none."""
    try:
        return hashlib.sha256(read_regular_file(run.file(BEST))).hexdigest()
    except FileNotFoundError:
        return None


def read_scores(run: RunDir) -> dict[str, Any]:
    """The sweep's scores of the run's best.pt as it is now; {} where there are none, or
    they describe another best.pt."""
    try:
        saved = json.loads(read_regular_file(run.file(SCORES)))
    except (FileNotFoundError, ValueError):
        return {}
    except OSError as e:  # a link where the file should be, a folder...
        raise UserError(f"{run.file(SCORES)} is not readable ({e.strerror or e})") from None
    if not isinstance(saved, dict) or saved.get("sha256") != best_digest(run):
        return {}
    return dict(saved.get("scores") or {})


def write_scores(run: RunDir, scores: dict[str, Any]) -> None:
    """Keep ``scores`` of the run's best.pt in the run directory (under its lock)."""
    if run.file(SCORES).is_symlink():
        raise UserError(link_refusal(run.file(SCORES)))
    with run.lock():
        payload = {"checkpoint": BEST, "sha256": best_digest(run), "scores": scores}
        write_text_atomic(run.file(SCORES), json.dumps(payload, indent=2) + "\n")
