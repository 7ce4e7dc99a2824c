"""Guide families (ppl_ssvae.guides.registry): each flow's log-density is a proper density,
sampling and scoring agree, the ELBO scores cached draws, and a flow beats the diagonal
Gaussian on a posterior that is not Gaussian."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch.autograd.functional import jacobian

from ppl_ssvae.guides import GUIDES, build_latent_guide
from ppl_ssvae.guides.zuko_flows import ZukoDistribution
from ppl_ssvae.models import build

CONTEXT = torch.tensor([[0.3, -1.2, 0.7]])  # one row: a fixed context for the 2-D toy


def _toy(name: str, perturbed: bool = True) -> tuple[torch.nn.Module, dist.Distribution]:
    """A 2-D guide of family ``name`` on one fixed context. Flows start as the identity, so
    ``perturbed`` moves the weights of the transforms away from there."""
    torch.manual_seed(0)
    q = build_latent_guide(name, out_dim=2, inputs={"x": 3}, hidden=(8,))
    if perturbed:
        with torch.no_grad():
            for key, p in q.head.named_parameters():
                if ".base." not in f".{key}":  # the transforms, not the Gaussian base
                    p.add_(0.1 * torch.randn_like(p))
    return q, q(x=CONTEXT)


def _is_flow(name: str) -> bool:
    _, d = _toy(name)
    return isinstance(d, (ZukoDistribution, dist.TransformedDistribution))


FLOWS = [name for name in GUIDES if _is_flow(name)]
# Planar and radial steps have no closed-form inverse: they score their own draws only.
FORWARD_ONLY = {"planar", "radial"}


def _sampling_map(d: dist.Distribution):
    """The map u -> z from the guide's base to its space (how it samples), and the base."""
    if isinstance(d, ZukoDistribution):
        return d.dist.transform.inv, d.dist.base
    return dist.transforms.ComposeTransform(d.transforms), d.base_dist


def test_every_non_gaussian_family_is_a_flow():
    assert set(GUIDES) - set(FLOWS) == {"gaussian", "full-gaussian", "lowrank-gaussian"}
    assert {"maf", "nsf", "realnvp", "pyro-iaf", "pyro-spline", "planar", "radial"} <= set(FLOWS)


@pytest.mark.parametrize("name", FLOWS)
def test_log_density_is_the_change_of_variables(name):
    """log q(z) = log p_base(u) - log|det dz/du| at z = g(u), the Jacobian from autograd."""
    _, d = _toy(name)
    g, base = _sampling_map(d)
    torch.manual_seed(1)
    for u in base.sample((5,)):
        with torch.no_grad():
            z = g(u)
            got = d.log_prob(z)  # forward-only steps find u in their cache
        assert (z - u).abs().max() > 1e-2  # the perturbed flow is not the identity
        jac = jacobian(lambda v: g(v[None])[0], u[0])
        expected = base.log_prob(u) - torch.linalg.slogdet(jac).logabsdet
        assert torch.allclose(got, expected.detach(), atol=1e-4), (got, expected)


def _inverse_by_newton(g, z: torch.Tensor, steps: int = 60, h: float = 1e-3) -> torch.Tensor:
    """u with g(u) = z, for a 2-D map that only runs forward (finite-difference Jacobian)."""
    u = z.clone()
    eye = torch.eye(2)
    for _ in range(steps):
        r = g(u) - z
        jac = torch.stack([(g(u + h * e) - g(u - h * e)) / (2 * h) for e in eye], -1)
        u = u - torch.linalg.solve(jac, r[..., None])[..., 0]
    assert (g(u) - z).abs().max() < 1e-3  # converged: every grid point has a preimage
    return u


@pytest.mark.parametrize("name", FLOWS)
def test_density_integrates_to_one(name):
    _, d = _toy(name)
    g, base = _sampling_map(d)
    with torch.no_grad():
        draws = d.rsample((4000,)).reshape(-1, 2)
        # A box that holds the mass: well beyond the draws in every direction.
        low, high = draws.min(0).values - 2.0, draws.max(0).values + 2.0
        n = 200
        grid = [torch.linspace(lo, hi, n) for lo, hi in zip(low, high, strict=True)]
        points = torch.stack(torch.meshgrid(*grid, indexing="ij"), -1).reshape(-1, 1, 2)
        cell = math.prod(((hi - lo) / (n - 1)).item() for lo, hi in zip(low, high, strict=True))
        if name in FORWARD_ONLY:
            points = g(_inverse_by_newton(g, points))  # the grid, as the flow's own draws
        mass = d.log_prob(points).exp().sum().item() * cell
    assert mass == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize("name", FLOWS)
