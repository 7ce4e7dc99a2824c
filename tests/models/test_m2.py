"""M2's TraceEnum_ELBO loss against Kingma's bound written out with torch.distributions."""

import pytest
import torch
import torch.distributions as td
from torch.nn import functional as F

from ppl_ssvae.models import build
from ppl_ssvae.nn import MIN_SCALE, LabelConditionedTrunk
from tests.models.exact import loss_and_sites

K, D, Z = 3, 12, 4


pytestmark = pytest.mark.usefixtures("float64")


def _m2(alpha=2.5, **kw):
    return build("m2", input_dim=D, num_classes=K, z_dim=Z, hidden=(8,), alpha=alpha, **kw)


def _loss_and_z(model, x, y):
    return loss_and_sites(model, x, y, "z")


def _hand_written_terms(model, x, y, z):
    """Per-row L(x, k) for every k (Jurasiński eq. 3), log q(y|x), written from scratch."""
    log_q_y = F.log_softmax(model.q.q_y.net(x), -1)  # (B, K)
    bounds = []
    for k in range(K):
        label = torch.full((len(x),), k)
        h = model.q.q_z.trunk(x, label)
        q_z = td.Normal(model.q.q_z.head.loc(h), F.softplus(model.q.q_z.head.scale(h)) + MIN_SCALE)
        logits = model.p_x.head.logits(model.p_x.trunk(z[k], label))
        log_px = td.Bernoulli(logits=logits).log_prob(x).sum(-1)
        log_pz = td.Normal(0.0, 1.0).log_prob(z[k]).sum(-1)
        log_py = torch.log(torch.tensor(1.0 / K))
        bounds.append(log_px + log_py + log_pz - q_z.log_prob(z[k]).sum(-1))
    return torch.stack(bounds, -1), log_q_y  # (B, K), (B, K)


def _expected_loss(model, x, y, z, alpha, entropy=True):
    L, log_q = _hand_written_terms(model, x, y, z)
    labelled = y >= 0
    y0 = y.clamp(min=0)
    labelled_bound = L.gather(1, y0[:, None]).squeeze(1) + alpha * log_q.gather(
        1, y0[:, None]
    ).squeeze(1)
    q = log_q.exp()
    unlabelled_bound = (q * L).sum(-1) - entropy * (q * log_q).sum(-1)
    return -torch.where(labelled, labelled_bound, unlabelled_bound).sum()


@pytest.mark.parametrize("y", [[2, -1, 0, -1, -1, 1], [-1] * 6, [0, 1, 2, 2, 1, 0]])
def test_loss_equals_hand_written_bound(y):
    torch.manual_seed(0)
    model = _m2(alpha=2.5)
    x = torch.bernoulli(torch.rand(6, D))
    y = torch.tensor(y)
    with torch.no_grad():
        loss, z = _loss_and_z(model, x, y)
        assert z.shape == (K, 6, Z)
        expected = _expected_loss(model, x, y, z, alpha=2.5).item()
    assert loss == pytest.approx(expected, rel=1e-4)


def test_dropping_entropy_or_alpha_would_fail():
    """The equality above has power: each term moves the loss by far more than 1e-4."""
    torch.manual_seed(0)
    model = _m2(alpha=2.5)
    x = torch.bernoulli(torch.rand(6, D))
    y = torch.tensor([2, -1, 0, -1, -1, 1])
    with torch.no_grad():
        loss, z = _loss_and_z(model, x, y)
        no_entropy = _expected_loss(model, x, y, z, alpha=2.5, entropy=False).item()
        no_alpha = _expected_loss(model, x, y, z, alpha=0.0).item()
    assert abs(loss - no_entropy) > 1e-2 * abs(loss)
    assert abs(loss - no_alpha) > 1e-2 * abs(loss)


