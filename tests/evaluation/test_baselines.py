"""The labelled-only baseline (Jurasiński sec 5.1, and sec 3.1 for M2): the latent
classifier's own q(z|x) -> p(y|z) path, or M2's q(y|x), trained on the labelled rows alone
with cross-entropy."""

import dataclasses

import pyro
import pytest
import torch

from ppl_ssvae.data import load, semi_supervised_split
from ppl_ssvae.errors import UserError
from ppl_ssvae.evaluation.baselines import (
    classifier_log_prob,
    classifier_modules,
    fit_labelled_only,
)
from ppl_ssvae.models import build


@pytest.fixture(scope="module")
def digits():
    return semi_supervised_split(load("digits"), labels=30, seed=0)


def _latent(data, name="latent"):
    pyro.set_rng_seed(0)  # initial weights come from the global RNG
    return build(name, input_dim=data.input_dim, num_classes=10, z_dim=4, hidden=(32,))


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("name", ["latent", "latent-simplified"])
def test_only_the_classifier_path_is_trained(digits, name):
    model = _latent(digits, name)
    before = _params(model)
    fit_labelled_only(model, digits, epochs=3, batch_size=10)
    after = _params(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    classifier = {f"q.q_z.{k}" for k, _ in model.q.q_z.named_parameters()}
    classifier |= {f"p_y.{k}" for k, _ in model.p_y.named_parameters()}
    assert changed == classifier
    assert not any(k.startswith("p_x.") for k in changed)
    assert {id(p) for p in classifier_modules(model).parameters()} == {
        id(p) for k, p in model.named_parameters() if k in classifier
    }


def test_training_raises_training_accuracy_and_keeps_the_best_epoch(digits):
    model = _latent(digits)
    result = fit_labelled_only(model, digits, epochs=30, lr=1e-2, batch_size=10)
    first, last = result.history[0], result.history[-1]
    assert last["train_accuracy"] > first["train_accuracy"] + 0.3
    assert last["train_loss"] < first["train_loss"]
    best = result.best
    assert best["val_accuracy"] == max(h["val_accuracy"] for h in result.history)
    # The best epoch's weights are the ones left in the model.
    assert model.classify(digits.x_val).argmax(-1).eq(digits.y_val).float().mean().item() == (
        pytest.approx(best["val_accuracy"])
    )
    assert set(best) >= {"test_accuracy", "test_log_loss", "elapsed_cpu_seconds"}


def _timeless(history):
    return [{k: v for k, v in h.items() if "seconds" not in k} for h in history]


def test_unlabelled_rows_are_never_used(digits):
    poisoned = digits.x_train.clone()
    poisoned[~digits.labelled_mask] = float("nan")  # any use would spread NaN everywhere
    runs = []
    for x_train in (digits.x_train, poisoned):
        model = _latent(digits)
        result = fit_labelled_only(model, dataclasses.replace(digits, x_train=x_train), epochs=2)
        runs.append((_timeless(result.history), _params(model)))
    (clean, clean_params), (dirty, dirty_params) = runs
    assert clean == dirty
    assert all(torch.equal(clean_params[k], dirty_params[k]) for k in clean_params)


def test_log_prob_is_the_classifier_rule(digits):
    """Both average p(y|z_i) over draws z_i ~ q(z|x) (not p(y|z) at z's mean): with many
    draws they agree."""
    model = _latent(digits)
    with torch.no_grad():
        model.p_y.net[-1].weight.mul_(10)  # a confident head, so the rules differ visibly
    x, y = digits.x_val[:5], digits.y_val[:5]
    model.config.classify_samples = 20_000
    with torch.no_grad():
        trained_on = classifier_log_prob(model, x, y).exp()
        at_mean = model.p_y(model.q.q_z(x).mean).probs[torch.arange(5), y]
    predicted = model.classify(x)[torch.arange(5), y]
    assert torch.allclose(trained_on, predicted, atol=3e-3)
    assert not torch.allclose(at_mean, predicted, atol=2e-2)


def _label_latent(data, name):
    pyro.set_rng_seed(0)
    return build(name, input_dim=data.input_dim, num_classes=10, z_dim=4, hidden=(32,))


@pytest.mark.parametrize("name", ["m2", "gmdgm"])
def test_m2_trains_only_its_classifier_q_y(digits, name):
    """Only q(y|x) moves, and the weights left in the model are the best epoch's: a
    ``fit`` of the same model afterwards starts from that classifier (sec 3.1)."""
    model = _label_latent(digits, name)
    before = _params(model)
    result = fit_labelled_only(model, digits, epochs=20, lr=1e-2, batch_size=10)
    after = _params(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"q.q_y.{k}" for k, _ in model.q.q_y.named_parameters()}
    assert result.history[-1]["train_accuracy"] > result.history[0]["train_accuracy"] + 0.3
    best = result.best
    assert model.classify(digits.x_val).argmax(-1).eq(digits.y_val).float().mean().item() == (
        pytest.approx(best["val_accuracy"])
    )


def test_m2_log_prob_is_log_q_y(digits):
    model = _label_latent(digits, "m2")
    x, y = digits.x_val[:5], digits.y_val[:5]
    with torch.no_grad():
        expected = model.classify(x)[torch.arange(5), y].log()
        assert torch.allclose(classifier_log_prob(model, x, y), expected, atol=1e-6)


def test_refuses_models_without_a_baseline_classifier(digits):
    adgm = build("adgm", input_dim=digits.input_dim, num_classes=10, z_dim=4, hidden=(8,))
    with pytest.raises(UserError, match="latent"):
        fit_labelled_only(adgm, digits, epochs=1)


def test_m2_fits_after_its_baseline_and_the_next_seed_fits_too(digits):
    """fit after fit_labelled_only on the same model, then both again on a new model:
    the classifier's tensors were stored under the baseline's and M2's names, and the
    param store (one name per tensor) failed to forget them (a KeyError)."""
    from ppl_ssvae.training import fit

    for seed in (0, 1):
        baseline = _label_latent(digits, "m2")
        fit_labelled_only(baseline, digits, epochs=1, seed=seed)
        started = baseline.q.q_y.net[-1].weight.detach().clone()
        fit(baseline, digits, epochs=1, batch_size=100, seed=seed, progress=False)
        assert not torch.equal(baseline.q.q_y.net[-1].weight, started)  # M2 trained q(y|x)
        fit(_label_latent(digits, "m2"), digits, epochs=1, batch_size=100, progress=False)
