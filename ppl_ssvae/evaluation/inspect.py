"""Looking at trained models: the posterior as ArviZ ``InferenceData``, and figures.

* :func:`posterior` draws ``y``, ``z`` (and ``a``) per row from the guide, with
  reconstructions and per-draw log-likelihoods, as one ``arviz.InferenceData``
  (:mod:`.posterior`).
* :func:`kl_activity` is the per-unit KL activity of z per class (Willetts et al. App. C).
* Picture functions (:mod:`.figures`) return a matplotlib ``Figure`` (``render_model_figure``,
  ``confusion_figure``, ``latent_figure``, ``samples_figure``, ``analogy_figure``,
  ``roc_figure``, ``training_figure``); :func:`write_inspection` writes them all for a run
  directory.

matplotlib, arviz and scikit-learn are imported inside the functions that need them: they
are optional (``plots``) dependencies and the package must import without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import UserError
from .activity import kl_activity
from .figures import (
    analogy_figure,
    confusion_figure,
    embed_2d,
    generation_grid,
    latent_figure,
    render_model_figure,
    roc_figure,
    samples_figure,
    scatter_by_class,
    training_figure,
)
from .posterior import check_posterior_memory, class_names_of, posterior

__all__ = [
    "analogy_figure", "check_posterior_memory", "class_names_of", "confusion_figure",
    "embed_2d", "generation_grid", "kl_activity", "latent_figure", "posterior",
    "render_model_figure", "roc_figure", "samples_figure", "scatter_by_class",
    "training_figure", "write_inspection",
]  # fmt: skip

if TYPE_CHECKING:
    from ..runs.directory import RunDir


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
