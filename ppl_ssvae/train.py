"""``fit``: train any model of the library with ``pyro.infer.SVI``.

One ``svi.step`` per mixed batch; evaluation after every epoch; the best epoch by
validation accuracy is kept; checkpoints are atomic and a resumed run reproduces the
uninterrupted one on CPU (same seed).
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import SVI
from tqdm.auto import tqdm

from . import __version__, checkpoint
from .data import SemiSupervisedBatches, SemiSupervisedData
from .errors import NonFiniteLossError, UserError
from .metrics import classification_report, elbo_report
from .models.base import SemiSupervisedModel
from .optim import SingleOptimizer

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"

Evaluator = Callable[[SemiSupervisedModel, SemiSupervisedData], dict[str, Any]]

# Training-step precision: autocast dtype per name (None = off). bf16 autocast runs the
# matrix products of the SVI steps in bfloat16 (AMX / AVX512-BF16 CPUs, recent GPUs) while
# parameters, optimiser state and every distribution stay float32 (nets.full_precision).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class FitResult:
    """What ``fit`` returns; ``history`` holds one dict per epoch (as in metrics.jsonl)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_accuracy: float = -math.inf
    stopped: str = "epochs"
    run_dir: Path | None = None

    @property
    def best(self) -> dict[str, Any] | None:
        return next((h for h in self.history if h["epoch"] == self.best_epoch), None)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available; asking for CUDA without one is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available; use --device cpu")
    return device


def environment() -> dict[str, Any]:
    """Versions and git commit recorded with every run."""
    import numpy
    import sklearn

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here,
        ).stdout.strip() or None  # fmt: skip
        # Edits to tracked files that the commit does not hold.
        dirty = bool(subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, timeout=5, cwd=here,
        ).stdout.strip()) if commit else None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = dirty = None
    return {
        "ppl_ssvae": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "numpy": numpy.__version__,
        "sklearn": sklearn.__version__,
        "threads": torch.get_num_threads(),
        "git_commit": commit,
        "git_dirty": dirty,
        "machine": platform.machine(),
    }


def _forget_model_params(model: SemiSupervisedModel) -> None:
    # pyro.module() returns what the param store already holds under a name, so stale
    # tensors of an earlier model with the same name would be optimised instead of ours.
    store = pyro.get_param_store()
    for name in [n for n in store if n.startswith(f"{model.name}.")]:
        del store[name]


def _check_training_data(model: SemiSupervisedModel, data: SemiSupervisedData) -> None:
    model.check_x(data.x_train)
    model.check_y(data.y_train, len(data.x_train))
    if data.num_classes > model.config.num_classes:
        raise UserError(
            f"the data has {data.num_classes} classes but the model only {model.config.num_classes}"
        )