def test_a_draw_scores_the_same_cached_and_fresh(name):
    _, d = _toy(name)
    torch.manual_seed(2)
    x = d.rsample((7,))
    assert x.shape == (7, 1, 2)
    cached = d.log_prob(x)
    if name in FORWARD_ONLY:  # no inverse: a point it did not draw cannot be scored
        with pytest.raises(KeyError):
            d.log_prob(x.detach().clone())
        return
    fresh = d.log_prob(x.detach().clone())  # another tensor: no cache hit
    assert torch.allclose(cached, fresh, atol=1e-4)
    if isinstance(d, ZukoDistribution):
        assert x in d.cache  # sampled with its log-density, as Pyro's sample statement does


def test_the_elbo_scores_zuko_draws_from_the_cache(monkeypatch):
    """Training never pays the D-pass inverse of an autoregressive zuko flow: the guide's
    z is scored by the log-density cached at sampling."""
    from zuko.distributions import NormalizingFlow

    calls = []
    original = NormalizingFlow.log_prob
    monkeypatch.setattr(
        NormalizingFlow, "log_prob", lambda self, x: calls.append(1) or original(self, x)
    )
    pyro.set_rng_seed(0)
    model = build("m2", input_dim=10, num_classes=3, z_dim=3, hidden=(8,), guide="maf")
    x = torch.bernoulli(torch.full((6, 10), 0.4))
    loss = model.make_elbo().loss(model.model, model.guide, x, torch.tensor([0, -1, 2, -1, 1, -1]))
    assert math.isfinite(loss) and calls == []
    model.q.q_z(x=x, y=torch.zeros(6, dtype=torch.long)).log_prob(torch.zeros(6, 3))
    assert calls == [1]  # the counter works


# -- a non-Gaussian posterior: a flow guide reaches a higher ELBO --------------------------------
# z ~ N(0, I_2), x ~ N(z_2 - z_1^2, 0.2^2): given x, z lies near the parabola z_2 = x + z_1^2.


def _banana_model(x: torch.Tensor) -> None:
    with pyro.plate("rows", len(x)):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z[..., 1] - z[..., 0] ** 2, 0.2), obs=x[:, 0])


def _fit_elbo(name: str, x: torch.Tensor, steps: int = 300) -> float:
    pyro.clear_param_store()
    torch.manual_seed(0)
    q = build_latent_guide(name, 2, {"x": 1}, (16,), "tanh")

    def guide(x: torch.Tensor) -> None:
        pyro.module("q", q)
        with pyro.plate("rows", len(x)):
            pyro.sample("z", q(x=x))

    pyro.set_rng_seed(0)
    svi = pyro.infer.SVI(_banana_model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(steps):
        svi.step(x)
    pyro.set_rng_seed(1)
    with torch.no_grad():
        elbo = Trace_ELBO(num_particles=200, vectorize_particles=True)
        return -elbo.loss(_banana_model, guide, x) / len(x)


@pytest.mark.parametrize("flow", ["maf", "pyro-iaf"])
def test_a_flow_guide_beats_the_diagonal_gaussian_on_a_banana_posterior(flow):
    torch.manual_seed(3)
    z = torch.randn(64, 2)
    x = (z[:, 1] - z[:, 0] ** 2 + 0.2 * torch.randn(64))[:, None]
    gaussian, flowed = _fit_elbo("gaussian", x), _fit_elbo(flow, x)
    assert flowed > gaussian + 0.1, (flowed, gaussian)


def test_guide_sites_keep_their_names_under_a_flow():
    pyro.set_rng_seed(0)
    model = build("adgm", input_dim=10, num_classes=3, z_dim=3, a_dim=2, hidden=(8,), guide="nsf")
    x, y = torch.bernoulli(torch.full((4, 10), 0.4)), torch.tensor([0, -1, 2, -1])
    trace = poutine.trace(model.guide).get_trace(x, y)
    sites = {n for n, s in trace.nodes.items() if s["type"] == "sample"}
    assert {"a", "z", "y_unobserved"} <= sites
    assert isinstance(trace.nodes["z"]["fn"], ZukoDistribution)


def test_unit_activity_refuses_a_non_gaussian_guide_in_one_line():
    from ppl_ssvae.errors import UserError
    from ppl_ssvae.evaluation.clustering import unit_activity

    pyro.set_rng_seed(0)
    model = build("m2", input_dim=6, num_classes=3, z_dim=4, hidden=(8,), guide="maf")
    with pytest.raises(UserError, match="needs a diagonal Gaussian q\\(z\\|.\\).*guide is 'maf'"):
        unit_activity(model, torch.rand(3, 6))
