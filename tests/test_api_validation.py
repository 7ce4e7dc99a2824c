"""The Python API refuses bad arguments with one-line UserErrors, and its evaluators
accept splits without validation or test rows (NaN / None instead of a crash)."""

import math

import numpy as np
import pyro
import pytest
import torch

from ppl_ssvae.data import Dataset, semi_supervised_split
from ppl_ssvae.errors import UserError
from ppl_ssvae.evaluation.clustering import clustering_report
from ppl_ssvae.evaluation.metrics import classification_report, elbo_report, log_loss, mean_elbo
from ppl_ssvae.models import MODELS, build

D, K = 6, 3
SMALL = {"z_dim": 2, "hidden": (8,)}


def _model(name="m2"):
    pyro.set_rng_seed(0)
    return build(name, input_dim=D, num_classes=K, **SMALL)


@pytest.fixture(params=sorted(MODELS))
def name(request):
    return request.param


# -- sample ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, y, message",
    [
        (4, 12, r"classes to sample must be in 0..2; got 12..12"),
        (4, -1, r"classes to sample must be in 0..2; got -1..-1"),
        (4, torch.tensor([0, 1]), r"y has shape \(2,\) for 4 samples; expected \(4,\)"),
        (4, torch.zeros(4, 1, dtype=torch.long), r"y has shape \(4, 1\)"),
        (4, 1.0, "integer class ids, not torch.float32"),
        (-1, None, r"sample\(n=-1\): n must be a whole number >= 0"),
        (-1, 0, r"sample\(n=-1\)"),
        (2.5, None, r"sample\(n=2.5\)"),
    ],
)
def test_sample_refuses_bad_arguments(name, n, y, message):
    model = _model(name)
    if y is not None and not model.generates_by_class:  # m1: a class is refused as such
        message = "its samples have no class"
    with pytest.raises(UserError, match=message):
        model.sample(n, y=y)


def test_sample_accepts_numpy_and_zero_rows(name):
    model = _model(name)
    assert model.sample(np.int64(3)).shape == (3, D) and model.sample(0).shape == (0, D)
    if model.generates_by_class:
        assert model.sample(np.int64(3), y=np.int64(2)).shape == (3, D)
        assert model.sample(0, y=1).shape == (0, D)


# -- empty inputs ----------------------------------------------------------------------------


def test_classify_on_no_rows_gives_an_empty_probability_table(name):
    if not _model(name).can_classify:
        with pytest.raises(UserError, match="cannot classify"):
            _model(name).classify(torch.zeros(0, D))
        return
    probs = _model(name).classify(torch.zeros(0, D))
    assert probs.shape == (0, K)
    with pytest.raises(UserError, match=r"x has shape \(0, 5\)"):
        _model(name).classify(torch.zeros(0, D - 1))  # the shape is still checked


def test_log_loss_and_mean_elbo_on_no_rows_are_nan():
    assert math.isnan(log_loss(torch.zeros(0, K), torch.zeros(0, dtype=torch.long)))
    assert math.isnan(mean_elbo(_model(), torch.zeros(0, D)))


def _split(test_rows, validation_size, hidden_classes=()):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(K), 20)
    x = (rng.random((len(y), D)) < 0.3).astype(np.float32)
    dataset = Dataset("toy", x, y, x[:test_rows], y[:test_rows], ["a", "b", "c"])
    return semi_supervised_split(
        dataset, validation_size=validation_size, hidden_classes=hidden_classes, seed=0
    )


@pytest.mark.parametrize("report", [classification_report, elbo_report])
def test_reports_without_validation_or_test_rows(report):
    values = report(_model(), _split(test_rows=0, validation_size=0))
    assert all(math.isnan(v) for v in values.values()), values
    only_test = report(_model(), _split(test_rows=9, validation_size=0))
    assert math.isfinite(only_test["elbo"])  # validation ELBO falls back to the test rows


@pytest.mark.parametrize("hidden", [(), (2,)])  # identity mapping / majority + Hungarian
def test_clustering_report_without_validation_or_test_rows(hidden):
    report = clustering_report(_model(), _split(0, 0, hidden_classes=hidden))
    assert math.isnan(report["test_accuracy"]) and math.isnan(report["val_accuracy"])
    assert report["test_accuracy_visible"] is None and report["test_accuracy_hidden"] is None
    nan_keys = ["test_log_loss"] if not hidden else ["test_accuracy_hungarian"]
    assert all(math.isnan(report[key]) for key in nan_keys)
