"""The beta-VAE classifier's loss against Vengalil & Sinha eq. 1 and 4 written by hand:
sum_n [BCE(x_n) + beta KLD(q(z|x_n), N(0, I))] - gamma sum_n w_n log yhat_n[y_n]."""

import pytest
import torch
import torch.distributions as td
from torch.nn import functional as F

from ppl_ssvae.errors import UserError
from ppl_ssvae.models import build
from ppl_ssvae.nn import MIN_SCALE

D, K, Z = 12, 3, 4
BETA, GAMMA = 0.7, 2.5

pytestmark = pytest.mark.usefixtures("float64")


def _model(**kw):
    return build("beta-vae-classifier", input_dim=D, num_classes=K, z_dim=Z, hidden=(8,),
                 beta=BETA, gamma=GAMMA, **kw)  # fmt: skip


def _pyro_loss_and_z(model, x, y):
    """The model's differentiable ELBO loss and the z its guide drew for it."""
    from pyro import poutine

    seen = {}

    def guide(x, y):
        seen["z"] = poutine.trace(model.guide).get_trace(x, y).nodes["z"]["value"]

    return model.make_elbo().differentiable_loss(model.model, guide, x, y), seen["z"]


def _hand_loss(model, x, labels, weights, z_drawn):
    """Eq. 1 + eq. 4 in plain torch at the same noise eps = (z - mu) / sigma."""
    trunk, head = model.q.q_z.trunk, model.q.q_z.head
    h = trunk(x)
    mu, sigma = head.loc(h), F.softplus(head.scale(h)) + MIN_SCALE
    z = mu + sigma * ((z_drawn - mu) / sigma).detach()
    logits = model.p_x.head.logits(model.p_x.trunk(z))
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    kld = td.kl_divergence(td.Normal(mu, sigma), td.Normal(0.0, 1.0)).sum(-1)
    ce = -F.log_softmax(model.p_y.net(z), -1).gather(1, labels[:, None]).squeeze(1)
    return (bce + BETA * kld).sum() + GAMMA * (weights * ce).sum()


def _batch():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(6, D))
    y = torch.tensor([[2, 0.5], [-1, 0.0], [0, 0.0], [1, 1.0], [2, 0.25], [0, 0.9]])
    return x, y


def test_weighted_loss_and_gradients_equal_eq_4():
    model = _model()
    x, y = _batch()
    loss, z = _pyro_loss_and_z(model, x, y)
    labels = y[:, 0].long().clamp(min=0)
    weights = torch.where(y[:, 0] >= 0, y[:, 1], 0.0)
    expected = _hand_loss(model, x, labels, weights, z)
    assert torch.allclose(loss, expected, rtol=1e-10)
    params = list(model.parameters())
    got = torch.autograd.grad(loss, params, allow_unused=True)
    want = torch.autograd.grad(expected, params, allow_unused=True)
    for g, w in zip(got, want, strict=True):
        assert (g is None and w is None) or torch.allclose(g, w, rtol=1e-8, atol=1e-10)


def test_rows_of_weight_zero_contribute_nothing():
    """A zero-weight row's label can be anything: loss and gradients are unchanged, and a
    -inf log-probability on such a row leaves them finite."""
    model = _model()
    x, y = _batch()
    params = list(model.parameters())
    results = []
    for label in (0.0, 1.0, 2.0, -1.0):
        other = y.clone()
        other[2, 0] = label  # row 2 has weight 0
        torch.manual_seed(3)
        loss, _ = _pyro_loss_and_z(model, x, other)
        results.append((loss, torch.autograd.grad(loss, params, allow_unused=True)))
    for loss, grads in results[1:]:
        assert torch.equal(loss, results[0][0])
        assert all(
            g is None or torch.equal(g, h) for g, h in zip(grads, results[0][1], strict=True)
        )
    only_zero_weight = torch.tensor([[0, 1.0], [1, 0.0], [2, 1.0], [0, 0.5], [1, 0.0], [2, 0.2]])
    with torch.no_grad():
        model.p_y.net[-1].bias[1] = -torch.inf  # log p(y=1|z) = -inf on every row
    loss, _ = _pyro_loss_and_z(model, x, only_zero_weight)
    assert torch.isfinite(loss)
    assert all(g is None or torch.isfinite(g).all()
               for g in torch.autograd.grad(loss, params, allow_unused=True))  # fmt: skip


def test_gamma_weights_the_classification_term():
    """The test above must be able to fail: without the weights, the loss differs."""
    model = _model()
    x, y = _batch()
    loss, z = _pyro_loss_and_z(model, x, y)
    labels = y[:, 0].long().clamp(min=0)
    unweighted = (y[:, 0] >= 0).to(x.dtype)
    assert not torch.allclose(loss, _hand_loss(model, x, labels, unweighted, z))


def test_plain_labels_have_weight_one_and_encode_decode_shapes():
    model = _model()
    x, _ = _batch()
    y = torch.tensor([2, -1, 0, 1, -1, 0])
    weighted = torch.stack([y.double(), (y >= 0).double()], 1)
    torch.manual_seed(1)
    a, _ = _pyro_loss_and_z(model, x, y)
    torch.manual_seed(1)
    b, _ = _pyro_loss_and_z(model, x, weighted)
    assert torch.allclose(a, b)
    z = model.encode(x)["z_mean"]
    assert z.shape == (6, Z) and model.decode(z).mean.shape == (6, D)
    probs = model.classify(x)
    assert torch.allclose(probs, model.classify(x)) and torch.allclose(probs.sum(-1),
                                                                       torch.ones(6))  # fmt: skip


@pytest.mark.parametrize(
    "bad",
    [torch.tensor([[0, -0.5]] * 6), torch.tensor([[3.0, 1.0]] * 6),
     torch.tensor([[0.5, 1.0]] * 6), torch.tensor([[0, 1]] * 6)],
)  # fmt: skip
def test_bad_weighted_labels_are_user_errors(bad):
    model = _model()
    x, _ = _batch()
    with pytest.raises(UserError):
        model.model(x, bad)


def test_beta_must_be_positive():
    with pytest.raises(UserError, match="beta"):
        build("beta-vae-classifier", input_dim=D, num_classes=K, beta=0.0)
