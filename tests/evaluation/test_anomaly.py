"""Anomaly detection (Berkhahn et al. sec 3.1.3): the log reconstruction probability
against An & Cho's formula written out, the AUC's sign, and the normal/anomalous split."""

import math

import numpy as np
import pytest
import torch
import torch.distributions as td
from torch.nn import functional as F

from ppl_ssvae.data import Dataset, semi_supervised_split
from ppl_ssvae.errors import UserError
from ppl_ssvae.evaluation.anomaly import anomaly_auc, anomaly_split, reconstruction_log_prob
from ppl_ssvae.models import build
from ppl_ssvae.nn import MIN_SCALE

K, D, Z, N = 3, 12, 4, 7


def _pi_vae(**kw):
    return build("pi-vae", input_dim=D, num_classes=K, z_dim=Z, hidden=(8, 7), **kw)


def _x(n=N):
    return torch.bernoulli(torch.full((n, D), 0.4))


def _hand_log_px(model, x, samples, seed):
    """``log p(x | pi(x) ⊕ z_l)`` for ``L`` draws ``z_l ~ q(z|x)``, from the weights."""
    enc, dec = model.encoder, model.decoder
    h = enc.trunk.net(x)
    q_z = td.Normal(enc.q_z.loc(h), F.softplus(enc.q_z.scale(h)) + MIN_SCALE)
    torch.manual_seed(seed)
    z = q_z.rsample((samples,))  # (L, N, Z)
    code = z
    if model.pi_to_decoder:
        pi = F.softmax(enc.pi(h), -1).expand(samples, -1, -1)
        code = torch.cat([pi, z], -1)
    logits = dec.head.logits(dec.trunk(code))
    return td.Bernoulli(logits=logits).log_prob(x).sum(-1)  # (L, N)


@pytest.mark.parametrize("samples", [1, 5])
@pytest.mark.parametrize(
    "config", [{"variant": "ss"}, {"variant": "eu"}, {"pi_to_decoder": False}], ids=str
)
def test_pi_vae_score_is_an_and_cho_reconstruction_probability(config, samples):
    torch.manual_seed(0)
    model, x = _pi_vae(**config), _x()
    with torch.no_grad():
        log_px = _hand_log_px(model, x, samples, seed=1)
    expected_prob = torch.logsumexp(log_px, 0) - math.log(samples)  # log (1/L sum_l p)
    expected_log = log_px.mean(0)  # 1/L sum_l log p

    torch.manual_seed(1)
    prob = reconstruction_log_prob(model, x, samples=samples)
    torch.manual_seed(1)
    log = reconstruction_log_prob(model, x, samples=samples, average="log")

    assert prob.shape == log.shape == (N,)
    torch.testing.assert_close(prob, expected_prob, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log, expected_log, rtol=1e-5, atol=1e-5)
    assert (prob >= log - 1e-5).all()  # Jensen: the log of a mean beats the mean of logs


def test_m2_score_marginalises_the_label_with_q_y():
    """``log sum_y q(y|x) p(x | y, z_y)``, ``z_y ~ q(z|x, y)``, for L = 1."""
    torch.manual_seed(0)
    model, x = build("m2", input_dim=D, num_classes=K, z_dim=Z, hidden=(8,)), _x()
    model.eval()
    with torch.no_grad():
        labels = torch.arange(K)[:, None]
        torch.manual_seed(1)
        z = model.q.q_z(x, labels).rsample()  # (K, N, Z): one z per class and row
        log_px = model.p_x(z, labels.expand(K, N)).log_prob(x)  # (K, N)
        expected = torch.logsumexp(model.q.q_y(x).logits.T + log_px, 0)
    torch.manual_seed(1)
    score = reconstruction_log_prob(model, x, samples=1)
    torch.testing.assert_close(score, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["m2", "adgm", "gmdgm", "agmdgm"])
def test_label_latent_models_give_one_finite_score_per_row(name):
    model = build(name, input_dim=D, num_classes=K, hidden=(8,))
    score = reconstruction_log_prob(model, _x(), samples=3, batch_size=4)
    assert score.shape == (N,) and torch.isfinite(score).all() and (score < 0).all()


def test_scoring_is_deterministic_and_restores_training_mode():
    """Dropout must be off while scoring (eval mode), and the caller's mode comes back."""
    model = _pi_vae(net="cnn", image_shape=(1, 3, 4), conv_channels=4, conv_hidden=8)
    model.train()
    x = _x()
    torch.manual_seed(3)
    first = reconstruction_log_prob(model, x, samples=2)
    torch.manual_seed(3)
    second = reconstruction_log_prob(model, x, samples=2)
    torch.testing.assert_close(first, second)
    assert model.training and not first.requires_grad


