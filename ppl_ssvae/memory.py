"""Memory estimates checked before allocating: a model's weights, one training step, a
posterior's draws. Each check compares its estimate with the memory available and refuses
in one line (``UserError``) naming the setting, the estimate and what is available, instead
of an allocator traceback, or the kernel's OOM killer, after the allocation.

The estimates are rough on purpose and err high, by a small factor, never by orders of
magnitude: they refuse sizes that cannot fit, not ordinary runs (M2 on Fashion-MNIST with
hidden 500 and batch 200 needs about 0.2 GB by them).

Available memory is the kernel's ``MemAvailable`` (within a cgroup's limit) on CPU,
``torch.cuda.mem_get_info`` on a GPU, and at most ``$PPL_SSVAE_MEMORY_LIMIT`` (e.g. ``8G``)
when that is set: a share of a machine shared with other jobs.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import pyro.util
import torch
from torch import nn

from .errors import UserError

#: float32.
BYTES = 4
#: Copies of the weights while training: weights, gradients and Adam's two moments
#: (RMSprop has one moment, two with momentum).
TRAINING_COPIES = 4
#: Peak memory of a step over ``rows x classes x particles x row width x BYTES``
#: (``activation_bytes``): measured 1.1 to 2.8 for m2, adgm, gmdgm, agmdgm and latent
#: (hidden 500 to 2000, batch 200 to 2000, 10 or 50 classes, 1 or 2 particles).
ACTIVATION_FACTOR = 3
#: Rows of the largest evaluation pass after an epoch (``metrics.mean_elbo``'s chunk,
#: each of its rows enumerated over the classes).
EVALUATION_ROWS = 1000
LIMIT_ENV = "PPL_SSVAE_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def available_bytes(device: torch.device | str | None = None) -> int:
    """Bytes that can still be allocated on ``device`` (CPU when None)."""
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda":
        free = torch.cuda.mem_get_info(dev)[0]
    else:
        free = min(_meminfo_available(), _cgroup_available())
    cap = _limit_from_environment()
    return free if cap is None else min(free, cap)


def _meminfo_available() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 2**62  # not Linux: no estimate to refuse by


def _cgroup_available() -> int:
    """A container's limit less its processes' own memory (page cache can be reclaimed):
    cgroup v2, then v1; unlimited when neither limits."""
    root = Path("/sys/fs/cgroup")
    for limit_file, stat_key, stat_file in (
        (root / "memory.max", "anon", root / "memory.stat"),
        (root / "memory/memory.limit_in_bytes", "total_rss", root / "memory/memory.stat"),
    ):
        with contextlib.suppress(OSError, ValueError):
            limit = limit_file.read_text().strip()
            if limit == "max" or int(limit) >= 2**60:
                continue
            stats = dict(line.split() for line in stat_file.read_text().splitlines())
            return max(0, int(limit) - int(stats.get(stat_key, 0)))
    return 2**62


def _limit_from_environment() -> int | None:
    text = os.environ.get(LIMIT_ENV, "").strip().upper().removesuffix("B")
    if not text:
        return None
    unit = text[-1] if text[-1] in _UNITS else ""
    try:
        value = float(text[: len(text) - len(unit)]) * _UNITS[unit]
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UserError(
            f"${LIMIT_ENV}={os.environ[LIMIT_ENV]!r} must be a size such as 8G, 512M or bytes"
        )
    return int(value)


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def require_memory(need: float, what: str, fix: str, device: torch.device | None = None) -> None:
    """Refuse in one line when ``what`` needs more than the memory available on ``device``."""
    free = available_bytes(device)
    if need > free:
        where = f" on {device}" if device is not None and device.type == "cuda" else ""
        raise UserError(
            f"{what} needs about {human_bytes(need)} of memory but {human_bytes(free)} is "
            f"available{where}; {fix}"
        )


# -- a model ------------------------------------------------------------------------------------
def meta_build(
    build: Callable[[], nn.Module], fallback: Callable[[], nn.Module]
) -> nn.Module | None:
    """The module ``build()`` makes, built on the meta device: nothing is allocated, and any
    architecture can be measured exactly (``meta_elements``). A module that computes with
    its tensors while it is built (a flow's masks) cannot be built there: ``fallback()`` is
    built instead (the model with a Gaussian guide, which a flow guide extends); None, with
    a ``MemoryCheckWarning``, if neither can. The RNG is left as it was, so the real build
    draws the same weights."""
    state = pyro.util.get_rng_state()
    try:
        with torch.device("meta"):
            try:
                return build()
            except (NotImplementedError, RuntimeError):
                return fallback()
    except (NotImplementedError, RuntimeError) as e:
        warnings.warn(
            f"the memory of this model cannot be estimated before allocating it, since it "
            f"computes with its tensors while it is built ({e}); it is built unchecked",
            MemoryCheckWarning,
            stacklevel=3,
        )
        return None
    finally:
        pyro.util.set_rng_state(state)


class MemoryCheckWarning(UserWarning):
    """A model's memory could not be estimated before it was allocated."""


def meta_elements(module: nn.Module) -> int:
    """Elements of a module's meta weights and buffers (those it was given, such as a
    custom guide module, are allocated already)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() for t in tensors if t.is_meta)


def check_model_size(elements: int, described: str) -> None:
    """Refuse a model whose weights alone cannot be held in memory; ``described`` names
    its sizes (e.g. ``m2: input_dim=784, z_dim=50, hidden=[500]``)."""
    what = f"the model ({described}) with {elements:.3g} weights"
    require_memory(elements * BYTES, what, "lower those sizes (num_classes counts extra classes)")


# -- training and evaluation --------------------------------------------------------------------
def row_width(model: nn.Module, input_dim: int) -> int:
    """Numbers a network computes per row: the input and the outputs of every layer (the
    first dimension of each weight matrix or kernel), summed over all networks."""
    return input_dim + sum(p.shape[0] for p in model.parameters() if p.dim() >= 2)


def activation_bytes(model: nn.Module, input_dim: int, rows: int, classes: int) -> float:
    """A pass's peak activations: ``rows`` rows, each enumerated over ``classes`` labels."""
    width = row_width(model, input_dim)
    return float(rows) * classes * width * BYTES * ACTIVATION_FACTOR


def evaluation_bytes(model: nn.Module, input_dim: int, classes: int, iwae_rows: int = 0) -> float:
    """The largest evaluation pass, without gradients (half a step's activations):
    ``metrics.mean_elbo``'s chunk of EVALUATION_ROWS rows enumerated over the classes, or
    an IWAE pass of ``iwae_rows`` rows (its samples and classes included). High on purpose:
    that chunk of m2, gmdgm and agmdgm (hidden 500,500; 10 and 50 classes) peaked at 0.3 to
    0.4 of it."""
    return activation_bytes(model, input_dim, max(EVALUATION_ROWS * classes, iwae_rows), 1) / 2


def check_evaluation_memory(
    model: nn.Module, input_dim: int, classes: int, iwae_rows: int, device: torch.device
) -> None:
    """Refuse an evaluation whose passes cannot fit beside the weights (a model trained on a
    bigger machine), before the first pass."""
    rows = max(EVALUATION_ROWS * classes, iwae_rows)
    what = f"one evaluation pass ({rows} rows x {row_width(model, input_dim)} numbers per row)"
    require_memory(evaluation_bytes(model, input_dim, classes, iwae_rows), what,
                   "free memory or evaluate on a bigger machine", device)  # fmt: skip


def check_fit_memory(
    model: nn.Module,
    input_dim: int,
    classes: int,
    batch: tuple[int, int],
    particles: int,
    device: torch.device,
) -> None:
    """Refuse a training run whose step or evaluation pass cannot fit beside the weights'
    gradients and optimiser state, before the first step. ``batch``: ``(batch_size, rows)``,
    the setting and the rows of the largest step it gives (fewer on a small data set);
    ``particles`` samples per row; labels enumerated over ``classes``."""
    batch_size, rows = batch
    weights = sum(p.numel() for p in model.parameters()) * BYTES
    optimiser = (TRAINING_COPIES - 1) * weights  # the weights themselves are allocated
    step = activation_bytes(model, input_dim, rows * particles, classes)
    evaluation = evaluation_bytes(model, input_dim, classes)
    width = row_width(model, input_dim)
    if step >= evaluation:
        what = (f"one training step (batch_size={batch_size}: {rows} rows x num_particles="
                f"{particles} x {classes} classes x {width} numbers per row, with gradients "
                "and optimiser state)")  # fmt: skip
        fix = "lower batch_size or num_particles (or the layer sizes)"
    else:
        what = (f"the evaluation after each epoch ({EVALUATION_ROWS} rows x {classes} classes x "
                f"{width} numbers per row, with gradients and optimiser state)")  # fmt: skip
        fix = "lower the layer sizes"
    require_memory(optimiser + max(step, evaluation), what, fix, device)
