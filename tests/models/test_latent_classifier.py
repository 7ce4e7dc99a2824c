"""The latent classifier's TraceEnum_ELBO loss against Jurasiński's bounds (sec 4.1, Prop.
1-2) by hand: lambda * L_our on labelled rows, U_our on unlabelled rows."""

import pytest
import torch
import torch.distributions as td
from pyro import poutine
from torch.nn import functional as F

from ppl_ssvae.models import MODELS, build
from ppl_ssvae.nn import MIN_SCALE
from tests.models.exact import loss_and_sites

K, D, Z = 3, 12, 4
LAM = 0.3
BATCHES = [[2, -1, 0, -1, -1, 1], [-1] * 6, [0, 1, 2, 2, 1, 0]]


pytestmark = pytest.mark.usefixtures("float64")


def _latent(name="latent", lam=LAM, **kw):
    return build(name, input_dim=D, num_classes=K, z_dim=Z, hidden=(8,), lam=lam, **kw)


def _loss_and_z(model, x, y):
    return loss_and_sites(model, x, y, "z")


def _terms(model, x, z):
    """log q(z|x), log p(z), log p(y|z) (B, K) and log p(x|k, z) (B, K) or log p(x|z) (B,)."""
    trunk, head = model.q.q_z.trunk, model.q.q_z.head
    h = trunk.rest(trunk.act(F.linear(x, trunk.layers[0].weight, trunk.layers[0].bias)))
    q_z = td.Normal(head.loc(h), F.softplus(head.scale(h)) + MIN_SCALE)
    log_q_z = q_z.log_prob(z).sum(-1)
    log_p_z = td.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_p_y = F.log_softmax(model.p_y.net(z), -1)
    if model.name == "latent-simplified":
        logits = model.p_x.head.logits(model.p_x.trunk(z))
        log_p_x = td.Bernoulli(logits=logits).log_prob(x).sum(-1)
    else:
        per_label = []
        for k in range(K):
            logits = model.p_x.head.logits(model.p_x.trunk(z, torch.full((len(x),), k)))
            per_label.append(td.Bernoulli(logits=logits).log_prob(x).sum(-1))
        log_p_x = torch.stack(per_label, -1)
    return log_q_z, log_p_z, log_p_y, log_p_x


def _expected_loss(model, x, y, z, lam, bound="thesis", classifier=True):
    """-(lam * sum_labelled L_our + sum_unlabelled U_our) at the drawn z."""
    log_q_z, log_p_z, log_p_y, log_p_x = _terms(model, x, z)
    y0 = y.clamp(min=0)[:, None]
    log_p_y_obs = log_p_y.gather(1, y0).squeeze(1)
    if log_p_x.dim() == 1:  # simplified: p(x, y|z) = p(x|z) p(y|z)
        labelled_x = unlabelled_x = log_p_x
    else:
        labelled_x = log_p_x.gather(1, y0).squeeze(1)
        if bound == "thesis":  # Prop. 2: E_p(y|z)[log p(x|y, z)]
            unlabelled_x = (log_p_y.exp() * log_p_x).sum(-1)
        else:  # log p(x|z) = log sum_y p(y|z) p(x|y, z)
            unlabelled_x = torch.logsumexp(log_p_y + log_p_x, -1)
    L_our = labelled_x + classifier * log_p_y_obs + log_p_z - log_q_z
    U_our = unlabelled_x + log_p_z - log_q_z
    return -torch.where(y >= 0, lam * L_our, U_our).sum()


CASES = [("latent", "thesis"), ("latent", "marginal"), ("latent-simplified", "thesis")]


@pytest.mark.parametrize("y", BATCHES)
@pytest.mark.parametrize(("name", "bound"), CASES)
def test_loss_equals_hand_written_bound(name, bound, y):
    torch.manual_seed(0)
    model = _latent(name, unlabelled_bound=bound)
    x = torch.bernoulli(torch.rand(6, D))
    y = torch.tensor(y)
    with torch.no_grad():
        loss, z = _loss_and_z(model, x, y)
        assert z.shape == (6, Z)
        expected = _expected_loss(model, x, y, z, LAM, bound).item()
    assert loss == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", ["latent", "latent-simplified"])
def test_dropping_lambda_or_the_classifier_term_would_fail(name):
    torch.manual_seed(0)
    model = _latent(name)
    x = torch.bernoulli(torch.rand(6, D))
    y = torch.tensor(BATCHES[0])
    with torch.no_grad():
        loss, z = _loss_and_z(model, x, y)
        variants = {
            "lambda": _expected_loss(model, x, y, z, lam=1.0),
            "log p(y|z)": _expected_loss(model, x, y, z, LAM, classifier=False),
        }
    for term, value in variants.items():
        assert abs(loss - value.item()) > 1e-2 * abs(loss), term


def test_thesis_bound_is_looser_than_marginal_and_distinguishable():
    """U_our <= the marginal bound by Jensen, and the test above tells them apart."""
    torch.manual_seed(0)
    model = _latent()
    with torch.no_grad():  # a spread-out p(y|z) and a p(x|y, z) that depends on y strongly
        model.p_y.net[-1].weight.mul_(0.1)
        model.p_x.trunk.y_layer.weight.mul_(50)
    x = torch.bernoulli(torch.rand(6, D))
    y = torch.full((6,), -1)
    with torch.no_grad():
        loss, z = _loss_and_z(model, x, y)
        thesis = _expected_loss(model, x, y, z, LAM, "thesis").item()
        marginal = _expected_loss(model, x, y, z, LAM, "marginal").item()
    assert loss == pytest.approx(thesis, rel=1e-4)
    assert marginal < thesis  # losses: the marginal bound is the higher ELBO
    assert abs(thesis - marginal) > 1e-3 * abs(thesis)


def test_lambda_scales_the_whole_labelled_bound():
    """Labelled-only batch: the loss is exactly lambda times the lambda = 1 loss."""
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(6, D))
    y = torch.tensor(BATCHES[2])
    model, weighted = _latent(lam=1.0), _latent(lam=LAM)
    weighted.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    base = model.make_elbo().loss(model.model, model.guide, x, y)
    torch.manual_seed(1)
    scaled = weighted.make_elbo().loss(weighted.model, weighted.guide, x, y)
    assert scaled == pytest.approx(LAM * base, rel=1e-9)


def test_guide_is_only_q_z_and_registry_has_both_variants():
    model = _latent()
    trace = poutine.trace(model.guide).get_trace(torch.rand(4, D), torch.tensor([0, -1, 1, -1]))
    assert trace.stochastic_nodes == ["data", "z"]  # the plate and z
    assert {"latent", "latent-simplified"} <= set(MODELS)
    assert MODELS["latent"].config_class is MODELS["latent-simplified"].config_class


def test_prior_sets_the_initial_classifier_bias():
    prior = (0.6, 0.3, 0.1)
    model = _latent(prior=prior)
    assert torch.allclose(model.p_y.net[-1].bias, torch.tensor(prior).log())


@pytest.mark.parametrize("bad", [{"unlabelled_bound": "tight"}, {"lam": 0.0}])
def test_bad_config_is_a_user_error(bad):
    from ppl_ssvae.errors import UserError

    with pytest.raises(UserError):
        _latent(**{"lam": LAM, **bad})
