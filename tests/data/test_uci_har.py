"""UCI-HAR loader against a tiny hand-written tree in the published text layout."""

from pathlib import Path

import numpy as np
import pytest

from ppl_ssvae.data import load
from ppl_ssvae.data.uci_har import CHANNELS, ROOT_NAME, load_uci_har
from ppl_ssvae.errors import DataNotFoundError, UserError

ACTIVITIES = ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING"]
SIZES = {"train": 6, "test": 3}


def _signal(split: str, n: int) -> np.ndarray:
    """(N, T, C) values that encode (split, row, step, channel), so layout errors show."""
    offset = 0.5 if split == "test" else 0.0
    row, step, channel = np.meshgrid(np.arange(n), np.arange(128), np.arange(9), indexing="ij")
    return channel * 1000.0 + step + row * 0.01 + offset


def _write_har(parent: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``parent/UCI HAR Dataset`` and return the raw (x, 1-based y) per split."""
    rng = np.random.default_rng(seed)
    root = parent / ROOT_NAME
    root.mkdir(parents=True)
    (root / "activity_labels.txt").write_text(
        "".join(f"{i} {name}\n" for i, name in enumerate(ACTIVITIES, start=1))
    )
    written = {}
    for split, n in SIZES.items():
        signals = root / split / "Inertial Signals"
        signals.mkdir(parents=True)
        y = rng.integers(1, 7, size=n)
        (root / split / f"y_{split}.txt").write_text("".join(f"{v}\n" for v in y))
        x = _signal(split, n)
        for c, channel in enumerate(CHANNELS):
            # The published files right-align values with leading spaces; mimic that.
            lines = ["  " + " ".join(f"{v:.7e}" for v in row) for row in x[:, :, c]]
            (signals / f"{channel}_{split}.txt").write_text("\n".join(lines) + "\n")
        written[split] = (x, y)
    return written


@pytest.mark.parametrize("point_at", ["root", "parent"])
def test_loads_published_layout_time_major(tmp_path, point_at):
    written = _write_har(tmp_path)
    data_dir = tmp_path / ROOT_NAME if point_at == "root" else tmp_path
    ds = load_uci_har(data_dir, standardize=False)

    assert ds.x_train.shape == (6, 128 * 9) and ds.x_test.shape == (3, 128 * 9)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    for split, x in (("train", ds.x_train), ("test", ds.x_test)):
        raw, y = written[split]
        # Flattened rows reshape back to (N, T, C) with channels in CHANNELS order.
        np.testing.assert_allclose(x.reshape(len(x), 128, 9), raw, rtol=1e-6)
        np.testing.assert_array_equal(getattr(ds, f"y_{split}"), y - 1)
    assert ds.class_names == ACTIVITIES and ds.num_classes == 6
    assert ds.support == "real" and ds.image_shape is None
    assert ds.extra["sequence_channels"] == 9 and ds.extra["sequence_length"] == 128
    assert ds.extra["channel_names"] == list(CHANNELS)
    assert 0 < ds.default_validation_size < len(ds.x_train)


def test_registered_by_name_and_found_through_env(tmp_path, monkeypatch):
    _write_har(tmp_path / "uci-har")
    monkeypatch.setenv("PPL_SSVAE_DATA", str(tmp_path))
    ds = load("uci-har")
    assert ds.name == "uci-har" and ds.x_train.shape == (6, 1152)
    assert ds.source == str(tmp_path / "uci-har" / ROOT_NAME)


def test_standardises_each_channel_with_training_statistics(tmp_path):
    written = _write_har(tmp_path)
    ds = load_uci_har(tmp_path)
    train = ds.x_train.reshape(-1, 128, 9)
    np.testing.assert_allclose(train.mean(axis=(0, 1)), 0, atol=1e-4)
    np.testing.assert_allclose(train.std(axis=(0, 1)), 1, atol=1e-4)
    mean, std = np.array(ds.extra["channel_mean"]), np.array(ds.extra["channel_std"])
    # The test split uses the training statistics, not its own.
    np.testing.assert_allclose(ds.x_test.reshape(-1, 128, 9) * std + mean, written["test"][0],
                               rtol=1e-5, atol=1e-3)  # fmt: skip


def test_channel_subset_keeps_requested_order(tmp_path):
    written = _write_har(tmp_path)
    picked = ["body_gyro_z", "body_acc_x"]
    ds = load_uci_har(tmp_path, channels=picked, standardize=False)
    assert ds.extra["sequence_channels"] == 2 and ds.extra["channel_names"] == picked
    expected = written["train"][0][:, :, [CHANNELS.index(c) for c in picked]]
    np.testing.assert_allclose(ds.x_train.reshape(6, 128, 2), expected, rtol=1e-6)
    with pytest.raises(UserError, match="unknown channels"):
        load_uci_har(tmp_path, channels=["gyro_w"])


def test_nothing_there_names_the_places_searched(tmp_path, monkeypatch):
    monkeypatch.delenv("PPL_SSVAE_DATA", raising=False)
    with pytest.raises(DataNotFoundError, match="activity_labels.txt not found") as info:
        load_uci_har(tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "UCI Machine Learning Repository" in message
    assert "\n" not in message


def test_missing_signal_file_names_it(tmp_path):
    _write_har(tmp_path)
    path = tmp_path / ROOT_NAME / "test" / "Inertial Signals" / "total_acc_y_test.txt"
    path.unlink()
    with pytest.raises(DataNotFoundError, match="missing") as info:
        load_uci_har(tmp_path)
    assert str(path) in str(info.value)


def test_short_row_is_reported_with_its_file_and_line(tmp_path):
    _write_har(tmp_path)
    path = tmp_path / ROOT_NAME / "train" / "Inertial Signals" / "body_gyro_x_train.txt"
    lines = path.read_text().splitlines()
    lines[3] = " ".join(lines[3].split()[:-1])  # 127 values
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataNotFoundError, match="row 4 has 127 values, expected 128") as info:
        load_uci_har(tmp_path)
    assert str(path) in str(info.value)


def test_non_numeric_value_is_reported(tmp_path):
    _write_har(tmp_path)
    path = tmp_path / ROOT_NAME / "train" / "Inertial Signals" / "body_acc_z_train.txt"
    lines = path.read_text().splitlines()
    lines[0] = "n/a " + " ".join(lines[0].split()[1:])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataNotFoundError, match="non-numeric") as info:
        load_uci_har(tmp_path)
    assert str(path) in str(info.value)


def test_label_count_mismatch_is_reported(tmp_path):
    _write_har(tmp_path)
    labels = tmp_path / ROOT_NAME / "test" / "y_test.txt"
    labels.write_text(labels.read_text() + "2\n")
    with pytest.raises(DataNotFoundError, match="has 3 rows but .* has 4 labels") as info:
        load_uci_har(tmp_path)
    assert str(labels) in str(info.value)


@pytest.mark.parametrize("bad", ["0", "7", "2.5"])
def test_label_out_of_range_is_reported(tmp_path, bad):
    _write_har(tmp_path)
    labels = tmp_path / ROOT_NAME / "train" / "y_train.txt"
    labels.write_text(bad + "\n" + "\n".join(labels.read_text().split()[1:]) + "\n")
    with pytest.raises(DataNotFoundError, match=r"labels outside 1\.\.6") as info:
        load_uci_har(tmp_path)
    assert str(labels) in str(info.value)


def test_corrupt_activity_labels_are_reported(tmp_path):
    _write_har(tmp_path)
    path = tmp_path / ROOT_NAME / "activity_labels.txt"
    path.write_text("1 WALKING\n3 SITTING\n")
    with pytest.raises(DataNotFoundError, match="ids 1..K in order") as info:
        load_uci_har(tmp_path)
    assert str(path) in str(info.value)
