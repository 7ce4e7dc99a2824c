"""Loggers: each epoch's record (the same one metrics.jsonl holds) written elsewhere too.

``csv`` needs nothing; ``tensorboard`` (the ``tensorboard`` extra) and ``mlflow`` (the
``mlflow`` extra) are imported when the logger starts, and a missing package is one line
naming the extra to install. Every number of the record becomes a scalar (step = epoch);
``images=True`` also logs a grid of samples per class from the model each epoch (the
generation figure of ``ppl-ssvae inspect``).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..runs.checkpoint import link_refusal, write_bytes_atomic
from .callbacks import LOG, Callback, register_callback
from .loop import Trainer


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's finite numbers (what a logger can plot)."""
    return {
        k: float(v) for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }  # fmt: skip


def _log_dir(given: str | None, trainer: Trainer, default: str) -> Path:
    """Where a logger writes: the path given, else ``default`` in the run directory, which
    is refused when a link stands there (nothing is written through a link out of a run)."""
    if given:
        return Path(given)
    if trainer.result.run_dir is None:
        raise UserError(f"the {default} logger needs a path (no run directory to write it in)")
    path = Path(trainer.result.run_dir) / default
    if path.is_symlink():
        raise UserError(link_refusal(path))
    return path


@register_callback("csv")
class CSVLogger(Callback):
    """One CSV row per epoch at ``path`` (default: ``metrics.csv`` in the run directory);
    columns are the first record's keys plus any that appear later. The file is
    rewritten whole each epoch from the run's history, so a resumed run's CSV holds
    exactly its records."""

    order = LOG

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def on_fit_start(self, trainer: Trainer) -> None:
        self.file = _log_dir(self.path, trainer, "metrics.csv")  # refused before any epoch

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        history = trainer.result.history
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for r in history for k in r)))
        writer.writeheader()
        writer.writerows(history)
        # Replaced by a rename, like the run's own files: never written through a link.
        write_bytes_atomic(self.file, text.getvalue().encode())


def _image_grid(trainer: Trainer, per_class: int = 8) -> Any:
    """``(classes * per_class, 1, H, W)`` samples in [0, 1], or None without image data."""
    import torch

    shape = trainer.data.image_shape
    model = trainer.model
    if not shape or not model.has_decoder:
        return None
    classes = torch.arange(model.config.num_classes).repeat_interleave(per_class)
    x = model.sample(len(classes), y=classes.to(model.device), mean=True).float().cpu()
    h, w = shape[-2], shape[-1]
    return x.reshape(len(x), 1, h, w).clamp(0, 1)


@register_callback("tensorboard")
class TensorBoardLogger(Callback):
    """TensorBoard event files in ``log_dir`` (default: ``tensorboard/`` in the run
    directory): the record's scalars each epoch, and with ``images`` a sample grid."""

    order = LOG

    def __init__(self, log_dir: str | None = None, images: bool = False) -> None:
        self.log_dir, self.images = log_dir, images
        self.writer: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "the tensorboard logger needs TensorBoard: pip install 'ppl-ssvae[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(str(_log_dir(self.log_dir, trainer, "tensorboard")))

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        epoch = record["epoch"]
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, epoch)
        grid = _image_grid(trainer) if self.images else None
        if grid is not None:
            self.writer.add_images("samples", grid, epoch)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()


@register_callback("mlflow")
class MLflowLogger(Callback):
    """An MLflow run (``tracking_uri``, default MLflow's own: ``./mlruns``) in
    ``experiment``: the run's settings as parameters at the start, the record's scalars
    as metrics each epoch (step = epoch), and with ``images`` a sample grid."""

    order = LOG

    def __init__(
        self, experiment: str = "ppl-ssvae", tracking_uri: str | None = None,
        run_name: str | None = None, images: bool = False,
    ) -> None:  # fmt: skip
        self.experiment, self.tracking_uri = experiment, tracking_uri
        self.run_name, self.images = run_name, images
        self.client: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        try:
            import mlflow
        except ImportError:
            raise UserError(
                "the mlflow logger needs MLflow: pip install 'ppl-ssvae[mlflow]'"
            ) from None
        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment(self.experiment)
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=self.run_name)
        params = {**trainer.settings.to_dict(), "model": trainer.model.name,
                  "guide": trainer.model.config.guide}  # fmt: skip
        mlflow.log_params({k: str(v) for k, v in params.items()})

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.mlflow.log_metrics(scalars(record), step=record["epoch"])
        grid = _image_grid(trainer) if self.images else None
        if grid is not None:
            image = grid.permute(0, 2, 3, 1).reshape(-1, grid.shape[-1]).numpy()
            self.mlflow.log_image(image, key="samples", step=record["epoch"])

    def on_fit_end(self, trainer: Trainer) -> None:
        if getattr(self, "run", None) is not None:
            self.mlflow.end_run()
