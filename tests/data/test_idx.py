import gzip

import numpy as np
import pytest

from ppl_ssvae.data import load, read_idx, write_idx
from ppl_ssvae.data.datasets import IDX_FILES
from ppl_ssvae.errors import DataNotFoundError


def _write_fake_mnist(directory, n_train=30, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for key, stem in IDX_FILES.items():
        write_idx(directory / (stem + (".gz" if gz else "")), arrays[key])
    return arrays


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_idx_round_trip(tmp_path, dtype):
    a = (np.arange(24).reshape(2, 3, 4) * 3).astype(dtype)
    write_idx(tmp_path / "a.idx.gz", a)
    assert np.array_equal(read_idx(tmp_path / "a.idx.gz"), a)


@pytest.mark.parametrize("dataset", ["fashion-mnist", "mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_datasets_load_from_data_dir(tmp_path, dataset, gz):
    arrays = _write_fake_mnist(tmp_path, gz=gz)
    ds = load(dataset, tmp_path)
    assert ds.x_train.shape == (30, 784) and ds.image_shape == (28, 28)
    assert np.allclose(ds.x_train[0] * 255, arrays["x_train"][0].reshape(-1))
    assert np.array_equal(ds.y_test, arrays["y_test"])


def test_env_var_is_searched(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    _write_fake_mnist(tmp_path / "mnist")
    monkeypatch.setenv("PPL_SSVAE_DATA", str(tmp_path))
    assert load("mnist").x_train.shape == (30, 784)


def test_missing_files_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("PPL_SSVAE_DATA", raising=False)
    with pytest.raises(DataNotFoundError, match=r"lacks .*train-images.*--data-dir"):
        load("mnist", tmp_path)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load("mnist", tmp_path / "nope")
    with pytest.raises(DataNotFoundError, match="not found in"):
        load("mnist")


def test_corrupt_files_are_reported(tmp_path):
    _write_fake_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))  # truncated payload
    with pytest.raises(DataNotFoundError, match="corrupt"):
        load("fashion-mnist", tmp_path)
    path.write_bytes(b"not a gzip file at all")
    with pytest.raises(DataNotFoundError, match="corrupt"):
        load("fashion-mnist", tmp_path)
    path.write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(DataNotFoundError, match="bad magic"):
        load("fashion-mnist", tmp_path)


def test_mismatched_image_and_label_counts(tmp_path):
    _write_fake_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(DataNotFoundError, match="do not match"):
        load("fashion-mnist", tmp_path)


def test_real_fashion_mnist_if_installed():
    from ppl_ssvae.data.datasets import DEBIAN_FASHION_MNIST

    if not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    ds = load("fashion-mnist")
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10


def _corrupt_deflate(payload):
    """gzip bytes whose first deflate block has the invalid block type 3 (zlib.error)."""
    data = bytearray(gzip.compress(payload))
    data[10] = 0xFF  # gzip.compress writes a 10-byte header, no file name
    return bytes(data)


def _bad_crc(payload):
    data = bytearray(gzip.compress(payload))
    data[-8] ^= 0xFF  # CRC32 of the trailer: gzip.BadGzipFile
    return bytes(data)


@pytest.mark.parametrize("corrupt", [_corrupt_deflate, _bad_crc])
def test_corrupt_gzip_streams_are_reported(tmp_path, corrupt):
    _write_fake_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(corrupt(gzip.decompress(path.read_bytes())))
    with pytest.raises(DataNotFoundError, match=r"cannot read .*t10k-images.*corrupt, replace"):
        read_idx(path)
    with pytest.raises(DataNotFoundError, match="corrupt"):
        load("mnist", tmp_path)


def test_no_training_images_is_refused_and_no_test_images_loads(tmp_path):
    _write_fake_mnist(tmp_path, n_train=0)
    with pytest.raises(DataNotFoundError, match="training image file holds 0 images"):
        load("fashion-mnist", tmp_path)
    _write_fake_mnist(tmp_path, n_test=0)
    ds = load("fashion-mnist", tmp_path)
    assert ds.x_test.shape == (0, 784) and ds.y_test.shape == (0,)


def test_test_images_of_another_size_are_refused_at_load_time(tmp_path):
    _write_fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((10, 32, 32), np.uint8))
    with pytest.raises(DataNotFoundError, match="test images are 32x32 but training images 28x28"):
        load("fashion-mnist", tmp_path)
