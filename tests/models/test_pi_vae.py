"""pi-VAE (Berkhahn et al. 2019): the loss against eq. 3-5 written out, the siblings
ES / EU, the pi -> decoder switch, and the CNN / RNN networks."""

import pyro
import pytest
import torch
import torch.distributions as td
from pyro import poutine
from torch.nn import functional as F

from ppl_ssvae.errors import UserError
from ppl_ssvae.models import build
from tests.models.exact import loss_and_sites

K, D, Z = 3, 12, 4
Y_MIXED = [2, -1, 0, -1, -1, 1]


pytestmark = pytest.mark.usefixtures("float64")


def _pi_vae(**kw):
    kw = {"z_dim": Z, "hidden": (8, 7), "alpha": 2.5, "beta": 0.7, **kw}
    return build("pi-vae", input_dim=D, num_classes=K, **kw)


def _batch(y=Y_MIXED):
    return torch.bernoulli(torch.full((len(y), D), 0.4)), torch.tensor(y)


def _loss_and_z(model, x, y):
    return loss_and_sites(model, x, y, "z")


def _hand_written_terms(model, x, z):
    """Per row: log p(x | pi ⊕ z), KL[q(z|x) || N(0, I)], log pi(x), from the weights."""
    enc, dec = model.encoder, model.decoder
    h = enc.trunk.net(x)
    q_z = td.Normal(enc.q_z.loc(h), F.softplus(enc.q_z.scale(h)) + 1e-4)
    log_pi = F.log_softmax(enc.pi(h), -1)
    logits = dec.head.logits(dec.trunk(torch.cat([log_pi.exp(), z], -1)))
    log_px = td.Bernoulli(logits=logits).log_prob(x).sum(-1)
    kl_z = td.kl_divergence(q_z, td.Normal(0.0, 1.0)).sum(-1)
    return log_px, kl_z, log_pi


def _expected_loss(model, x, y, z, alpha, beta, ce_rows="labelled", pi_kl=False):
    """Eq. 3-5 times the batch size B (the library sums the ELBO over rows where the paper's
    Keras loss averages it): -sum(E log p(x|pi, z) - beta KL_z) + alpha B / #labelled * sum CE."""
    log_px, kl_z, log_pi = _hand_written_terms(model, x, z)
    ce = -log_pi.gather(1, y.clamp(min=0)[:, None]).squeeze(1)
    labelled = y >= 0
    if ce_rows == "labelled":
        l_cl = alpha * len(y) / labelled.sum() * ce[labelled].sum() if labelled.any() else 0.0
    elif ce_rows == "all":  # wrong: unlabelled rows (placeholder class 0) counted too
        l_cl = alpha * len(y) / labelled.sum() * ce.sum()
    else:  # wrong: not normalised by the labelled count
        l_cl = alpha * ce[labelled].sum()
    loss = -(log_px - beta * kl_z).sum() + l_cl
    if pi_kl:  # the wrong way: a KL[Cat(pi) || uniform] per row
        loss = loss + (log_pi.exp() * (log_pi + torch.log(torch.tensor(float(K))))).sum()
    return loss.item()


@pytest.mark.parametrize("y", [Y_MIXED, [-1] * 6, [0, 1, 2, 2, 1, 0]])
def test_loss_equals_eq_3_to_5(y):
    torch.manual_seed(0)
    model = _pi_vae()
    x, y = _batch(y)
    with torch.no_grad():
        loss, z = _loss_and_z(model, x, y)
        assert z.shape == (6, Z)
        expected = _expected_loss(model, x, y, z, alpha=2.5, beta=0.7)
    assert loss == pytest.approx(expected, rel=1e-9)


