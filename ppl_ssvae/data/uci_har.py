"""UCI-HAR (Human Activity Recognition Using Smartphones) from its published text files.

The archive unpacks to ``UCI HAR Dataset/`` holding ``activity_labels.txt``,
``{train,test}/y_{split}.txt`` (activity ids 1..6, one per line) and nine raw inertial
signals per split in ``{split}/Inertial Signals/<channel>_{split}.txt``: one window per
row, 128 whitespace-separated floats (2.56 s at 50 Hz). We read the raw signals, not the
561 hand-made features, because the paper's RNN variant (Berkhahn et al., App. A.3,
Table 15) consumes a 128-step look-back window.

Nothing is downloaded: users who have the files point ``data_dir`` at them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DataNotFoundError, UserError
from .dataset import Dataset

DATA_ENV = "PPL_SSVAE_DATA"  # same variable as datasets.DATA_ENV

NAME = "uci-har"
ROOT_NAME = "UCI HAR Dataset"
SEQUENCE_LENGTH = 128
CHANNELS = (
    "body_acc_x", "body_acc_y", "body_acc_z",
    "body_gyro_x", "body_gyro_y", "body_gyro_z",
    "total_acc_x", "total_acc_y", "total_acc_z",
)  # fmt: skip
HOW_TO_GET = (
    "download 'UCI HAR Dataset.zip' from the UCI Machine Learning Repository "
    "(https://archive.ics.uci.edu/dataset/240), unzip it and pass --data-dir "
    f"(the 'UCI HAR Dataset' folder or its parent) or put it in ${DATA_ENV}/uci-har"
)


def _candidates(data_dir: str | Path | None) -> list[Path]:
    # Both the unzipped folder and the folder it was unzipped into are accepted, since
    # users point at either.
    bases = []
    if data_dir is not None:
        bases.append(Path(data_dir))
    if os.environ.get(DATA_ENV):
        bases.append(Path(os.environ[DATA_ENV]) / NAME)
    candidates = []
    for base in bases:
        candidates += [base, base / ROOT_NAME]
    return candidates


def _find_root(data_dir: str | Path | None) -> Path:
    searched = _candidates(data_dir)
    for directory in searched:
        if (directory / "activity_labels.txt").is_file():
            return directory
    where = ", ".join(str(p) for p in searched) or f"(no --data-dir given and ${DATA_ENV} unset)"
    raise DataNotFoundError(f"{NAME}: activity_labels.txt not found in {where}; {HOW_TO_GET}")


def _read_rows(path: Path, width: int | None) -> np.ndarray:
    """Whitespace-separated floats, one row per non-empty line, every row ``width`` long."""
    if not path.is_file():
        raise DataNotFoundError(f"{NAME}: missing {path}; {HOW_TO_GET}")
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    for number, row in enumerate(rows, start=1):
        if width is not None and len(row) != width:
            raise DataNotFoundError(
                f"{NAME}: {path} row {number} has {len(row)} values, expected {width}; "
                f"the file is corrupt, replace it ({HOW_TO_GET})"
            )
    try:
        return np.array(rows, dtype=np.float64).reshape(len(rows), -1)
    except ValueError as e:
        raise DataNotFoundError(
            f"{NAME}: {path} holds non-numeric values; the file is corrupt, replace it "
            f"({HOW_TO_GET})"
        ) from e


def _read_activity_labels(root: Path) -> list[str]:
    path = root / "activity_labels.txt"
    pairs = [line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip()]
    expected = [str(i) for i in range(1, len(pairs) + 1)]
    if not pairs or any(len(p) != 2 for p in pairs) or [p[0] for p in pairs] != expected:
        raise DataNotFoundError(
            f"{NAME}: {path} should list '<id> <NAME>' with ids 1..K in order; "
            f"the file is corrupt, replace it ({HOW_TO_GET})"
        )
    return [name.strip() for _, name in pairs]


def _read_split(
    root: Path, split: str, channels: Sequence[str], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    label_path = root / split / f"y_{split}.txt"
    labels = _read_rows(label_path, width=1)[:, 0]
    if labels.size and (
        np.any(labels != np.round(labels)) or labels.min() < 1 or labels.max() > num_classes
    ):
        raise DataNotFoundError(
            f"{NAME}: {label_path} has labels outside 1..{num_classes}; replace the file "
            f"({HOW_TO_GET})"
        )
    signals = []
    for channel in channels:
        path = root / split / "Inertial Signals" / f"{channel}_{split}.txt"
        rows = _read_rows(path, width=SEQUENCE_LENGTH)
        if len(rows) != len(labels):
            raise DataNotFoundError(
                f"{NAME}: {path} has {len(rows)} rows but {label_path} has {len(labels)} "
                f"labels; the files are corrupt or mixed up, replace them ({HOW_TO_GET})"
            )
        signals.append(rows)
    # (N, T, C): time-major so a flattened row reshapes back with x.reshape(N, T, C).
    x = np.stack(signals, axis=-1)
    return x, labels.astype(np.int64) - 1


def load_uci_har(
    data_dir: str | Path | None = None,
    *,
    channels: Sequence[str] = CHANNELS,
    standardize: bool = True,
) -> Dataset:
    """UCI-HAR raw inertial windows as flattened ``(T=128, C)`` time-major sequences.

    Looks in ``data_dir`` (the ``UCI HAR Dataset`` folder or its parent), then in
    ``$PPL_SSVAE_DATA/uci-har``. Rows of ``x_train`` / ``x_test`` have length ``128 * C``
    and ``x.reshape(N, 128, C)[:, t, c]`` is channel ``channels[c]`` at step ``t``.
    Labels are the activity ids shifted to 0-based; class names come from
    ``activity_labels.txt``.

    The paper does not say how it scaled the signals. The nine channels differ in scale
    (gyroscope rad/s vs. accelerations in g, ``total_acc_x`` centred near 1 g), and a
    Gaussian likelihood with one shared variance would let the largest channel dominate,
    so by default each channel is standardised with the mean and standard deviation of
    the *training* windows (all steps pooled); the statistics are kept in
    ``extra["channel_mean"]`` / ``extra["channel_std"]`` to map samples back.

    Args:
        data_dir: directory holding the published files.
        channels: which inertial signals to stack, in order. Table 15 of the paper has
            six input features without naming them; pass e.g. the ``body_acc_*`` and
            ``body_gyro_*`` channels to get six.
        standardize: per-channel standardisation with training statistics.

    Raises:
        DataNotFoundError: a file is missing, a row does not have 128 values, the label
            and signal files disagree in length, or a label is outside 1..K.
    """
    channels = list(channels)
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown or not channels:
        given = unknown or "(none given)"
        raise UserError(f"{NAME}: unknown channels {given}; choose from {', '.join(CHANNELS)}")
    root = _find_root(data_dir)
    class_names = _read_activity_labels(root)
    x_train, y_train = _read_split(root, "train", channels, len(class_names))
    x_test, y_test = _read_split(root, "test", channels, len(class_names))

    extra: dict = {
        "sequence_channels": len(channels),
        "sequence_length": SEQUENCE_LENGTH,
        "channel_names": channels,
        "standardized": standardize,
    }
    if standardize and len(x_train):
        mean, std = x_train.mean(axis=(0, 1)), x_train.std(axis=(0, 1))
        std[std == 0] = 1.0  # a constant channel would divide by zero; leave its scale alone
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std
        extra["channel_mean"] = mean.astype(np.float32).tolist()
        extra["channel_std"] = std.astype(np.float32).tolist()

    return Dataset(
        name=NAME,
        x_train=x_train.reshape(len(x_train), -1).astype(np.float32),
        y_train=y_train,
        x_test=x_test.reshape(len(x_test), -1).astype(np.float32),
        y_test=y_test,
        class_names=class_names,
        image_shape=None,
        support="real",
        # Validation rows come out of the 7352 training windows (about 14%); the cap keeps
        # tiny hand-made trees usable.
        default_validation_size=min(1000, len(x_train) // 5),
        source=str(root),
        extra=extra,
    )
