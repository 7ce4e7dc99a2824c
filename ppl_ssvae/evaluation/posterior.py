"""The posterior of a trained model as ArviZ ``InferenceData`` (:func:`posterior`: draws of
``y``, ``z`` (and ``a``) per row from the guide, with reconstructions and per-draw
log-likelihoods), and the per-unit KL activity of z per class (:func:`kl_activity`,
Willetts et al. App. C). arviz is imported on first use: it is an optional dependency."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import config_enumerate, infer_discrete

from ..errors import UserError, is_int
from ..guides.sampling import seeded_rng
from ..memory import BYTES, require_memory
from ..models.base import SemiSupervisedModel
from ..nn import eval_mode
from ..plates import MAX_PLATE_NESTING

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
    names = class_names_of(model, class_names)
    with eval_mode(model):
        with seeded_rng(seed, x.device), torch.no_grad():
            pyro.set_rng_seed(seed)
            draws = _draws(model, x, y, num_samples, exact_y)
            recon, log_lik = _reconstruct(model, x, draws)
            q_y = model.classify(x) if model.can_classify else None
        log_p_x = _iwae(model, x, y, iwae_samples, seed)
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


def class_names_of(model: SemiSupervisedModel, class_names: Sequence[str] | None) -> list[str]:
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
