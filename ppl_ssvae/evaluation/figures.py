"""Pictures of a trained model, each returned as a matplotlib ``Figure``: the model graph,
the confusion matrix, the latent space, class-conditional samples and analogies, ROC
curves and training curves. matplotlib and scikit-learn are imported inside the functions
that need them: they are optional (``plots``) dependencies."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from ..errors import UserError, is_int
from ..guides.sampling import seeded_rng
from ..models.base import SemiSupervisedModel
from ..nn import eval_mode
from .posterior import class_names_of


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
    if not is_int(n_per_class) or n_per_class < 1:
        raise UserError(f"n_per_class={n_per_class!r} must be an integer >= 1")
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

    # not every model's sample() switches off dropout itself
    with eval_mode(model), seeded_rng(seed, model.device):
        rows = [model.sample(n_per_class, y=c, mean=mean).detach().cpu() for c in range(k)]
    grid = _tile(torch.stack(rows).numpy(), shape)
    _save_grid(grid, names, shape, Path(path))
    return grid


def _check_conditional(model: SemiSupervisedModel) -> None:
    if not model.has_decoder:
        raise UserError(
            f"this {model.name!r} model has no decoder and cannot generate (the pi-VAE 'es' "
            "variant); use a model with one (an 'ss' pi-VAE)"
        )
    if not model.generates_by_class:
        raise UserError(
            f"this {model.name!r} model's decoder does not read pi or the class (a pi-VAE of variant "
            "'eu' or pi_to_decoder=False), so it cannot generate a given class; use an 'ss' "
            "model with pi_to_decoder=True"
        )


def _tile(samples: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(K, n, D)`` flat samples to one ``(K*H, n*W[, C])`` image."""
    k, n = samples.shape[:2]
    channels, (h, w) = (shape[0] if len(shape) == 3 else 1), shape[-2:]
    images = samples.reshape(k, n, channels, h, w).transpose(0, 3, 1, 4, 2)  # K, H, n, W, C
    grid = images.reshape(k * h, n * w, channels)
    return grid[..., 0] if channels == 1 else grid


