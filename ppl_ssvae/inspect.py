"""Looking at trained models: figures of what they generate.

matplotlib is imported inside the plotting functions only: it is an optional (``plots``)
dependency and the package must import without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .models.base import SemiSupervisedModel
from .models.pi_vae import PiVAE


def generation_grid(
    model: SemiSupervisedModel,
    n_per_class: int,
    path: str | Path,
    image_shape: tuple[int, ...] = (28, 28),
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    mean: bool = True,
) -> np.ndarray:
    """Class-conditional samples, one row per class (Berkhahn et al. Figs 2, 3, sec 3.1.4).

    Row ``c`` holds ``model.sample(n_per_class, y=c, mean=mean)``: ``z ~ N(0, I)`` decoded
    with the class set to ``c`` (for the pi-VAE, pi = one-hot(c) fed to the decoder,
    eq. 2), so a row shows the styles the model learned for one class and a column one
    draw of z per class. Each row gets its own draws of z.

    Args:
        model: a trained model that can condition generation on the class (the pi-VAE
            ``ss`` variant with ``pi_to_decoder=True``, or any label-latent model).
        n_per_class: images per row.
        path: where the PNG goes (parent directories are created).
        image_shape: ``(H, W)`` or ``(C, H, W)`` with C = 1 or 3; ``prod`` must equal
            the model's ``input_dim``.
        class_names: row labels (default: the class ids).
        seed: seeds the draws; the global RNG state is restored afterwards.
        mean: decode to the likelihood's mean (pixel probabilities for Bernoulli) rather
            than sampling pixels; the paper's figures show means.

    Returns:
        The tiled image, ``(K*H, n*W)`` for grey levels or ``(K*H, n*W, 3)`` for colour,
        without padding: block ``(c, j)`` is the ``j``-th sample of class ``c``.
    """
    k, d = model.config.num_classes, model.config.input_dim
    _check_conditional(model)
    if n_per_class < 1:
        raise UserError(f"n_per_class={n_per_class} must be at least 1")
    shape = tuple(int(s) for s in image_shape)
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[0] not in (1, 3)):
        raise UserError(f"image_shape={shape} must be (H, W) or (C, H, W) with C = 1 or 3")
    if math.prod(shape) != d:
        raise UserError(
            f"image_shape={shape} has {math.prod(shape)} pixels but the model's input_dim is "
            f"{d}; pass the dataset's image shape (and no std_threshold feature mask)"
        )
    names = [str(c) for c in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise UserError(f"class_names has {len(names)} names but the model has {k} classes")

    devices = [model.device] if model.device.type == "cuda" else []
    was_training = model.training
    model.eval()  # not every model's sample() switches off dropout itself
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            rows = [model.sample(n_per_class, y=c, mean=mean).detach().cpu() for c in range(k)]
    finally:
        model.train(was_training)
    grid = _tile(torch.stack(rows).numpy(), shape)
    _save_grid(grid, names, shape, Path(path))
    return grid


def _check_conditional(model: SemiSupervisedModel) -> None:
    if isinstance(model, PiVAE) and model.decoder is None:
        raise UserError(
            "the pi-VAE 'es' variant has no decoder and cannot generate; use an 'ss' model"
        )
    if isinstance(model, PiVAE) and not model.pi_to_decoder:
        raise UserError(
            "this pi-VAE's decoder does not read pi (variant 'eu' or pi_to_decoder=False), so "
            "it cannot generate a given class; use an 'ss' model with pi_to_decoder=True"
        )


def _tile(samples: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(K, n, D)`` flat samples to one ``(K*H, n*W[, C])`` image."""
    k, n = samples.shape[:2]
    channels, (h, w) = (shape[0] if len(shape) == 3 else 1), shape[-2:]
    images = samples.reshape(k, n, channels, h, w).transpose(0, 3, 1, 4, 2)  # K, H, n, W, C
    grid = images.reshape(k * h, n * w, channels)
    return grid[..., 0] if channels == 1 else grid


def _save_grid(grid: np.ndarray, names: list[str], shape: tuple[int, ...], path: Path) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise UserError("generation_grid needs matplotlib: pip install 'ppl-ssvae[plots]'") from e
    h = shape[-2]
    rows, cols = grid.shape[0] / h, grid.shape[1] / shape[-1]
    # Pixel data outside [0, 1] (a Gaussian decoder's means) are rescaled to the grid's range.
    unit = grid.min() >= 0.0 and grid.max() <= 1.0
    shown = grid if unit else (grid - grid.min()) / max(float(np.ptp(grid)), 1e-12)
    # A bare Figure with the Agg canvas: no pyplot state, no GUI backend, works headless.
    fig = Figure(figsize=(0.6 * cols + 1.2, 0.6 * rows + 0.3))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks([h * (i + 0.5) for i in range(len(names))], names, fontsize=7)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    fig.tight_layout(pad=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