def test_unlabelled_cross_entropy_or_a_pi_kl_would_fail():
    """The equality has power: CE on unlabelled rows, the wrong normaliser, a KL on pi or
    an unweighted KL each move the loss by far more than its 1e-9 tolerance."""
    torch.manual_seed(0)
    model = _pi_vae()
    x, y = _batch()
    with torch.no_grad():
        model.encoder.pi.weight.mul_(10)  # pi far from uniform, so a KL on it is large
        loss, z = _loss_and_z(model, x, y)
        all_rows = _expected_loss(model, x, y, z, 2.5, 0.7, ce_rows="all")
        batch_mean = _expected_loss(model, x, y, z, 2.5, 0.7, ce_rows="batch")
        with_pi_kl = _expected_loss(model, x, y, z, 2.5, 0.7, pi_kl=True)
        full_beta = _expected_loss(model, x, y, z, 2.5, 1.0)
    for wrong in (all_rows, batch_mean, with_pi_kl, full_beta):
        assert abs(loss - wrong) > 1e-4 * abs(loss)


def test_cross_entropy_is_alpha_over_labelled_count_times_labelled_sum():
    torch.manual_seed(0)
    x, y = _batch()
    base, weighted = _pi_vae(alpha=0.0), _pi_vae(alpha=4.0)
    weighted.load_state_dict(base.state_dict())
    pyro.set_rng_seed(1)
    loss0 = base.make_elbo().loss(base.model, base.guide, x, y)
    pyro.set_rng_seed(1)
    loss4 = weighted.make_elbo().loss(weighted.model, weighted.guide, x, y)
    log_pi = base.classify(x).log()
    labelled = (y >= 0).nonzero().squeeze(1)
    assert loss4 - loss0 == pytest.approx(
        -4.0 * len(y) / 3 * log_pi[labelled, y[labelled]].sum().item()
    )


def _pi_head_grad(model, x, y):
    model.zero_grad()
    model.make_elbo().loss_and_grads(model.model, model.guide, x, y)
    return model.encoder.pi.weight.grad


def test_pi_head_learns_only_from_labelled_cross_entropy():
    """Without the pi -> decoder link, pi's only gradient is the labelled CE: none on an
    unlabelled batch (no KL on pi), and exactly d(alpha/#lab * sum CE) on a mixed one."""
    torch.manual_seed(0)
    model = _pi_vae(pi_to_decoder=False)
    x, y = _batch()
    grad = _pi_head_grad(model, x, y)
    weight = model.encoder.pi.weight
    log_pi = F.log_softmax(model.encoder.pi(model.encoder.trunk(x)), -1)
    labelled = y >= 0
    l_cl = -2.5 * len(y) / labelled.sum() * log_pi[labelled].gather(1, y[labelled, None]).sum()
    (expected,) = torch.autograd.grad(l_cl, weight)
    assert torch.allclose(grad, expected)
    unlabelled_grad = _pi_head_grad(model, x, torch.full((6,), -1))
    assert unlabelled_grad is None or not unlabelled_grad.abs().sum() > 0


def test_pi_to_decoder_switch():
    """With the link cut the decoder does not see pi and reads z only."""
    torch.manual_seed(0)
    x, y = _batch()
    z = torch.randn(6, Z)
    pi_a = F.log_softmax(torch.randn(6, K), -1)
    pi_b = F.log_softmax(torch.randn(6, K), -1)

    def x_logits(model, log_pi):
        given = poutine.condition(model.model, data={"z": z, "log_pi": log_pi})
        return poutine.trace(given).get_trace(x, y).nodes["x"]["fn"].logits

    linked, cut = _pi_vae(), _pi_vae(pi_to_decoder=False)
    assert not torch.allclose(x_logits(linked, pi_a), x_logits(linked, pi_b))
    assert torch.equal(x_logits(cut, pi_a), x_logits(cut, pi_b))
    assert cut.decoder.trunk[0].in_features == Z and linked.decoder.trunk[0].in_features == Z + K
    with pytest.raises(UserError, match="does not read pi"):
        cut.sample(2, y=1)


def _train(model, x, y, steps=30, lr=0.05):
    """Loss with the same noise before and after a few SVI steps."""
    elbo = model.make_elbo()

    def loss():
        pyro.set_rng_seed(7)
        with torch.no_grad():
            return elbo.loss(model.model, model.guide, x, y)

    pyro.clear_param_store()
    before = loss()
    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": lr}), elbo)
    for _ in range(steps):
        svi.step(x, y)
    return before, loss()