def _save_grid(grid: np.ndarray, names: list[str], shape: tuple[int, ...], path: Path) -> None:
    fig = _grid_figure(grid, names, shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _grid_figure(grid: np.ndarray, names: list[str], shape: tuple[int, ...]) -> Any:
    fig = _figure(0.6 * grid.shape[1] / shape[-1] + 1.2, 0.6 * grid.shape[0] / shape[-2] + 0.3)
    h = shape[-2]
    # Pixel data outside [0, 1] (a Gaussian decoder's means) are rescaled to the grid's range.
    unit = grid.min() >= 0.0 and grid.max() <= 1.0
    shown = grid if unit else (grid - grid.min()) / max(float(np.ptp(grid)), 1e-12)
    ax = fig.add_subplot()
    ax.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks([h * (i + 0.5) for i in range(len(names))], names, fontsize=7)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    fig.tight_layout(pad=0.2)
    return fig


def _figure(width: float, height: float) -> Any:
    """A bare Figure with the Agg canvas: no pyplot state, no GUI backend, works headless."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise UserError("figures need matplotlib: pip install 'ppl-ssvae[plots]'") from e
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


# -- pictures: each returns a matplotlib Figure -------------------------------------------


def render_model_figure(
    model: SemiSupervisedModel, x: torch.Tensor, y: torch.Tensor | None = None
) -> Any:
    """``pyro.render_model`` of ``model.model`` on rows ``x`` / ``y`` (give both labelled
    and ``-1`` rows to show the ``obs_mask`` split into ``y_observed`` / ``y_unobserved``).

    Needs the ``graphviz`` Python package and its ``dot`` program."""
    x = model.check_x(x)
    y = torch.full((len(x),), -1, dtype=torch.long) if y is None else torch.as_tensor(y)
    try:
        import graphviz  # noqa: F401  (pyro.render_model imports it itself)

        graph = pyro.render_model(model.model, model_args=(x, y), render_distributions=True)
        png = graph.pipe(format="png")
    except (ImportError, OSError) as e:  # OSError/ExecutableNotFound: no `dot` program
        raise UserError(
            "render_model needs graphviz: pip install graphviz and install the dot program"
        ) from e
    import io

    import matplotlib.image

    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    fig = _figure(image.shape[1] / 100 + 0.2, image.shape[0] / 100 + 0.2)
    ax = fig.add_subplot()
    ax.imshow(image)
    ax.set_axis_off()
    return fig


def confusion_figure(
    model: SemiSupervisedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    class_names: Sequence[str] | None = None,
) -> Any:
    """Confusion matrix of ``model.predict(x)`` against the labels ``y``, rows normalised."""
    from sklearn.metrics import confusion_matrix

    names = class_names_of(model, class_names)
    k = len(names)
    matrix = confusion_matrix(
        torch.as_tensor(y).cpu().numpy(), model.predict(x).cpu().numpy(), labels=range(k)
    )
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig = _figure(1.0 + 0.45 * k, 0.8 + 0.45 * k)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), count in np.ndenumerate(matrix):
        colour = "white" if shares[i, j] > 0.5 else "black"
        ax.text(j, i, str(count), ha="center", va="center", fontsize=6, color=colour)
    ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"accuracy {accuracy:.3f}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def latent_figure(
    model: SemiSupervisedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    method: str = "tsne",
    class_names: Sequence[str] | None = None,
    seed: int = 0,
) -> Any:
    """The posterior means of z (:meth:`~SemiSupervisedModel.encode`) in 2-D by t-SNE or
    PCA (scikit-learn), coloured by the class ``y``."""
    points = embed_2d(model.encode(x)["z_mean"].cpu().numpy(), method, seed)
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot()
    scatter_by_class(ax, points, y, class_names_of(model, class_names))
    ax.set_title(f"posterior means of z ({method})", fontsize=9)
    fig.tight_layout()
    return fig


def embed_2d(z: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """``z`` (N, d) in two dimensions: t-SNE or PCA (scikit-learn); d <= 2 as it is."""
    if method not in ("tsne", "pca"):
        raise UserError(f"unknown method {method!r}; choose tsne or pca")
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if z.shape[1] <= 2:
        return z
    if method == "pca":
        return PCA(2, random_state=seed).fit_transform(z)
    # 500 iterations (not 1000): the picture settles by then, at half the CPU time.
    tsne = TSNE(2, perplexity=min(30.0, (len(z) - 1) / 3), max_iter=500, random_state=seed)
    return tsne.fit_transform(z)


def scatter_by_class(ax: Any, points: np.ndarray, y: Any, names: Sequence[str]) -> None:
    """2-D ``points`` on ``ax``, one colour and legend entry per class of ``y``."""
    labels = torch.as_tensor(y).cpu().numpy()
    for c, name in enumerate(names):
        rows = labels == c
        if rows.any():
            ax.scatter(
                points[rows, 0], points[rows, 1], s=4, label=name, color=_colour(c, len(names))
            )
    ax.legend(fontsize=6, markerscale=2, loc="best")


def _colour(c: int, k: int) -> Any:
    from matplotlib import colormaps

    return colormaps["tab10" if k <= 10 else "tab20"](c % 20)


def samples_figure(
    model: SemiSupervisedModel,
    n_per_class: int,
    image_shape: tuple[int, ...],
    class_names: Sequence[str] | None = None,
    seed: int = 0,
) -> Any:
    """Class-conditional samples, one row per class (:func:`generation_grid`'s figure)."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        grid = generation_grid(model, n_per_class, Path(scratch) / "grid.png", image_shape,
                               class_names, seed)  # fmt: skip
    return _grid_figure(grid, class_names_of(model, class_names), tuple(image_shape))


def analogy_figure(
    model: SemiSupervisedModel,
    x: torch.Tensor,
    image_shape: tuple[int, ...],
    class_names: Sequence[str] | None = None,
) -> Any:
    """Analogies (Kingma et al. Fig. 1): per row, a test image, then its style z (the
    posterior mean) decoded with every class. Models whose decoder does not see y
    (GM-DGM, AGM-DGM, the simplified latent classifier) repeat one image per row."""
    _check_conditional(model)
    x = model.check_x(x)
    names = class_names_of(model, class_names)
    with torch.no_grad():
        z = model.encode(x)["z_mean"]
        decoded = [model.decode(z, torch.full((len(x),), c, device=z.device)).mean
                   for c in range(len(names))]  # fmt: skip
    columns = torch.stack([x, *decoded], 1).cpu().numpy()  # (N, 1 + K, D)
    shape = tuple(int(s) for s in image_shape)
    grid = _tile(columns, shape)
    fig = _grid_figure(grid, [f"x{i}" for i in range(len(x))], shape)
    ax = fig.axes[0]
    ax.set_xticks([shape[-1] * (j + 0.5) for j in range(1 + len(names))], ["input", *names],
                  rotation=90, fontsize=7)  # fmt: skip
    fig.tight_layout(pad=0.2)
    return fig


def roc_figure(
    scores: Mapping[str, torch.Tensor | np.ndarray],
    is_anomaly: torch.Tensor | np.ndarray,
    lower_is_anomalous: bool = True,
) -> Any:
    """ROC curves of anomaly scores, one per named score (e.g. per model), with their AUC
    in the legend. Scores as :func:`ppl_ssvae.evaluation.anomaly.reconstruction_log_prob` gives them:
    lower means more anomalous (``lower_is_anomalous=False`` for the opposite)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    truth = np.asarray(torch.as_tensor(is_anomaly).cpu(), dtype=bool)
    fig = _figure(4.5, 4.0)
    ax = fig.add_subplot()
    for name, score in scores.items():
        s = np.asarray(torch.as_tensor(score).cpu(), dtype=float)
        s = -s if lower_is_anomalous else s
        fpr, tpr, _ = roc_curve(truth, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(truth, s):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def training_figure(history: str | Path | Sequence[Mapping[str, Any]]) -> Any:
    """Accuracy and ELBO against epoch and against CPU-minutes, from a run directory (its
    ``metrics.jsonl``) or a list of epoch records (``FitResult.history``)."""
    if isinstance(history, (str, Path)):
        from ..runs.directory import RunDir

        history = RunDir(history).read_history()
    if not history:
        raise UserError("the run has no finished epoch to plot")
    epochs = [r["epoch"] for r in history]
    cpu = [r.get("elapsed_cpu_seconds", math.nan) / 60 for r in history]
    fig = _figure(8.0, 5.5)
    panels = [("accuracy", ("val_accuracy", "test_accuracy")), ("ELBO", ("elbo", "train_loss"))]
    for row, (what, keys) in enumerate(panels):
        for col, (xs, xlabel) in enumerate([(epochs, "epoch"), (cpu, "CPU-minutes")]):
            ax = fig.add_subplot(2, 2, 2 * row + col + 1)
            for key in keys:
                ys = [_number(r.get(key)) for r in history]
                if key == "train_loss":  # the loss is a negative ELBO per row
                    key, ys = "train ELBO", [-v for v in ys]
                if not all(math.isnan(v) for v in ys):
                    ax.plot(xs, ys, marker=".", label=key)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(what, fontsize=8)
            ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan
