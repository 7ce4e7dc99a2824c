"""The synthetic sequence dataset: deterministic, balanced, learnable from dynamics only."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ppl_ssvae.data import load
from ppl_ssvae.data.sequences import CHANNEL_NAMES, CLASS_NAMES, SEQUENCE_LENGTH, load_sequences

T, C, K = SEQUENCE_LENGTH, len(CHANNEL_NAMES), len(CLASS_NAMES)


@pytest.fixture(scope="module")
def ds():
    return load_sequences()


def _spectra(x: np.ndarray) -> np.ndarray:
    """Per-channel FFT magnitudes: blind to the phase relation between channels."""
    return np.abs(np.fft.rfft(x.reshape(len(x), T, C), axis=1)).reshape(len(x), -1)


def _spectra_and_covariance(x: np.ndarray) -> np.ndarray:
    s = x.reshape(len(x), T, C)
    s = s - s.mean(axis=1, keepdims=True)
    cov = np.einsum("ntc,ntd->ncd", s, s) / T
    upper = np.triu_indices(C, 1)
    return np.hstack([_spectra(x), cov[:, upper[0], upper[1]]])


def _accuracy(features, ds, classes=None) -> float:
    keep_tr = np.isin(ds.y_train, classes) if classes else slice(None)
    keep_te = np.isin(ds.y_test, classes) if classes else slice(None)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(features(ds.x_train[keep_tr]), ds.y_train[keep_tr])
    return clf.score(features(ds.x_test[keep_te]), ds.y_test[keep_te])


def test_shapes_layout_and_metadata(ds):
    assert ds.x_train.shape == (3000, T * C) and ds.x_test.shape == (1000, T * C)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.support == "real" and ds.class_names == CLASS_NAMES
    assert ds.extra == {
        "sequence_channels": C,
        "sequence_length": T,
        "channel_names": CHANNEL_NAMES,
    }
    assert 0 < ds.default_validation_size < len(ds.x_train)
    assert np.isfinite(ds.x_train).all() and 0.5 < ds.x_train.std() < 2  # roughly unit scale


def test_classes_are_balanced_and_shuffled(ds):
    assert np.bincount(ds.y_train, minlength=K).tolist() == [600] * K
    assert np.bincount(ds.y_test, minlength=K).tolist() == [200] * K
    assert len(set(ds.y_train[:20].tolist())) > 1  # not sorted by class


def test_deterministic_and_registered(ds):
    again = load("sequences")
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    np.testing.assert_array_equal(again.y_test, ds.y_test)
    assert not np.array_equal(load_sequences(seed=1).x_train, ds.x_train)


def test_class_means_do_not_separate_the_classes(ds):
    # Random phases put every class mean near zero at every step ...
    means = np.stack([ds.x_train[ds.y_train == k].mean(axis=0) for k in range(K)])
    assert np.abs(means).max() < 0.25 * ds.x_train.std()
    # ... so a linear classifier on the raw values stays at chance.
    assert _accuracy(lambda x: x, ds) < 1 / K + 0.08


def test_dynamics_make_the_classes_learnable(ds):
    assert _accuracy(_spectra_and_covariance, ds) > 0.9
    # The first two classes differ only in the phase relation between channels: per-channel
    # spectra cannot tell them apart, cross-channel covariance can.
    assert _accuracy(_spectra, ds, classes=[0, 1]) < 0.65
    assert _accuracy(_spectra_and_covariance, ds, classes=[0, 1]) > 0.9