@pytest.mark.parametrize(
    "make, kwargs, match",
    [
        (lambda: _pi_vae(variant="es"), {}, "no decoder"),
        (lambda: build("latent", input_dim=D, num_classes=K), {}, "does not support"),
        (_pi_vae, {"samples": 0}, "samples"),
        (_pi_vae, {"average": "median"}, "average"),
    ],
)
def test_bad_requests_raise_user_errors(make, kwargs, match):
    with pytest.raises(UserError, match=match):
        reconstruction_log_prob(make(), _x(), **kwargs)


# -- the AUC ---------------------------------------------------------------------------------


def test_auc_low_reconstruction_probability_means_anomalous():
    is_anomaly = np.array([0, 0, 1, 0, 1, 0])
    separating = np.where(is_anomaly == 1, -500.0, -100.0)  # anomalies reconstruct worse
    assert anomaly_auc(torch.as_tensor(separating), torch.as_tensor(is_anomaly)) == 1.0
    assert anomaly_auc(-separating, is_anomaly.astype(bool)) == 0.0
    assert anomaly_auc(np.zeros(6), is_anomaly) == 0.5


@pytest.mark.parametrize(
    "scores, target, match",
    [
        ([1.0, 2.0], [0, 0], "both"),
        ([1.0, 2.0], [0, 1, 1], "same length"),
        ([1.0, 2.0], [0, 2], "0/1"),
        ([float("nan"), 2.0], [0, 1], "NaN"),
    ],
)
def test_auc_rejects_bad_input(scores, target, match):
    with pytest.raises(UserError, match=match):
        anomaly_auc(np.array(scores), np.array(target))


# -- the split -------------------------------------------------------------------------------


def _dataset(k=4, per_class=10, d=5):
    rng = np.random.default_rng(0)
    y_train = np.repeat(np.arange(k), per_class)
    y_test = np.repeat(np.arange(k), 3)
    x_train = rng.random((len(y_train), d)).astype(np.float32)
    x_train[:, 0] = y_train  # column 0 tags each row with its original class
    x_test = rng.random((len(y_test), d)).astype(np.float32)
    x_test[:, 0] = y_test
    x_train[:, -1] = x_test[:, -1] = 0.5  # a constant feature, for std_threshold to drop
    names = [f"c{c}" for c in range(k)]
    return Dataset("toy", x_train, y_train, x_test, y_test, names, default_validation_size=4)


@pytest.mark.parametrize("anomaly", [2, "c2"])
def test_split_drops_the_anomaly_from_training_and_reindexes(anomaly):
    dataset = _dataset()
    split = anomaly_split(dataset, anomaly)
    normal = split.normal
    assert split.anomaly_class == 2 and split.normal_classes == (0, 1, 3)
    assert normal.num_classes == 3 and normal.class_names == ["c0", "c1", "c3"]
    # No anomalous row is left, and model class i is original class normal_classes[i].
    assert len(normal.x_train) == 30 and 2 not in normal.x_train[:, 0]
    original = np.array(split.normal_classes)[normal.y_train]
    np.testing.assert_array_equal(original, normal.x_train[:, 0])
    np.testing.assert_array_equal(
        np.array(split.normal_classes)[normal.y_test], normal.x_test[:, 0]
    )
    # The scoring set is the full test set with a binary target.
    np.testing.assert_array_equal(split.x_test, dataset.x_test)
    np.testing.assert_array_equal(split.is_anomaly, (dataset.y_test == 2).astype(int))


def test_split_feeds_semi_supervised_split_for_a_label_fraction_sweep():
    split = anomaly_split(_dataset(), 1)
    data = semi_supervised_split(split.normal, label_fraction=0.5, seed=0)
    assert data.num_classes == 3 and set(data.y_train_true.tolist()) == {0, 1, 2}
    per_class = {c: round(0.5 * (data.y_train_true == c).sum().item()) for c in range(3)}
    assert data.summary["labels_per_class"] == per_class
    x, target = split.test_tensors(data)
    assert x.shape == (12, 5) and target.dtype == torch.long and int(target.sum()) == 3

    masked = semi_supervised_split(split.normal, std_threshold=0.2, seed=0)
    x_masked, _ = split.test_tensors(masked)
    assert x_masked.shape[1] == masked.input_dim < 5


def test_split_scores_end_to_end():
    torch.manual_seed(0)
    split = anomaly_split(_dataset(d=D), 0)
    model = build("pi-vae", input_dim=D, num_classes=3, z_dim=Z, hidden=(8,), likelihood="gaussian")
    x, target = split.test_tensors()
    auc = anomaly_auc(reconstruction_log_prob(model, x, samples=2), target)
    assert 0.0 <= auc <= 1.0


@pytest.mark.parametrize("anomaly, match", [(4, "out of range"), ("dog", "no class")])
def test_split_rejects_unknown_classes(anomaly, match):
    with pytest.raises(UserError, match=match):
        anomaly_split(_dataset(), anomaly)


def test_split_needs_a_dataset():
    data = semi_supervised_split(_dataset(), seed=0)
    with pytest.raises(UserError, match="Dataset"):
        anomaly_split(data, 0)