def fit(
    model: SemiSupervisedModel,
    data: SemiSupervisedData,
    *,
    epochs: int = 30,
    batch_size: int = 200,
    labelled_share: str | float = "natural",
    binarize: bool | None = None,
    lr: float = 1e-3,
    lr_decay: float = 0.9,
    optimizer: str = "adam",
    optimizer_args: dict[str, Any] | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    out: str | Path | None = None,
    resume: bool = False,
    max_minutes: float | None = None,
    max_cpu_minutes: float | None = None,
    precision: str = "fp32",
    progress: bool = True,
    evaluate: Evaluator | None = None,
    run_config: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` on ``data`` with SVI + the model's ELBO (TraceEnum_ELBO).

    Args:
        epochs: passes over the unlabelled training rows.
        batch_size, labelled_share, binarize: see ``SemiSupervisedBatches``. ``binarize=None``
            binarises exactly when the model's likelihood is Bernoulli, so grey levels
            become the binary data that likelihood describes (Willetts et al. App. B).
        lr: learning rate.
        lr_decay: the learning rate is multiplied by this once per epoch (spread evenly
            over its steps); 0.9 takes 1e-3 to ~5e-5 in 30 epochs.
        optimizer: ``"adam"`` or ``"rmsprop"`` (Berkhahn et al. App. A), one torch
            optimizer over all parameters (``ppl_ssvae.optim.SingleOptimizer``).
        optimizer_args: further arguments of that optimizer, e.g. ``{"momentum": 0.9}``.
        seed: seeds parameters' initial noise, batches and z samples.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        out: run directory for ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``
            (last epoch) and ``best.pt`` (best validation accuracy). None: keep nothing.
        resume: continue from ``out/checkpoint.pt``.
        max_minutes: stop, as a normal finish, at the end of the epoch that passes this
            wall-clock budget.
        max_cpu_minutes: stop, as a normal finish, before an epoch that would end past this
            budget of process CPU time (all threads), judged by the previous epoch's CPU
            time, so the run stays within it (the budgets of Willetts et al.-style
            comparisons are CPU-minutes; wall-clock budgets shrink on a shared machine).
        precision: ``"fp32"``, or ``"bf16"`` to run the training steps under bfloat16
            autocast (about twice the steps per CPU-minute on a CPU with AMX; parameters,
            optimiser state and log-densities stay float32). Evaluation is always float32,
            so reported metrics are exact for the trained weights.
        evaluate: ``(model, data) -> dict`` run after each epoch, giving ``val_accuracy``
            (or, for models that cannot classify, ``elbo``: the validation ELBO). None:
            ``classification_report``, or ``elbo_report`` for models without a classifier.
        run_config: extra entries for ``config.json`` (e.g. the data arguments).

    Raises:
        NonFiniteLossError: the loss became NaN/inf; ``checkpoint.pt`` still holds the
            last good epoch.
    """
    if epochs < 0:
        raise UserError(f"epochs={epochs} must be >= 0")
    if max_cpu_minutes is not None and not max_cpu_minutes > 0:
        raise UserError(f"max_cpu_minutes={max_cpu_minutes} must be > 0")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if evaluate is None:
        evaluate = classification_report if model.can_classify else elbo_report
    if resume and out is None:
        raise UserError("resume needs the run directory (out=...)")
    run_dir = Path(out) if out is not None else None
    dev = resolve_device(device)
    autocast = precision_context(dev, precision)
    _check_training_data(model, data)
    pyro.set_rng_seed(seed)
    model.to(dev)
    _forget_model_params(model)
    if binarize is None:
        binarize = model.config.likelihood == "bernoulli"

    batches = SemiSupervisedBatches(
        data.x_train.to(dev), data.y_train.to(dev), batch_size, labelled_share, binarize, seed
    )
    if not 0.0 < lr_decay <= 1.0:
        raise UserError(f"lr_decay={lr_decay} must be in (0, 1]")
    optim = make_optimizer(optimizer, lr, lr_decay ** (1.0 / len(batches)), optimizer_args)
    svi = SVI(model.model, model.guide, optim, model.make_elbo())
    result = FitResult(run_dir=run_dir)
    start_epoch, elapsed_wall, elapsed_cpu = 1, 0.0, 0.0

    if resume:
        state = checkpoint.load(run_dir / CHECKPOINT, map_location=dev)
        model.load_state_dict(state["model"])
        optim.set_state(state["optim"])
        checkpoint.set_rng_state(state["rng"])
        start_epoch = state["epoch"] + 1
        elapsed_wall, elapsed_cpu = state["elapsed_wall"], state["elapsed_cpu"]
        result.best_epoch, result.best_val_accuracy = (
            state["best_epoch"],
            state["best_val_accuracy"],
        )
        result.history = _read_history(run_dir, up_to=state["epoch"])
    elif run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / METRICS).write_text("")
    if run_dir is not None and not (resume and (run_dir / CONFIG).exists()):
        config = {
            "model": model.to_config(),
            "fit": {
                "epochs": epochs, "batch_size": batch_size, "labelled_share": labelled_share,
                "binarize": binarize, "lr": lr, "lr_decay": lr_decay, "optimizer": optimizer,
                "optimizer_args": optimizer_args or {}, "seed": seed, "device": str(dev),
                "max_minutes": max_minutes, "max_cpu_minutes": max_cpu_minutes,
                "precision": precision,
            },
            "data": data.summary,
            **(run_config or {}),
            "environment": environment(),
        }  # fmt: skip
        (run_dir / CONFIG).write_text(json.dumps(config, indent=2, default=str))
    elif run_dir is not None:
        budget = {"epochs": epochs, "max_minutes": max_minutes,
                  "max_cpu_minutes": max_cpu_minutes, "device": str(dev)}  # fmt: skip
        _record_resume(run_dir / CONFIG, start_epoch - 1, budget)

    last_eval: dict[str, Any] = {}
    for epoch in range(start_epoch, epochs + 1):
        if max_minutes is not None and elapsed_wall >= 60 * max_minutes:
            result.stopped = "max_minutes"
            break
        if max_cpu_minutes is not None and result.history:
            next_cpu = result.history[-1]["epoch_cpu_seconds"]
            if elapsed_cpu + next_cpu > 60 * max_cpu_minutes:
                result.stopped = "max_cpu_minutes"
                break
        wall0, cpu0 = time.perf_counter(), time.process_time()
        model.train()
        total_loss, rows = 0.0, 0
        bar = tqdm(batches.epoch(epoch), total=len(batches), desc=f"epoch {epoch}/{epochs}",
                   disable=not progress, leave=False, dynamic_ncols=True)  # fmt: skip
        for step, (x, y) in enumerate(bar):
            with autocast:
                loss = svi.step(x, y)
            if not math.isfinite(loss):
                where = f"{run_dir / CHECKPOINT} (epoch {epoch - 1})" if run_dir else "none kept"
                raise NonFiniteLossError(
                    f"loss became {loss} at epoch {epoch}, step {step + 1}; training stopped, the "
                    f"last good checkpoint is {where}; lower the learning rate or check the data"
                )
            total_loss, rows = total_loss + loss, rows + len(x)
            if step % 10 == 0:
                bar.set_postfix(
                    loss=f"{total_loss / rows:.2f}", val_acc=last_eval.get("val_accuracy")
                )
        bar.close()
        train_seconds = time.perf_counter() - wall0
        last_eval = evaluate(model, data)
        epoch_wall, epoch_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        elapsed_wall, elapsed_cpu = elapsed_wall + epoch_wall, elapsed_cpu + epoch_cpu
        record = {
            "epoch": epoch,
            "train_loss": total_loss / max(rows, 1),
            **last_eval,
            "epoch_seconds": epoch_wall,
            "train_seconds": train_seconds,
            "epoch_cpu_seconds": epoch_cpu,
            "elapsed_seconds": elapsed_wall,
            "elapsed_cpu_seconds": elapsed_cpu,
        }
        result.history.append(record)
        # Best by validation accuracy; by validation ELBO for models that cannot classify.
        val = last_eval.get("val_accuracy", last_eval.get("elbo", float("nan")))
        improved = math.isfinite(val) and val > result.best_val_accuracy
        if improved:
            result.best_epoch, result.best_val_accuracy = epoch, val
        if progress:
            tqdm.write(
                f"epoch {epoch}: loss {record['train_loss']:.2f}  elbo {record.get('elbo', float('nan')):.2f}  "
                f"val acc {last_eval.get('val_accuracy', float('nan')):.4f}  "
                f"test acc {last_eval.get('test_accuracy', float('nan')):.4f}  "
                f"({epoch_wall:.1f}s)"
            )
        if run_dir is not None:
            if improved:
                checkpoint.save_atomic({"model": model.state_dict(), "epoch": epoch, "metrics": record},
                                       run_dir / BEST)  # fmt: skip
            with open(run_dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
            checkpoint.save_atomic(
                {
                    "model": model.state_dict(),
                    "optim": optim.get_state(),
                    "rng": checkpoint.rng_state(),
                    "epoch": epoch,
                    "elapsed_wall": elapsed_wall,
                    "elapsed_cpu": elapsed_cpu,
                    "best_epoch": result.best_epoch,
                    "best_val_accuracy": result.best_val_accuracy,
                },
                run_dir / CHECKPOINT,
            )
    else:
        result.stopped = "epochs"
    if max_minutes is not None and result.stopped == "epochs" and elapsed_wall >= 60 * max_minutes:
        result.stopped = "max_minutes"
    return result


def precision_context(dev: torch.device, precision: str) -> torch.autocast:
    """The autocast context a training step of ``precision`` runs in on ``dev`` (a
    disabled one for ``"fp32"``); reusable across steps."""
    dtype = PRECISIONS[precision]
    if dtype is torch.bfloat16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("precision='bf16' needs a GPU with bfloat16 support; use precision='fp32'")
    return torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def make_optimizer(
    name: str, lr: float, lr_decay_per_step: float = 1.0, options: dict[str, Any] | None = None
) -> SingleOptimizer:
    """The optimizer ``fit`` uses: one torch optimizer (``"adam"``, ``"rmsprop"``) over all
    parameters, with the learning rate multiplied by ``lr_decay_per_step`` after each step."""
    return SingleOptimizer(name, lr, lr_decay_per_step, **(options or {}))


def _record_resume(config_path: Path, from_epoch: int, budget: dict[str, Any]) -> None:
    """Append to config.json's ``resumes`` the part of ``budget`` (``epochs``,
    ``max_minutes``, ``max_cpu_minutes``, ``device``: the settings a resume may change) that
    this resume changed, as ``{"from_epoch", "changed", "git_commit", "git_dirty"}``.

    ``fit`` keeps the values the run started with, so the run's command is still the one
    that started it, and ``resumes`` says how it was continued: without them a run resumed
    with a larger budget would look as if its first budget had trained it.
    """
    config = json.loads(config_path.read_text())
    current = dict(config["fit"])
    for earlier in config.get("resumes", []):
        current.update(earlier["changed"])
    changed = {k: v for k, v in budget.items() if current.get(k) != v}
    if not changed:
        return
    env = environment()
    config.setdefault("resumes", []).append(
        {
            "from_epoch": from_epoch,
            "changed": changed,
            "git_commit": env["git_commit"],
            "git_dirty": env["git_dirty"],
        }  # fmt: skip
    )
    checkpoint.write_text_atomic(config_path, json.dumps(config, indent=2, default=str))


def _read_history(run_dir: Path, up_to: int) -> list[dict[str, Any]]:
    # Epochs after the checkpoint (written before a crash) are dropped: they are redone.
    path = run_dir / METRICS
    lines = path.read_text().splitlines() if path.exists() else []
    history = [json.loads(line) for line in lines if line.strip()]
    history = [h for h in history if h["epoch"] <= up_to]
    path.write_text("".join(json.dumps(h) + "\n" for h in history))
    return history
