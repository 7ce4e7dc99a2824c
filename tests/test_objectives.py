"""Every objective a model allows against the same objective written by hand in torch.

For each model and objective, the gradient of Pyro's ``loss_and_grads`` must equal, parameter
by parameter, the gradient of a hand-written surrogate computed with torch.distributions from
the same networks and the noise Pyro drew (recorded from the guide's trace): z = mu + sigma *
eps with eps fixed, sampled labels fixed, enumerated labels summed in an explicit loop.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pyro
import pytest
import torch
import torch.distributions as td
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.ops.provenance import detach_provenance
from torch.nn import functional as F

from ppl_ssvae.errors import UserError
from ppl_ssvae.models import MODELS, build
from ppl_ssvae.nn import MIN_SCALE
from ppl_ssvae.objectives import OBJECTIVE_NAMES, allowed_objectives
from tests.models.exact import multi_input_gaussian, multi_input_hidden

pytestmark = pytest.mark.usefixtures("float64")

D, K, Z, A = 10, 3, 3, 3
Y = [0, -1, 2, -1, 1, -1]
PRIOR = (0.5, 0.3, 0.2)
ALPHA, LAM, BETA = 2.5, 0.3, 0.7
LABEL_LATENT = ("m2", "adgm", "gmdgm", "agmdgm", "m2-adversarial")
AUXILIARY = ("adgm", "agmdgm")
CONFIG: dict[str, dict[str, Any]] = {
    "m2": {"alpha": ALPHA, "prior": PRIOR},
    "m2-adversarial": {"alpha": ALPHA, "prior": PRIOR, "adversary_weight": 0.0},
    "adgm": {"alpha": ALPHA, "prior": PRIOR, "a_dim": A},
    "gmdgm": {"alpha": ALPHA, "prior": PRIOR},
    "agmdgm": {"alpha": ALPHA, "prior": PRIOR, "a_dim": A},
    "latent": {"lam": LAM},
    "latent-simplified": {"lam": LAM},
    "pi-vae": {"alpha": ALPHA, "beta": BETA},
    "beta-vae-classifier": {"beta": BETA, "gamma": ALPHA},
    "m1": {},
    "m1-m2": {"alpha": ALPHA, "prior": PRIOR, "z2_dim": Z, "m2_hidden": (8,)},
}
# (objective, num_particles) pairs checked against the hand-written objective.
LABEL_LATENT_CASES = [("trace_enum", 1), ("trace_enum", 2), ("trace", 1), ("trace", 2),
                      ("trace_graph", 1)]  # fmt: skip
REPARAMETERISED_CASES = [("trace_enum", 1), ("trace", 2), ("trace_graph", 1),
                         ("trace_mean_field", 1), ("renyi", 3)]  # fmt: skip
CASES = [(name, *case) for name in LABEL_LATENT for case in LABEL_LATENT_CASES] + [
    (name, *case) for name in ("latent", "latent-simplified", "pi-vae", "beta-vae-classifier", "m1")
    for case in REPARAMETERISED_CASES
] + [("m1-m2", "trace_enum", 1), ("m1-m2", "trace_enum", 2)]  # fmt: skip


def _model(name: str):
    pyro.set_rng_seed(0)
    return build(name, input_dim=D, num_classes=K, z_dim=Z, hidden=(8,), **CONFIG[name])


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.bernoulli(torch.full((len(Y), D), 0.4)), torch.tensor(Y)


def _pyro_run(model, elbo, x, y, seed: int = 2) -> tuple[float, dict, list[dict]]:
    """Pyro's loss and gradients, and per guide call the values and distributions it drew."""
    calls: list[dict] = []

    def recording_guide(x, y):
        # The inner trace sees every site after the ELBO's handlers (enumeration, particle
        # plate, provenance), so its values are exactly the noise the loss used.
        nodes = poutine.trace(model.guide).get_trace(x, y).nodes
        calls.append({n: s for n, s in nodes.items() if s["type"] == "sample"})

    for p in model.parameters():
        p.grad = None
    pyro.set_rng_seed(seed)
    loss = elbo.loss_and_grads(model.model, recording_guide, x, y)
    return loss, {n: p.grad for n, p in model.named_parameters()}, calls


