import gzip
import struct

import numpy as np
import pytest
import torch

from ppl_ssvae.data import load
from ppl_ssvae.data.shapes import FactorImages
from ppl_ssvae.data.smallnorb import (
    SMALLNORB_STEMS,
    load_smallnorb,
    read_norb_matrix,
    write_norb_matrix,
)
from ppl_ssvae.errors import DataNotFoundError
from ppl_ssvae.evaluation.metrics import beta_vae_score


def _fake_split(n, rng, size=8):
    """n random rows in the published value ranges (azimuth stored as 0, 2, ..., 34)."""
    dat = rng.integers(0, 256, (n, 2, size, size), dtype=np.uint8)
    cat = rng.integers(0, 5, n).astype(np.int32)
    info = np.column_stack(
        [
            rng.integers(0, 10, n),
            rng.integers(0, 9, n),
            2 * rng.integers(0, 18, n),
            rng.integers(0, 6, n),
        ]
    ).astype(np.int32)
    return dat, cat, info


def _write_split(directory, split, dat, cat, info, gz=True):
    suffix = ".gz" if gz else ""
    for part, array in [("dat", dat), ("cat", cat), ("info", info)]:
        write_norb_matrix(directory / f"{SMALLNORB_STEMS[split]}-{part}.mat{suffix}", array)


def _write_fake_norb(directory, n_train=12, n_test=6, gz=True, size=8):
    rng = np.random.default_rng(0)
    arrays = {"train": _fake_split(n_train, rng, size), "test": _fake_split(n_test, rng, size)}
    for split, (dat, cat, info) in arrays.items():
        _write_split(directory, split, dat, cat, info, gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5),
        np.arange(7, dtype=np.int32) - 3,
        np.arange(12, dtype=np.int32).reshape(3, 4),
        np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3),
    ],
)
def test_norb_matrix_round_trip(tmp_path, array, gz):
    path = tmp_path / ("a.mat" + (".gz" if gz else ""))
    write_norb_matrix(path, array)
    back = read_norb_matrix(path)
    assert back.dtype == array.dtype and np.array_equal(back, array)


def test_header_follows_the_published_layout(tmp_path):
    # written by hand: int32 magic, ndim, three dims even for a vector, little-endian data
    path = tmp_path / "cat.mat"
    path.write_bytes(struct.pack("<5i", 0x1E3D4C54, 1, 3, 1, 1) + struct.pack("<3i", 4, 0, 2))
    assert read_norb_matrix(path).tolist() == [4, 0, 2]
    write_norb_matrix(tmp_path / "w.mat", np.array([4, 0, 2], np.int32))
    assert (tmp_path / "w.mat").read_bytes() == path.read_bytes()
    dat = np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3)
    raw = struct.pack("<6i", 0x1E3D4C55, 4, *dat.shape) + dat.tobytes()
    (tmp_path / "dat.mat.gz").write_bytes(gzip.compress(raw))
    assert np.array_equal(read_norb_matrix(tmp_path / "dat.mat.gz"), dat)


