"""The Pyro objectives a model can be trained with, by name.

``model.make_elbo(objective=NAME, num_particles=N)`` returns one of :data:`OBJECTIVES` set
up for that model, or raises a one-line :class:`~ppl_ssvae.errors.UserError` that names the
objectives the model can use. ``objective=None`` is the model's own default. The CLI offers
:data:`OBJECTIVE_NAMES`; :func:`allowed_objectives` lists those one model accepts.

Which combinations are allowed, and why:

=================  ================================  ====================================
objective          label-latent models               no discrete guide latent
                   (m2, adgm, gmdgm, agmdgm)         (latent, latent-simplified, pi-vae)
=================  ================================  ====================================
trace_enum         default: y summed out exactly     yes; nothing to enumerate, so this is
                                                     trace (the latent models' default)
trace              yes: y sampled from q(y|x),       yes
                   score-function gradient
trace_graph        yes: as trace, with only the      yes; the same gradient as trace
                   costs downstream of y in the
                   score-function term
trace_mean_field   refused: y is discrete            yes: analytic KL for z where torch
                                                     has it (the pi-vae's default, eq. 4)
renyi              refused: see below                yes: the Rényi bound of each row
=================  ================================  ====================================

* Label-latent models mark the guide's label site ``y_unobserved`` for parallel
  enumeration. Under ``trace`` / ``trace_graph`` that mark is removed, so the label is
  sampled (a point mass at the label on labelled rows) and ``q(y|x)`` learns through the
  score-function term ``log q(y|x) * [L(x, y) - log q(y|x)]`` Pyro adds; the
  classification term ``alpha log q(y|x)`` is differentiated directly. These are
  unbiased estimators of the same objective as ``trace_enum``, with a higher variance.
* ``trace_mean_field`` needs every guide latent reparameterised (Pyro raises deep in the
  step otherwise), and the label is discrete.
* ``renyi`` does not enumerate, and for a sampled discrete latent Pyro's ``RenyiELBO``
  leaves out the score-function term (with the default ``alpha=0`` the classifier gets no
  gradient at all from unlabelled rows): a biased gradient, so it is refused.
* ``renyi`` (``make_elbo(..., alpha=a)``, default 0: the IWAE bound) needs
  ``num_particles > 1`` to differ from the ELBO. Every site of these models is in the data
  plate, so Pyro weighs the particles row by row: ``log mean_i exp((1 - alpha) w_i)`` per
  row, with ``w_i`` that row's log-weight (for the latent classifier, lambda times it on
  labelled rows, which makes a labelled row's bound a tempered one).
* The pi-VAE's loss (Berkhahn et al. eq. 5) is the batch ELBO plus a weighted
  cross-entropy factor: any objective above optimises it, ``trace_mean_field`` with the
  analytic KL of eq. 4, the others with a one-sample estimate of it.

``num_particles > 1`` is vectorised (``vectorize_particles=True``: Pyro wraps model and
guide in a particle plate left of the data plate and raises ``max_plate_nesting`` by one)
where the model's code takes that extra leading dimension. adgm and agmdgm (the guide's
point mass at the observed label) and pi-vae (the gather of log pi at the label, and the
cnn / rnn nets' reshapes) do not yet, so they draw their particles one after another: the
same estimator, ``num_particles`` times the passes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from pyro import poutine
from pyro.infer import (
    ELBO,
    RenyiELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)

from .errors import UserError
from .plates import MAX_PLATE_NESTING

OBJECTIVES: dict[str, type[ELBO]] = {
    "trace_enum": TraceEnum_ELBO,
    "trace": Trace_ELBO,
    "trace_graph": TraceGraph_ELBO,
    "trace_mean_field": TraceMeanField_ELBO,
    "renyi": RenyiELBO,
}
OBJECTIVE_NAMES: tuple[str, ...] = tuple(OBJECTIVES)


@dataclasses.dataclass(frozen=True)
class ObjectiveRules:
    """Which objectives a family of models can be trained with.

    Attributes:
        refused: objective name -> why it cannot train these models (one clause).
        enumerates: the guide marks a discrete site for parallel enumeration.
    """

    refused: Mapping[str, str]
    enumerates: bool

    def allowed(self) -> tuple[str, ...]:
        return tuple(name for name in OBJECTIVES if name not in self.refused)


LABEL_LATENT = ObjectiveRules(
    refused={
        "trace_mean_field": "TraceMeanField_ELBO needs every guide latent reparameterised "
        "and the label y is discrete",
        "renyi": "Pyro's RenyiELBO cannot enumerate y and leaves the score-function term of "
        "a sampled y out of its gradient, so q(y|x) would get a biased gradient",
    },
    enumerates=True,
)
REPARAMETERISED = ObjectiveRules(refused={}, enumerates=False)


def _sample_instead(msg: dict[str, Any]) -> dict[str, Any]:
    return {"enumerate": None} if msg["infer"].get("enumerate") else {}


class _SampledLabels:
    """Runs the guide with its enumeration marks removed, so a non-enumerating objective
    samples the label site: it would anyway, but Pyro's validation would warn on every
    step that enumeration needs TraceEnum_ELBO, which is wrong advice here."""

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Any:
        return super()._get_trace(model, poutine.infer_config(guide, _sample_instead), args, kwargs)


class SampledTrace_ELBO(_SampledLabels, Trace_ELBO):
    """``Trace_ELBO`` on a guide whose enumerated sites are sampled instead."""


class SampledTraceGraph_ELBO(_SampledLabels, TraceGraph_ELBO):
    """``TraceGraph_ELBO`` on a guide whose enumerated sites are sampled instead."""


_SAMPLED = {"trace": SampledTrace_ELBO, "trace_graph": SampledTraceGraph_ELBO}


def build_elbo(
    model_name: str,
    rules: ObjectiveRules,
    objective: str | None,
    num_particles: int,
    *,
    default: str,
    vectorize: bool = True,
    **kwargs: Any,
) -> ELBO:
    """The objective ``objective`` (``None``: ``default``) for a model under ``rules``.

    Args:
        model_name: the model's registry name, for error messages.
        rules: what the model's family allows.
        objective: a name in :data:`OBJECTIVES`, or None for ``default``.
        num_particles: samples per step, >= 1.
        default: the model's own objective.
        vectorize: the model takes a leading particle dimension, so particles run in one
            vectorised pass; otherwise one after another.
        kwargs: further arguments of the ELBO class (e.g. ``alpha`` of ``renyi``).
    """
    name = default if objective is None else objective
    allowed = rules.allowed()
    if name not in OBJECTIVES:
        raise UserError(
            f"unknown objective {name!r} for {model_name}; choose one of {', '.join(allowed)}"
        )
    if name in rules.refused:
        raise UserError(
            f"objective {name!r} cannot train {model_name}: {rules.refused[name]}; "
            f"use one of {', '.join(allowed)}"
        )
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise UserError(f"num_particles must be a whole number >= 1; got {num_particles!r}")
    kwargs.setdefault("max_plate_nesting", MAX_PLATE_NESTING)
    kwargs.setdefault("vectorize_particles", vectorize and num_particles > 1)
    if name == "trace_enum" and not rules.enumerates:
        # Nothing is enumerated; the class is kept so one trainer serves every model.
        kwargs.setdefault("strict_enumeration_warning", False)
    cls = _SAMPLED.get(name, OBJECTIVES[name]) if rules.enumerates else OBJECTIVES[name]
    try:
        return cls(num_particles=num_particles, **kwargs)
    except TypeError as error:
        raise UserError(f"objective {name!r} does not take these arguments: {error}") from None


def allowed_objectives(model: Any) -> tuple[str, ...]:
    """The names of :data:`OBJECTIVES` that ``model.make_elbo`` accepts."""
    names = []
    for name in OBJECTIVE_NAMES:
        try:
            model.make_elbo(objective=name)
        except UserError:
            continue
        names.append(name)
    return tuple(names)