def test_es_is_encoder_and_pi_only_and_trains():
    torch.manual_seed(0)
    model = _pi_vae(variant="es")
    assert model.decoder is None and model.encoder.q_z is None
    assert all(n.startswith(("encoder.trunk.", "encoder.pi.")) for n, _ in model.named_parameters())
    x, y = _batch([0, 1, 2, 0, 1, 2])
    # the loss is the cross-entropy alone, and there is no z or x site
    trace = poutine.trace(model.model).get_trace(x, y)
    assert {"z", "x"}.isdisjoint(trace.nodes) and "classification" in trace.nodes
    with torch.no_grad():
        ce = (
            -model.classify(x).log()[torch.arange(6), y].mean().item()
        )  # 6 of 6 labelled: loss = 2.5 * 6 / 6 * sum CE
    before, after = _train(model, x, y)
    assert before == pytest.approx(2.5 * 6 * ce) and after < before
    with pytest.raises(UserError, match="no decoder"):
        model.sample(2)


def test_eu_has_no_pi_head_and_trains():
    torch.manual_seed(0)
    model = _pi_vae(variant="eu")
    assert model.encoder.pi is None
    assert not any(".pi." in n for n, _ in model.named_parameters())
    assert model.decoder.trunk[0].in_features == Z
    x, y = _batch()
    trace = poutine.trace(model.model).get_trace(x, y)
    assert {"log_pi", "classification"}.isdisjoint(trace.nodes)
    before, after = _train(model, x, y)
    assert after < before
    assert model.sample(3).shape == (3, D)
    with pytest.raises(UserError, match="cannot classify"):
        model.classify(x)


def test_generation_sets_pi_to_each_class():
    torch.manual_seed(0)
    model = _pi_vae()
    means = []
    for k in range(K):
        assert model.sample(5, y=k).shape == (5, D)
        torch.manual_seed(3)
        means.append(model.sample(5, y=k, mean=True))
        torch.manual_seed(3)
        z = model.p_z((5,)).sample()
        one_hot = F.one_hot(torch.full((5,), k), K).to(z.dtype)
        expected = model.decoder(torch.cat([one_hot, z], -1)).mean
        assert torch.allclose(means[-1], expected)
    assert not torch.allclose(means[0], means[1])


def _check_steps_and_gradients(model, x, y, by_label=True):
    model.zero_grad()
    model.make_elbo().loss_and_grads(model.model, model.guide, x, y)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []
    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-2}), model.make_elbo())
    assert all(torch.isfinite(torch.tensor(svi.step(x, y))) for _ in range(2))
    probs = model.classify(x)
    assert probs.shape == (len(x), model.config.num_classes)
    assert torch.allclose(probs.sum(-1), torch.ones(len(x)))
    if by_label:  # a decoder that reads no pi samples without y
        assert model.sample(3, y=1).shape == (3, x.shape[1])
    assert model.sample(3, mean=True).shape == (3, x.shape[1])


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (2, 7, 9)])
def test_cnn_builds_steps_and_gets_gradients(image_shape):
    torch.manual_seed(0)
    d = torch.Size(image_shape).numel()
    model = build(
        "pi-vae", input_dim=d, num_classes=K, net="cnn", image_shape=image_shape,
        conv_channels=4, conv_hidden=8, alpha=1.0,
    )  # fmt: skip
    x, y = torch.rand(4, d), torch.tensor([0, -1, 2, -1])
    assert model.decoder(torch.randn(4, 2 + K)).batch_shape == (4,)
    _check_steps_and_gradients(model, x, y)