@pytest.mark.parametrize("gz", [True, False])
def test_load_from_data_dir(tmp_path, gz):
    arrays = _write_fake_norb(tmp_path, gz=gz)
    ds = load("smallnorb", tmp_path)
    dat, cat, info = arrays["train"]
    assert ds.x_train.shape == (12, 2 * 8 * 8) and ds.x_test.shape == (6, 128)
    assert ds.image_shape == (2, 8, 8) and ds.x_train.dtype == np.float32
    assert np.allclose(ds.x_train * 255, dat.reshape(12, -1), atol=1e-3)
    assert np.array_equal(ds.y_train, cat) and ds.class_names[0] == "animal"
    factors = ds.extra["factors_train"]
    assert ds.extra["factor_names"] == ("category", "instance", "elevation", "azimuth", "lighting")
    assert np.array_equal(factors[:, 0], cat) and np.array_equal(factors[:, 1], info[:, 0])
    assert np.array_equal(factors[:, 3], info[:, 2] // 2)  # azimuth id 0..17


def test_downsampling_and_mono(tmp_path):
    arrays = _write_fake_norb(tmp_path)
    ds = load_smallnorb(tmp_path, image_size=4, stereo=False)
    assert ds.image_shape == (4, 4) and ds.x_train.shape == (12, 16)
    left = arrays["train"][0][:, 0].astype(np.float64) / 255
    blocks = left.reshape(12, 4, 2, 4, 2).mean((2, 4))  # 2x2 area average
    assert np.allclose(ds.x_train, blocks.reshape(12, -1), atol=1e-6)


def test_env_var_is_searched(tmp_path, monkeypatch):
    (tmp_path / "smallnorb").mkdir()
    _write_fake_norb(tmp_path / "smallnorb")
    monkeypatch.setenv("PPL_SSVAE_DATA", str(tmp_path))
    assert load_smallnorb().x_train.shape == (12, 128)


def test_missing_files_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("PPL_SSVAE_DATA", raising=False)
    with pytest.raises(DataNotFoundError, match=r"lacks the train-dat.*cs\.nyu\.edu.*--data-dir"):
        load_smallnorb(tmp_path)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_smallnorb(tmp_path / "nope")
    with pytest.raises(DataNotFoundError, match=r"not found in .*PPL_SSVAE_DATA unset"):
        load_smallnorb()
    monkeypatch.setenv("PPL_SSVAE_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError, match=f"not found in {tmp_path}/smallnorb, {tmp_path};"):
        load_smallnorb()


def test_corrupt_files_are_reported(tmp_path):
    _write_fake_norb(tmp_path)
    path = tmp_path / f"{SMALLNORB_STEMS['train']}-dat.mat.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(DataNotFoundError, match="corrupt: header says shape"):
        load_smallnorb(tmp_path)
    path.write_bytes(gzip.compress(struct.pack("<i", 0x0803) + raw[4:]))  # an IDX magic
    with pytest.raises(DataNotFoundError, match="bad magic number"):
        load_smallnorb(tmp_path)
    path.write_bytes(gzip.compress(raw[:10]))
    with pytest.raises(DataNotFoundError, match="incomplete header"):
        load_smallnorb(tmp_path)
    path.write_bytes(b"not gzip")
    with pytest.raises(DataNotFoundError, match="corrupt, replace it"):
        load_smallnorb(tmp_path)


def test_mismatched_or_out_of_range_files(tmp_path):
    arrays = _write_fake_norb(tmp_path)
    dat, cat, info = arrays["test"]
    _write_split(tmp_path, "test", dat, cat[:-1], info)
    with pytest.raises(DataNotFoundError, match="mixed up"):
        load_smallnorb(tmp_path)
    info = info.copy()
    info[0, 2] = 3  # azimuths are even
    _write_split(tmp_path, "test", dat, cat, info)
    with pytest.raises(DataNotFoundError, match="azimuth values outside"):
        load_smallnorb(tmp_path)


def test_beta_vae_score_on_smallnorb_files(tmp_path):
    # a full grid of the four scored factors with two toy instances each; the first
    # pixels hold the factor values, so reading them back is an encoder that copies
    # the true factors, and pairs must come from matching existing images
    grid = np.stack(np.unravel_index(np.arange(5 * 9 * 18 * 6), (5, 9, 18, 6)), 1)
    grid = np.concatenate([grid, grid])
    instance = np.repeat([4, 6], len(grid) // 2)
    rng = np.random.default_rng(0)
    dat = rng.integers(0, 256, (len(grid), 2, 4, 4), dtype=np.uint8)
    dat[:, 0, 0, :4] = grid
    info = np.column_stack([instance, grid[:, 1], 2 * grid[:, 2], grid[:, 3]]).astype(np.int32)
    for split in ("train", "test"):
        _write_split(tmp_path, split, dat, grid[:, 0].astype(np.int32), info, gz=False)
    ds = load_smallnorb(tmp_path)
    data = FactorImages.from_dataset(ds)
    assert data.factor_names == ("category", "elevation", "azimuth", "lighting")

    def oracle(x):
        return x[:, :4] * 255 / torch.tensor([4.0, 8.0, 17.0, 5.0])

    generator = torch.Generator().manual_seed(0)

    def noise(x):
        return torch.randn(len(x), 4, generator=generator)

    kwargs = {"batch_size": 16, "num_train": 300, "num_test": 300, "seed": 0}
    assert beta_vae_score(oracle, data, **kwargs)["beta_vae_score"] > 0.95
    assert abs(beta_vae_score(noise, data, **kwargs)["beta_vae_score"] - 0.25) < 0.1


def test_corrupt_deflate_stream_is_reported(tmp_path):
    path = tmp_path / "m.mat.gz"
    write_norb_matrix(path, np.arange(12, dtype=np.int32))
    data = bytearray(gzip.compress(gzip.decompress(path.read_bytes())))
    data[10] = 0xFF  # invalid deflate block type: zlib.error, not an OSError
    path.write_bytes(bytes(data))
    with pytest.raises(DataNotFoundError, match="corrupt, replace it"):
        read_norb_matrix(path)