def _noise(calls: list[dict], num_particles: int) -> list[dict[str, torch.Tensor]]:
    """Per particle: eps of every Gaussian site, the value of a sampled label."""
    vectorised = len(calls) == 1 and num_particles > 1
    assert len(calls) == (1 if vectorised else num_particles)
    particles = []
    for p in range(num_particles):
        call = calls[0 if vectorised else p]
        noise = {}
        for name, site in call.items():
            if name not in ("z", "a", "z1", "y_unobserved"):
                continue
            value = detach_provenance(site["value"]).detach()
            if name in ("z", "a", "z1"):
                value = detach_provenance((value - site["fn"].mean) / site["fn"].stddev).detach()
            dim = -2 - site["fn"].event_dim  # the particle plate, left of the data plate
            if vectorised and value.shape[dim] > 1:  # (an enumerated label broadcasts)
                value = value.select(dim, p)
            noise[name] = value
        particles.append(noise)
    return particles


# -- the objectives by hand ------------------------------------------------------------------


def _bernoulli(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return td.Bernoulli(logits=logits).log_prob(x).sum(-1)


def _normal(loc: torch.Tensor, scale: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return td.Normal(loc, scale).log_prob(value).sum(-1)


def _label_latent_terms(model, x, label, noise, eps_z):
    """Per row at ``label`` (B,): L = log p(x, y, z[, a]) - log q(z[, a]|.), log q(.|x[, a])
    (B, K) and log q(a|x) (0 without a), with z (and a) reparameterised on fixed noise."""
    q, c = model.q, model.config
    if model.name in AUXILIARY:
        q_a = multi_input_gaussian(q.q_a, [x])
        a = q_a.loc + q_a.scale * noise["a"]
        log_q_a = q_a.log_prob(a).sum(-1)
        log_q_y = F.log_softmax(q.q_y.logits(multi_input_hidden(q.q_y.trunk, [x, a])), -1)
        q_z = multi_input_gaussian(q.q_z, [x, a], label)
    else:
        log_q_a = torch.zeros(())
        log_q_y = F.log_softmax(q.q_y.net(x), -1)
        h = q.q_z.trunk(x, label)
        q_z = td.Normal(q.q_z.head.loc(h), F.softplus(q.q_z.head.scale(h)) + MIN_SCALE)
    z = q_z.loc + q_z.scale * eps_z
    log_p = torch.log(torch.tensor(c.prior))[label]
    if model.name in ("m2", "adgm", "m2-adversarial"):  # the adversary at weight 0 adds 0
        log_p = log_p + _normal(torch.zeros(()), torch.ones(()), z)
        log_p = log_p + _bernoulli(model.p_x.head.logits(model.p_x.trunk(z, label)), x)
    else:  # p(z|y) linear in onehot(y) (Willetts eq. 30), p(x|z)
        p_z = model.p_z
        log_p = log_p + _normal(p_z.loc(label), torch.exp(0.5 * p_z.log_var(label)), z)
        log_p = log_p + _bernoulli(model.p_x.head.logits(model.p_x.trunk(z)), x)
    if model.name in AUXILIARY:
        log_p = log_p + multi_input_gaussian(model.p_a, [x, z], label).log_prob(a).sum(-1)
    return log_p - q_z.log_prob(z).sum(-1) - log_q_a, log_q_y, log_q_a


def _label_latent(model, objective, x, y, noise):
    """Per row (elbo, surrogate) of one particle: Kingma eq. 9 / Willetts eq. 8, 21-22."""
    labelled = y >= 0
    y0 = y.clamp(min=0)
    if objective == "trace_enum":  # U(x) = sum_y q(y|x) (L(x, y) - log q(y|x)), exactly
        bounds = []
        for k in range(K):
            label = torch.full_like(y, k)
            L, log_q_y, _ = _label_latent_terms(model, x, label, noise, noise["z"][k])
            bounds.append(L)
        L = torch.stack(bounds, -1)
        q_y = log_q_y.exp()
        unlabelled = (q_y * (L - log_q_y)).sum(-1)
        labelled_bound = L.gather(1, y0[:, None]).squeeze(1)
        classification = ALPHA * log_q_y.gather(1, y0[:, None]).squeeze(1)
        elbo = torch.where(labelled, labelled_bound + classification, unlabelled)
        return elbo, elbo
    # trace / trace_graph: y sampled (the point mass gives the label on labelled rows)
    y_s = noise["y_unobserved"]
    assert torch.equal(y_s[labelled], y[labelled])
    L, log_q_y, log_q_a = _label_latent_terms(model, x, y_s, noise, noise["z"])
    log_q_s = log_q_y.gather(1, y_s[:, None]).squeeze(1)
    classification = ALPHA * log_q_y.gather(1, y0[:, None]).squeeze(1)
    elbo = L + torch.where(labelled, classification, -log_q_s)
    # Pyro's score-function term: log q(y|.) times the detached cost it influences, per row.
    # Trace_ELBO counts the whole row; TraceGraph_ELBO only what y reaches (q(a|x) is drawn
    # before y). The classification factor is a guide-only site, counted in neither.
    cost = L - log_q_s + (log_q_a if objective == "trace_graph" else 0.0)
    score = torch.where(labelled, torch.zeros_like(log_q_s), log_q_s * cost.detach())
    return elbo, L + torch.where(labelled, classification, score)


def _latent(model, objective, x, y, noise):
    """Jurasiński sec 4.1: lam * L_our on labelled rows, U_our (Prop. 2) on unlabelled rows."""
    labelled = y >= 0
    q_z = multi_input_gaussian(model.q.q_z, [x])
    z = q_z.loc + q_z.scale * noise["z"]
    if objective == "trace_mean_field":
        latent = -td.kl_divergence(q_z, td.Normal(0.0, 1.0)).sum(-1)
    else:
        latent = _normal(torch.zeros(()), torch.ones(()), z) - q_z.log_prob(z).sum(-1)
    log_p_y = F.log_softmax(model.p_y.net(z), -1)
    if model.name == "latent-simplified":
        labelled_x = unlabelled_x = _bernoulli(model.p_x.head.logits(model.p_x.trunk(z)), x)
    else:
        log_p_x = torch.stack(
            [_bernoulli(model.p_x.head.logits(model.p_x.trunk(z, torch.full_like(y, k))), x)
             for k in range(K)], -1,
        )  # fmt: skip
        labelled_x = log_p_x.gather(1, y.clamp(min=0)[:, None]).squeeze(1)
        unlabelled_x = (log_p_y.exp() * log_p_x).sum(-1)
    log_p_y_obs = log_p_y.gather(1, y.clamp(min=0)[:, None]).squeeze(1)
    rows = torch.where(labelled, LAM * (labelled_x + log_p_y_obs + latent), unlabelled_x + latent)
    return rows, rows


def _pi_vae(model, objective, x, y, noise):
    """Berkhahn et al. eq. 3-5 times B: log p(x|pi ⊕ z) + beta (log p(z) - log q(z|x)) per row,
    plus alpha B / #labelled * log pi_y(x) on labelled rows."""
    enc, dec = model.encoder, model.decoder
    h = enc.trunk.net(x)
    q_z = td.Normal(enc.q_z.loc(h), F.softplus(enc.q_z.scale(h)) + MIN_SCALE)
    z = q_z.loc + q_z.scale * noise["z"]
    log_pi = F.log_softmax(enc.pi(h), -1)
    log_px = _bernoulli(dec.head.logits(dec.trunk(torch.cat([log_pi.exp(), z], -1))), x)
    if objective == "trace_mean_field":
        latent = -td.kl_divergence(q_z, td.Normal(0.0, 1.0)).sum(-1)
    else:
        latent = _normal(torch.zeros(()), torch.ones(()), z) - q_z.log_prob(z).sum(-1)
    labelled = y >= 0
    log_pi_y = log_pi.gather(1, y.clamp(min=0)[:, None]).squeeze(1)
    classification = torch.where(labelled, ALPHA * len(y) / labelled.sum() * log_pi_y, 0.0)
    elbo = log_px + BETA * latent + classification
    return elbo, elbo


def _beta_vae_classifier(model, objective, x, y, noise):
    """Vengalil & Sinha eq. 1 + 4: log p(x|z) + beta (log p(z) - log q(z|x)) per row, plus
    gamma * w_n log p(y|z) on labelled rows (w_n = 1 for plain labels)."""
    q_z = multi_input_gaussian(model.q.q_z, [x])
    z = q_z.loc + q_z.scale * noise["z"]
    if objective == "trace_mean_field":
        latent = -td.kl_divergence(q_z, td.Normal(0.0, 1.0)).sum(-1)
    else:
        latent = _normal(torch.zeros(()), torch.ones(()), z) - q_z.log_prob(z).sum(-1)
    log_px = _bernoulli(model.p_x.head.logits(model.p_x.trunk(z)), x)
    log_p_y = F.log_softmax(model.p_y.net(z), -1).gather(1, y.clamp(min=0)[:, None]).squeeze(1)
    elbo = log_px + BETA * latent + torch.where(y >= 0, ALPHA * log_p_y, 0.0)
    return elbo, elbo


def _m1(model, objective, x, y, noise):
    """Kingma & Welling (M1): log p(x|z) + log p(z) - log q(z|x) per row, the KL analytic
    under trace_mean_field; labels play no part."""
    q_z = multi_input_gaussian(model.q.q_z, [x])
    z = q_z.loc + q_z.scale * noise["z"]
    if objective == "trace_mean_field":
        latent = -td.kl_divergence(q_z, td.Normal(0.0, 1.0)).sum(-1)
    else:
        latent = _normal(torch.zeros(()), torch.ones(()), z) - q_z.log_prob(z).sum(-1)
    elbo = _bernoulli(model.p_x.head.logits(model.p_x.trunk(z)), x) + latent
    return elbo, elbo


def _m1_m2(model, objective, x, y, noise):
    """Kingma sec 3.2, the whole stacked model (outside a training stage): z1 ~ q(z1|x) once
    per row, then M2's eq. 9 on z1 with every class enumerated:
    L(x, k) = log p(k) + log p(z2) + log N(z1; mu(z2, k), I) - log q(z2|z1, k)
              + log p(x|z1) - log q(z1|x)."""
    assert objective == "trace_enum"
    m1, m2 = model.m1, model.m2
    q_z1 = multi_input_gaussian(m1.q.q_z, [x])
    z1 = q_z1.loc + q_z1.scale * noise["z1"]
    outer = _bernoulli(m1.p_x.head.logits(m1.p_x.trunk(z1)), x) - q_z1.log_prob(z1).sum(-1)
    log_q_y = F.log_softmax(m2.q.q_y.net(z1), -1)
    bounds = []
    for k in range(K):
        label = torch.full_like(y, k)
        q_z2 = multi_input_gaussian(m2.q.q_z, [z1], label)
        z2 = q_z2.loc + q_z2.scale * noise["z"][k]
        loc = m2.p_x.head.loc(multi_input_hidden(m2.p_x.trunk, [z2], label))
        log_p = torch.log(torch.tensor(PRIOR))[label] + _normal(torch.zeros(()), torch.ones(()), z2)
        bounds.append(log_p + _normal(loc, torch.ones(()), z1) - q_z2.log_prob(z2).sum(-1))
    L = torch.stack(bounds, -1) + outer[:, None]
    y0 = y.clamp(min=0)[:, None]
    labelled = L.gather(1, y0).squeeze(1) + ALPHA * log_q_y.gather(1, y0).squeeze(1)
    unlabelled = (log_q_y.exp() * (L - log_q_y)).sum(-1)
    elbo = torch.where(y >= 0, labelled, unlabelled)
    return elbo, elbo


def _hand_loss(model, objective, x, y, particles, renyi_alpha=0.0):
    """(loss, surrogate loss) of ``objective`` over the recorded particles."""
    per_model = {name: _label_latent for name in LABEL_LATENT}
    per_model.update(
        {
            "latent": _latent,
            "latent-simplified": _latent,
            "pi-vae": _pi_vae,
            "beta-vae-classifier": _beta_vae_classifier,
            "m1": _m1,
            "m1-m2": _m1_m2,
        }
    )
    pairs = [per_model[model.name](model, objective, x, y, noise) for noise in particles]
    elbos = torch.stack([e for e, _ in pairs])  # (particles, rows)
    surrogates = torch.stack([s for _, s in pairs])
    if objective == "renyi":  # Li & Turner's bound per row (every site is in the data plate)
        log_mean = torch.logsumexp((1 - renyi_alpha) * surrogates, 0) - math.log(len(particles))
        bound = (log_mean / (1 - renyi_alpha)).sum()
        return -bound, -bound
    return -elbos.sum(-1).mean(), -surrogates.sum(-1).mean()


# -- the tests -------------------------------------------------------------------------------


def _check_against_hand(name, objective, num_particles, params=None):
    model = _model(name)
    x, y = _batch()
    elbo = model.make_elbo(objective=objective, num_particles=num_particles)
    loss, grads, calls = _pyro_run(model, elbo, x, y)
    hand_loss, surrogate = _hand_loss(model, objective, x, y, _noise(calls, num_particles))
    assert loss == pytest.approx(hand_loss.item(), rel=1e-10)
    # An adversary at weight 0 (m2-adversarial's case here) is not in M2's objective.
    names = [n for n, _ in model.named_parameters()
             if (params is None or n.startswith(params)) and not n.startswith("adversary.")]  # fmt: skip
    hand = torch.autograd.grad(surrogate, [dict(model.named_parameters())[n] for n in names])
    assert names
    for n, expected in zip(names, hand, strict=True):
        assert grads[n] is not None, f"{name}/{objective}: no gradient reaches {n}"
        assert expected.abs().sum() > 0, f"{n}: the hand-written gradient is 0"
        assert torch.allclose(grads[n], expected, rtol=1e-7, atol=1e-12 * expected.abs().max())


@pytest.mark.parametrize(("name", "objective", "num_particles"), CASES)
def test_gradient_equals_hand_written_objective(name, objective, num_particles):
    _check_against_hand(name, objective, num_particles)


@pytest.mark.parametrize("name", [*LABEL_LATENT, "pi-vae"])
def test_trace_graph_trains_the_decoder(name):
    """TraceGraph_ELBO wraps every value downstream of a non-reparameterised site in a
    ProvenanceTensor; the Bernoulli decoder's log-density must still carry its gradient."""
    decoder = "decoder." if name == "pi-vae" else "p_x."
    _check_against_hand(name, "trace_graph", 1, params=decoder)


def test_every_model_is_covered():
    assert sorted({case[0] for case in CASES}) == sorted(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_allowed_objectives_and_defaults(name):
    model = _model(name)
    label_latent = ("trace_enum", "trace", "trace_graph")
    enumerated = (*LABEL_LATENT, "m1-m2")
    assert allowed_objectives(model) == (label_latent if name in enumerated else OBJECTIVE_NAMES)
    default = (
        TraceMeanField_ELBO if name in ("pi-vae", "beta-vae-classifier", "m1") else TraceEnum_ELBO
    )
    assert type(model.make_elbo()) is default
    assert type(model.make_elbo(objective=None)) is default
    assert model.make_elbo().num_particles == 1


@pytest.mark.parametrize("name", sorted(MODELS))
def test_particles_are_vectorised_where_the_model_takes_a_particle_dim(name):
    elbo = _model(name).make_elbo(objective="trace", num_particles=3)
    vectorised = name in ("m2", "m2-adversarial", "gmdgm", "latent", "latent-simplified",
                          "beta-vae-classifier", "m1")  # fmt: skip
    assert elbo.num_particles == 3 and elbo.vectorize_particles is vectorised
    # Pyro puts the particle plate left of the data plate.
    assert elbo.max_plate_nesting == (2 if vectorised else 1)


@pytest.mark.parametrize("name", LABEL_LATENT)
@pytest.mark.parametrize("objective", ["trace_mean_field", "renyi"])
def test_label_latent_models_refuse_objectives_that_cannot_train_a_discrete_label(name, objective):
    with pytest.raises(UserError, match=f"'{objective}' cannot train {name}: .*; use one of "
                       "trace_enum, trace, trace_graph$") as error:  # fmt: skip
        _model(name).make_elbo(objective=objective)
    assert "\n" not in str(error.value)


def test_unknown_objective_and_bad_particles_or_arguments_are_user_errors():
    model = _model("m2")
    with pytest.raises(UserError, match="unknown objective 'elbo' for m2; choose one of"):
        model.make_elbo(objective="elbo")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UserError, match="num_particles must be a whole number >= 1"):
            model.make_elbo(num_particles=bad)
    with pytest.raises(UserError, match="'trace' does not take these arguments"):
        model.make_elbo(objective="trace", alpha=0.5)


def test_sampled_label_objectives_do_not_warn_about_enumeration():
    model = _model("m2")
    x, y = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for objective in ("trace", "trace_graph"):
            model.make_elbo(objective=objective).loss(model.model, model.guide, x, y)


def test_renyi_alpha_reaches_the_bound():
    """``make_elbo(objective="renyi", alpha=a)`` is Li & Turner's bound of order a."""
    model = _model("latent-simplified")
    x, y = _batch()
    elbo = model.make_elbo(objective="renyi", num_particles=3, alpha=0.5)
    loss, grads, calls = _pyro_run(model, elbo, x, y)
    hand_loss, _ = _hand_loss(model, "renyi", x, y, _noise(calls, 3), renyi_alpha=0.5)
    assert loss == pytest.approx(hand_loss.item(), rel=1e-10)
    hand = torch.autograd.grad(hand_loss, list(model.parameters()))
    for got, expected in zip(grads.values(), hand, strict=True):
        assert torch.allclose(got, expected, rtol=1e-7, atol=1e-12 * expected.abs().max())