@pytest.mark.parametrize("image_shape", [(2, 32, 32), (2, 21, 19)])
def test_table_16_cnn_builds_steps_and_gets_gradients(image_shape):
    """Berkhahn Table 16 (Small-NORB): four 7x7 stride-2 convolutions halve the image four
    times, the decoder mirrors them back to the odd sizes too, and the four pi heads are a
    loss on the trunk only (the decoder reads z alone)."""
    from ppl_ssvae.models.pi_vae_nets import NorbEncoder

    torch.manual_seed(0)
    d = torch.Size(image_shape).numel()
    model = build(
        "pi-vae", input_dim=d, num_classes=K, net="norb-cnn", image_shape=image_shape,
        conv_hidden=8, alpha=1.0, pi_to_decoder=False, factor_classes=(4, 2, 3),
    )  # fmt: skip
    trunk = next(m for m in model.modules() if isinstance(m, NorbEncoder))
    kernels = [m.kernel_size for m in trunk.convs if isinstance(m, torch.nn.Conv2d)]
    assert kernels == [(7, 7)] * 4 and trunk.features == 8
    x = torch.rand(4, d)
    y = torch.tensor([[0, 1, 0, 2], [-1, -1, -1, -1], [2, -1, 1, -1], [-1, 3, -1, 0]])
    assert model.decoder(torch.randn(4, 2)).batch_shape == (4,)
    _check_steps_and_gradients(model, x, y, by_label=False)


def _steps_model(T=5, C=3):
    torch.manual_seed(0)
    return build("pi-vae", input_dim=T * C, num_classes=K, net="rnn-steps", z_dim=2,
                 likelihood="gaussian", sequence_channels=C, rnn_hidden=(4, 6, 5),
                 alpha=2.5, beta=0.7)  # fmt: skip


def test_rnn_steps_loss_is_eq_3_to_5_with_a_latent_and_class_logits_per_step():
    """Table 15 as listed: q(z|x) is a Gaussian per step (T x 2 units, one KL over all),
    pi is the softmax of the per-step class logits averaged over steps, and the decoder
    reads pi ⊕ z_t at step t."""
    from ppl_ssvae.nn import MIN_SCALE
    from ppl_ssvae.nn.likelihoods import output_distribution

    T, B = 5, len(Y_MIXED)
    model = _steps_model(T)
    x, y = torch.randn(B, T * 3), torch.tensor(Y_MIXED)
    with torch.no_grad():
        loss, z = _loss_and_z(model, x, y)
        assert z.shape == (B, T * 2)
        enc, dec = model.encoder, model.decoder
        h = enc.trunk(x)  # (B, T, features)
        scale = F.softplus(enc.q_z.scale(h)) + MIN_SCALE
        q_z = td.Normal(enc.q_z.loc(h).flatten(1), scale.flatten(1))
        log_pi = F.log_softmax(enc.pi(h).mean(1), -1)
        per_step = torch.cat([log_pi.exp()[:, None].expand(-1, T, -1), z.reshape(B, T, 2)], -1)
        steps, _ = dec.lstm(dec.pre(per_step))
        loc, raw = dec.out(dec.post(steps)).chunk(2, -1)
        log_px = output_distribution("gaussian", [loc.flatten(1), raw.flatten(1)], None).log_prob(x)
        kl_z = td.kl_divergence(q_z, td.Normal(0.0, 1.0)).sum(-1)
        labelled = y >= 0
        ce = -log_pi[labelled, y[labelled]].sum()
        expected = -(log_px - 0.7 * kl_z).sum() + 2.5 * B / labelled.sum() * ce
    assert loss == pytest.approx(expected.item(), rel=1e-9)
    torch.testing.assert_close(model.classify(x), log_pi.exp())


def test_rnn_steps_decoder_reads_each_step_s_own_latent():
    """The LSTM runs forward in time, so a change of z at step 3 leaves steps 0-2 of the
    decoded sequence as they were and changes step 3: each step has its own latent."""
    model = _steps_model(T=5)
    code = torch.randn(2, K + 5 * 2)
    changed = code.clone()
    changed[:, K + 3 * 2 :] += 1.0  # z_3 and z_4
    with torch.no_grad():
        a, b = (model.decoder(c).mean.reshape(2, 5, 3) for c in (code, changed))
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert (a[:, 3] - b[:, 3]).abs().max() > 1e-3
    x, y = torch.randn(4, 15), torch.tensor([1, -1, -1, 0])
    _check_steps_and_gradients(model, x, y)