def test_alpha_term_is_alpha_times_labelled_log_q():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(6, D))
    y = torch.tensor([2, -1, 0, -1, -1, 1])
    model = _m2(alpha=0.0)
    weighted = _m2(alpha=4.0)
    weighted.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    base = model.make_elbo().loss(model.model, model.guide, x, y)
    torch.manual_seed(1)
    with_alpha = weighted.make_elbo().loss(weighted.model, weighted.guide, x, y)
    log_q = F.log_softmax(model.q.q_y.net(x), -1).detach()
    labelled = (y >= 0).nonzero().squeeze(1)
    assert with_alpha - base == pytest.approx(
        -4.0 * log_q[labelled, y[labelled]].sum().item(), rel=1e-6
    )


def test_gaussian_likelihood_uses_fixed_sigma2():
    torch.manual_seed(0)
    model = _m2(likelihood="gaussian", sigma2=0.25)
    z, y = torch.randn(5, Z), torch.tensor([0, 1, 2, 0, 1])
    p = model.p_x(z, y)
    assert torch.allclose(p.base_dist.scale, torch.full((5, D), 0.5))


def test_label_conditioned_layer_is_exact_and_computes_x_part_once():
    """W_x x + W_y y equals a linear layer on [x, onehot(y)] and runs W_x on B rows, not K*B."""
    torch.manual_seed(0)
    trunk = LabelConditionedTrunk(D, K, [7])
    x = torch.randn(5, D)
    y_enum = torch.arange(K).view(K, 1)  # what parallel enumeration passes
    rows_seen = []
    trunk.x_layer.register_forward_hook(lambda m, inp, out: rows_seen.append(inp[0].shape))
    out = trunk(x, y_enum)
    assert out.shape == (K, 5, 7) and rows_seen == [torch.Size([5, D])]
    weight = torch.cat([trunk.x_layer.weight, trunk.y_layer.weight.T], 1)
    for k in range(K):
        onehot = F.one_hot(torch.full((5,), k), K).float()
        concat = F.linear(torch.cat([x, onehot], 1), weight, trunk.x_layer.bias)
        assert torch.allclose(out[k], trunk.rest(trunk.act(concat)), atol=1e-6)


def _per_class_terms(model, x, z):
    """``L(x, k)`` and ``log q(y|x)`` with each network run on one class at a time (labels
    of shape (B,), nothing broadcast) and the densities written with torch.distributions."""
    log_q_y = F.log_softmax(model.q.q_y(x).logits, -1)
    bounds = []
    for k in range(K):
        label = torch.full((len(x),), k)
        q_z = model.q.q_z(x=x, y=label).base_dist
        q_z = td.Normal(q_z.loc, q_z.scale)
        log_px = td.Bernoulli(logits=model.p_x(z[k], label).logits).log_prob(x).sum(-1)
        log_pz = td.Normal(0.0, 1.0).log_prob(z[k]).sum(-1)
        bounds.append(
            log_px + torch.log(torch.tensor(1.0 / K)) + log_pz - q_z.log_prob(z[k]).sum(-1)
        )
    return torch.stack(bounds, -1), log_q_y


@pytest.mark.parametrize("y", [[2, -1, 0, -1, -1, 1], [-1] * 6])
def test_conv_loss_equals_the_bound_computed_one_class_at_a_time(y):
    """With the conv nets (12 pixels as a 3x4 image), the enumerated loss is Kingma's bound
    with every class's networks run separately: the trunk's features, computed once per
    row, broadcast over the enumerated label exactly."""
    torch.manual_seed(0)
    model = _m2(alpha=2.5, net="conv", net_args={"channels": [3, 5]}, image_shape=(1, 3, 4))
    x = torch.bernoulli(torch.rand(6, D))
    y = torch.tensor(y)
    with torch.no_grad():
        loss, z = _loss_and_z(model, x, y)
        L, log_q = _per_class_terms(model, x, z)
        labelled, y0 = y >= 0, y.clamp(min=0)[:, None]
        q = log_q.exp()
        bound = torch.where(labelled, (L + 2.5 * log_q).gather(1, y0).squeeze(1),
                            (q * L).sum(-1) - (q * log_q).sum(-1))  # fmt: skip
    assert loss == pytest.approx(-bound.sum().item(), rel=1e-6)
