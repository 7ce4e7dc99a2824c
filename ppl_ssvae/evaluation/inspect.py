"""Looking at trained models: the posterior as ArviZ ``InferenceData``, and figures.

* :func:`posterior` draws ``y``, ``z`` (and ``a``) per row from the guide, with
  reconstructions and per-draw log-likelihoods, as one ``arviz.InferenceData``.
* :func:`kl_activity` is the per-unit KL activity of z per class (Willetts et al. App. C).
* Picture functions return a matplotlib ``Figure`` (``render_model_figure``,
  ``confusion_figure``, ``latent_figure``, ``samples_figure``, ``analogy_figure``,
  ``roc_figure``, ``training_figure``); :func:`write_inspection` writes them all for a run
  directory.

matplotlib, arviz and scikit-learn are imported inside the functions that need them: they
are optional (``plots``) dependencies and the package must import without them.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import config_enumerate, infer_discrete

from ..errors import UserError, is_int
from ..guides.sampling import seeded_rng
from ..memory import BYTES, require_memory
from ..models.base import SemiSupervisedModel
from ..plates import MAX_PLATE_NESTING

if TYPE_CHECKING:
    from ..runs.directory import RunDir


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

    was_training = model.training
    model.eval()  # not every model's sample() switches off dropout itself
    try:
        with seeded_rng(seed, model.device):
            rows = [model.sample(n_per_class, y=c, mean=mean).detach().cpu() for c in range(k)]
    finally:
        model.train(was_training)
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


# -- the posterior as InferenceData ---------------------------------------------------------

# Rows of one guide pass (data rows x draws), so that memory stays bounded for any S.
_MAX_PASS_ROWS = 20_000


def posterior(
    model: SemiSupervisedModel,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 100,
    seed: int = 0,
    exact_y: bool = False,
    iwae_samples: int = 0,
    class_names: Sequence[str] | None = None,
) -> Any:
    """Posterior draws per row from the guide, as one ``arviz.InferenceData``.

    Groups (one chain; dims ``chain, draw, row, ...``):

    * ``posterior``: ``y`` (row) — observed rows keep their label, unlabelled rows draw
      ``y ~ q(y|x)`` (the guide's ``y_unobserved`` site, enumerated in training, sampled
      here; for models without a label latent, the classifier ``model.classify``);
      ``z`` (row, z_dim) from ``q(z|x, y)`` given that draw; ``a`` (row, a_dim) for
      ADGM / AGM-DGM; with ``exact_y`` also ``y_exact``: a draw from the model's own
      posterior ``p(y|x, z[, a])`` given the guide's z (``infer_discrete`` over the model
      with z replayed; label-latent models only).
    * ``posterior_predictive``: ``x`` (row, pixel), the decoder's mean of ``p(x|z, y)``.
    * ``log_likelihood``: ``x`` (row), ``log p(x|z, y)`` per draw (for ``az.loo``/``waic``).
    * ``observed_data``: ``x`` and ``y`` (``-1`` = unlabelled).
    * ``constant_data``: ``q_y`` (row, class), the classifier's probabilities; with
      ``iwae_samples > 0`` also ``log_p_x`` (row), the IWAE estimate of
      :func:`ppl_ssvae.evaluation.likelihood.log_likelihood` (``log p(x, y)`` on labelled rows).

    Coordinates ``class`` hold the class names; ``attrs["class_names"]`` maps the ids.
    Works with every guide family (the guide is traced, so flows sample through Pyro).

    Args:
        model: any library model; ``x`` is scaled as in training.
        y: ``(N,)`` labels, ``-1`` for rows whose label is inferred (default: all).
        num_samples: S, draws per row.
        seed: seeds every draw; the global RNG is left as it was.
    """
    x = model.check_x(x)
    y = torch.full((len(x),), -1, dtype=torch.long) if y is None else torch.as_tensor(y)
    y = model.check_y(y, len(x))
    if not is_int(num_samples) or num_samples < 1:
        raise UserError(f"num_samples={num_samples!r} must be an integer >= 1")
    if not is_int(iwae_samples) or iwae_samples < 0:
        raise UserError(f"iwae_samples={iwae_samples!r} must be an integer >= 0 (0: none)")
    check_posterior_memory(model, len(x), num_samples)
    if exact_y and not model.label_is_latent:
        raise UserError(
            f"exact_y needs a model whose label is a latent of the model (m2, adgm, gmdgm, "
            f"agmdgm); {model.name!r} is not one"
        )
    names = _class_names(model, class_names)
    was_training = model.training
    model.eval()
    try:
        with seeded_rng(seed, x.device), torch.no_grad():
            pyro.set_rng_seed(seed)
            draws = _draws(model, x, y, num_samples, exact_y)
            recon, log_lik = _reconstruct(model, x, draws)
            q_y = model.classify(x) if model.can_classify else None
        log_p_x = _iwae(model, x, y, iwae_samples, seed)
    finally:
        model.train(was_training)
    return _inference_data(x, y, draws, recon, log_lik, q_y, log_p_x, names)


def check_posterior_memory(model: SemiSupervisedModel, rows: int, num_samples: int) -> None:
    """Refuse a posterior whose draws cannot be held in memory, before drawing (or writing)
    anything: per draw and row the decoder's mean and its input (input_dim each), their
    copies when the chunks are joined and converted, and the latents."""
    c = model.config
    per_draw = 4 * c.input_dim + getattr(c, "z_dim", 0) + getattr(c, "a_dim", 0) + 4
    need = float(num_samples) * rows * per_draw * BYTES
    what = f"the posterior of {rows} rows x num_samples={num_samples} draws"
    require_memory(need, what, "lower num_samples (--num-samples) or the rows (--rows)")


def _class_names(model: SemiSupervisedModel, class_names: Sequence[str] | None) -> list[str]:
    k = model.config.num_classes
    names = [str(c) for c in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise UserError(f"class_names has {len(names)} names but the model has {k} classes")
    return names


def _draws(
    model: SemiSupervisedModel, x: torch.Tensor, y: torch.Tensor, s: int, exact_y: bool
) -> dict[str, torch.Tensor]:
    """``{site: (S, N, ...)}``: S passes of the guide as one batch of S*N rows, chunked by
    whole draws (a bigger batch, not a new batch dim, so every guide family works as is)."""
    per_pass = max(1, _MAX_PASS_ROWS // max(len(x), 1))
    chunks = [
        _draw_chunk(model, x, y, min(per_pass, s - i), exact_y) for i in range(0, s, per_pass)
    ]
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def _draw_chunk(
    model: SemiSupervisedModel, x: torch.Tensor, y: torch.Tensor, s: int, exact_y: bool
) -> dict[str, torch.Tensor]:
    n = len(x)
    x_rep, y_rep = x.repeat(s, 1), y.repeat(s)
    trace = poutine.trace(model.guide).get_trace(x_rep, y_rep)
    out = {k: trace.nodes[k]["value"].reshape(s, n, -1) for k in ("z", "a") if k in trace.nodes}
    observed = y_rep >= 0
    if "y_unobserved" in trace.nodes:
        # Outside TraceEnum_ELBO nothing enumerates, so tracing samples the site from its
        # distribution: q(y|x, .) on unlabelled rows, a point mass at the label on the rest.
        latent = trace.nodes["y_unobserved"]["value"]
    elif model.can_classify:
        latent = torch.distributions.Categorical(model.classify(x_rep)).sample()
    else:
        latent = None
    if latent is not None:
        out["y"] = torch.where(observed, y_rep, latent).reshape(s, n)
    if exact_y:
        out["y_exact"] = _exact_labels(model, trace, x_rep, y_rep).reshape(s, n)
    return out


def _exact_labels(
    model: SemiSupervisedModel, guide_trace: Any, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """One draw of ``y ~ p(y|x, z[, a])`` per row, z and a replayed from the guide.

    Only the continuous sites are fixed (the guide's own label draw would pin the
    model's ``y_unobserved``); ``config_enumerate`` marks the label for enumeration, since
    an ``infer=`` flag is ignored on the ``obs_mask`` path, and ``infer_discrete``
    samples it from the exact conditional. Observed rows keep their label.
    """
    # condition, not replay: replay would also copy the guide's infer dicts onto the sites,
    # dropping the enumeration bookkeeping that p(z|y) and p(a|x, z, y) need.
    values = {k: guide_trace.nodes[k]["value"] for k in ("z", "a") if k in guide_trace.nodes}
    replayed = poutine.condition(config_enumerate(model.model, "parallel"), data=values)
    sampler = infer_discrete(replayed, first_available_dim=-1 - MAX_PLATE_NESTING, temperature=1)
    model_trace = poutine.trace(sampler).get_trace(x, y)
    return torch.where(y >= 0, y, model_trace.nodes["y"]["value"].reshape(-1))


def _reconstruct(
    model: SemiSupervisedModel, x: torch.Tensor, draws: dict[str, torch.Tensor]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Decoder means ``(S, N, D)`` and ``log p(x|z, y)`` ``(S, N)`` per draw."""
    if "z" not in draws:
        return None, None
    s, n = draws["z"].shape[:2]
    z = draws["z"].reshape(s * n, -1)
    y = draws["y"].reshape(-1) if "y" in draws else torch.zeros(s * n, dtype=torch.long)
    means, logs = [], []
    for z_part, y_part, x_part in zip(
        z.split(_MAX_PASS_ROWS),
        y.split(_MAX_PASS_ROWS),
        x.repeat(s, 1).split(_MAX_PASS_ROWS),
        strict=True,
    ):
        try:
            p_x = model.decode(z_part, y_part.to(z.device))
        except UserError:  # a model without a decoder (the pi-VAE's ES sibling)
            return None, None
        means.append(p_x.mean)
        logs.append(p_x.log_prob(x_part))
    return torch.cat(means).reshape(s, n, -1), torch.cat(logs).reshape(s, n)


def _iwae(
    model: SemiSupervisedModel, x: torch.Tensor, y: torch.Tensor, samples: int, seed: int
) -> torch.Tensor | None:
    if not samples:
        return None
    from .likelihood import log_likelihood

    return log_likelihood(model, x, y, num_samples=samples, seed=seed)


def _inference_data(
    x: torch.Tensor,
    y: torch.Tensor,
    draws: dict[str, torch.Tensor],
    recon: torch.Tensor | None,
    log_lik: torch.Tensor | None,
    q_y: torch.Tensor | None,
    log_p_x: torch.Tensor | None,
    names: list[str],
) -> Any:
    az = _arviz()

    def chain(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy()[None]

    dims = {"y": ["row"], "y_exact": ["row"], "z": ["row", "z_dim"], "a": ["row", "a_dim"],
            "x": ["row", "pixel"], "q_y": ["row", "class"], "log_p_x": ["row"]}  # fmt: skip
    post = {k: chain(v) for k, v in draws.items()}
    constant = {} if q_y is None else {"q_y": q_y.cpu().numpy()}
    if log_p_x is not None:
        constant["log_p_x"] = log_p_x.cpu().numpy()
    return az.from_dict(
        posterior=post,
        posterior_predictive=None if recon is None else {"x": chain(recon)},
        log_likelihood=None if log_lik is None else {"x": chain(log_lik)},
        observed_data={"x": x.cpu().numpy(), "y": y.cpu().numpy()},
        constant_data=constant or None,
        coords={"row": np.arange(len(x)), "class": names},
        dims={**dims, "y": ["row"]},
        attrs={"class_names": json.dumps(names)},
    )


def _arviz() -> Any:
    try:
        with warnings.catch_warnings():
            # arviz 0.2x announces its refactor on import; not the user's concern here.
            warnings.simplefilter("ignore", FutureWarning)
            import arviz
    except ImportError as e:
        raise UserError("posterior needs arviz: pip install arviz") from e
    return arviz


def kl_activity(
    model: SemiSupervisedModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000
) -> dict[int, torch.Tensor]:
    """Per-unit KL activity of z (Willetts et al. App. C, eq. 36) of the rows of each class.

    ``{class id: (z_dim,) activities}`` by :func:`ppl_ssvae.evaluation.clustering.unit_activity` on
    the rows whose label ``y`` is that class (classes without rows are left out): which
    units a class uses. Needs a diagonal Gaussian ``q(z|.)``, as eq. 36 does.
    """
    from .clustering import unit_activity

    y = torch.as_tensor(y)
    return {
        int(c): unit_activity(model, x[y.cpu() == c], batch_size)
        for c in torch.unique(y[y >= 0]).tolist()
    }


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

    names = _class_names(model, class_names)
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
    scatter_by_class(ax, points, y, _class_names(model, class_names))
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
    return _grid_figure(grid, _class_names(model, class_names), tuple(image_shape))


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
    names = _class_names(model, class_names)
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


# -- one run directory, everything written --------------------------------------------------


def write_inspection(
    run_dir: str | Path | RunDir,
    out_dir: str | Path,
    rows: int = 16,
    num_samples: int = 100,
    embed_rows: int = 1000,
    seed: int = 0,
) -> dict[str, Path | str]:
    """Load a run (its ``best.pt``) and write the pictures and the posterior of ``rows``
    test rows (``posterior.nc``, netCDF) to ``out_dir``. ``run_dir`` is a path or a
    ``RunDir`` (e.g. one that loads unverified checkpoints).

    Returns ``{name: path}`` for each file written and ``{name: reason}`` for each picture
    that does not apply (no image shape, no graphviz, a model that cannot classify...).
    """
    from ..runs import load_run

    loaded = load_run(run_dir)
    run, model, split = loaded.directory, loaded.model, loaded.data
    loaded.load_weights("best")
    model.eval()
    check_posterior_memory(model, min(rows, len(split.x_test)), num_samples)  # before writing
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path | str] = {}
    x_test, y_test = split.x_test, split.y_test
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(x_test), generator=generator)
    few, many = pick[:rows], pick[:embed_rows]
    names = list(split.class_names)[: model.config.num_classes]
    names += [str(c) for c in range(len(names), model.config.num_classes)]
    shape = split.image_shape if split.feature_mask is None else None
    # Half the rows labelled, so the model picture shows both halves of the obs_mask split.
    shown_y = torch.where(torch.arange(min(rows, 4)) % 2 == 0, y_test[few[:4]], -1)
    pictures = {
        "training_curves": lambda: training_figure(run.read_history()),
        "model": lambda: render_model_figure(model, x_test[few[:4]], shown_y),
        "confusion": lambda: confusion_figure(model, x_test, y_test, names),
        "latent_tsne": lambda: latent_figure(model, x_test[many], y_test[many], "tsne", names),
        "samples": lambda: samples_figure(model, 8, _needs_shape(shape), names, seed),
        "analogies": lambda: analogy_figure(model, x_test[few[:8]], _needs_shape(shape), names),
    }
    for name, draw in pictures.items():
        try:
            fig = draw()
        except UserError as e:
            written[name] = f"skipped: {e}"
            continue
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        written[name] = path
    idata = posterior(model, x_test[few], None, num_samples, seed, class_names=names)
    written["posterior"] = out / "posterior.nc"
    idata.to_netcdf(str(written["posterior"]))
    return written


def _needs_shape(shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if shape is None:
        raise UserError("the data has no image shape (or a feature mask hides pixels)")
    return tuple(shape)