@pytest.mark.parametrize("sigma2", [None, 0.5])
def test_rnn_builds_steps_and_gets_gradients(sigma2):
    torch.manual_seed(0)
    steps, channels = 8, 3
    model = build(
        "pi-vae", input_dim=steps * channels, num_classes=K, net="rnn", likelihood="gaussian",
        sigma2=sigma2, sequence_channels=channels, rnn_hidden=(5, 6, 4),
    )  # fmt: skip
    x, y = torch.randn(4, steps * channels), torch.tensor([1, -1, -1, 0])
    p_x = model.decoder(torch.randn(4, 2 + K))
    assert p_x.event_shape == (steps * channels,)
    if sigma2 is not None:
        assert torch.allclose(p_x.base_dist.scale, torch.full((4, 24), 0.5**0.5))
    _check_steps_and_gradients(model, x, y)


@pytest.mark.parametrize(
    "bad",
    [
        {"variant": "xx"},
        {"net": "mlp"},
        {"net": "cnn"},  # image_shape (1, 28, 28) does not match input_dim 12
        {"net": "rnn", "sequence_channels": 5},
        {"likelihood": "poisson"},
    ],
)
def test_bad_config_is_a_user_error(bad):
    with pytest.raises(UserError):
        _pi_vae(**bad)


def test_factor_heads_each_add_their_own_normalised_cross_entropy():
    """Table 16: one pi head per label factor, each CE over the rows that know that factor,
    normalised by their count; a 1-D y labels the main head only."""
    torch.manual_seed(0)
    model = _pi_vae(variant="es", factor_classes=(3,), alpha=2.0)
    x, _ = _batch()
    y = torch.tensor([[0, 2], [1, -1], [-1, 0], [2, 1], [-1, -1], [0, -1]])
    loss = model.make_elbo().differentiable_loss(model.model, model.guide, x, y)
    with torch.no_grad():
        _, q_pi, (q_factor,) = model.encoder.heads(x)
    expected = 0.0
    for column, head in enumerate((q_pi, q_factor)):
        known = y[:, column] >= 0
        ce = -head.log_prob(y[:, column].clamp(min=0))[known]
        expected += 2.0 * len(y) / known.sum() * ce.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    main_only = model.make_elbo().differentiable_loss(model.model, model.guide, x, y[:, 0])
    known = y[:, 0] >= 0
    ce = -q_pi.log_prob(y[:, 0].clamp(min=0))[known]
    assert main_only.item() == pytest.approx(
        (2.0 * len(y) / known.sum() * ce.sum()).item(), rel=1e-6
    )
    with pytest.raises(UserError, match="one column per pi head"):
        model.check_y(torch.zeros(6, 3, dtype=torch.long), 6)
    with pytest.raises(UserError, match="pi head 1 must be in -1..2"):
        model.check_y(torch.tensor([[0, 3]] * 6), 6)


def test_the_cnn_is_the_pi_vae_cnn_family_of_the_network_registry(monkeypatch):
    """net="cnn" builds its encoder trunk and decoder through the registry entry, with the
    config's conv fields as the family's net_args."""
    import dataclasses

    from ppl_ssvae.models.pi_vae_nets import ConvDecoder, ConvEncoder
    from ppl_ssvae.nn import NETS

    calls = []
    cnn = NETS["pi-vae-cnn"]

    def recorded(part):
        def build_part(*args, **net_args):
            calls.append((part, net_args))
            return getattr(cnn, part)(*args, **net_args)

        return build_part

    spy = dataclasses.replace(cnn, trunk=recorded("trunk"), decoder=recorded("decoder"))
    monkeypatch.setitem(NETS, "pi-vae-cnn", spy)
    model = _pi_vae(net="cnn", image_shape=(1, 3, 4), conv_channels=5, conv_hidden=6, dropout=0.25)
    args = {"channels": 5, "features": 6, "dropout": 0.25}
    # (build draws the model twice: once on the meta device to check its size)
    assert calls[-2:] == [("trunk", args), ("decoder", args)]
    assert isinstance(model.encoder.trunk, ConvEncoder) and isinstance(model.decoder, ConvDecoder)
