"""Small-NORB (LeCun et al., 2004) from its published binary-matrix files, for users who have them.

The π-VAE paper (Berkhahn et al., sec. 4, App. A.4) measures disentanglement with the
betaVAE score on Small-NORB: stereo pairs of 96x96 grey images of 50 toys, stacked into
one (96, 96, 2) input rescaled to [0, 1], with four generative factors (category,
elevation, azimuth, lighting). Nothing here downloads: the six files
``smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat`` and
``smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat`` (optionally ``.gz``) are
looked up in ``data_dir``, then ``$PPL_SSVAE_DATA/smallnorb``, then ``$PPL_SSVAE_DATA``.

File format (cs.nyu.edu/~ylclab/data/norb-v1.0-small/): little-endian int32 magic
number (element type), int32 ``ndim``, ``max(3, ndim)`` int32 dimensions (unused ones
are 1), then the elements in C order. ``-dat`` is (N, 2, 96, 96) uint8, ``-cat`` is (N,)
int32 categories, ``-info`` is (N, 4) int32: instance (0-9), elevation (0-8), azimuth
(0, 2, ..., 34; times 10 degrees) and lighting (0-5).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataNotFoundError, UserError
from .dataset import DATA_ENV, Dataset

# magic number -> element type (little-endian on disk)
NORB_DTYPES = {
    0x1E3D4C51: np.dtype("<f4"),
    0x1E3D4C53: np.dtype("<f8"),
    0x1E3D4C54: np.dtype("<i4"),
    0x1E3D4C55: np.dtype(np.uint8),
    0x1E3D4C56: np.dtype("<i2"),
}
SMALLNORB_STEMS = {
    "train": "smallnorb-5x46789x9x18x6x2x96x96-training",
    "test": "smallnorb-5x01235x9x18x6x2x96x96-testing",
}
SMALLNORB_CLASSES = ["animal", "human", "airplane", "truck", "car"]
SMALLNORB_FACTORS = ("category", "instance", "elevation", "azimuth", "lighting")
SMALLNORB_FACTOR_SIZES = (5, 10, 9, 18, 6)
# The four factors the paper scores (App. A.4); the toy instance is a nuisance factor.
SMALLNORB_METRIC_FACTORS = ("category", "elevation", "azimuth", "lighting")
HOW_TO_GET = (
    "Small-NORB cannot be downloaded here: get the six smallnorb-*-{training,testing}-"
    "{dat,cat,info}.mat[.gz] files from https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/ "
    "and pass --data-dir (or put them in $PPL_SSVAE_DATA/smallnorb)"
)


def read_norb_matrix(path: str | Path) -> np.ndarray:
    """Read one NORB binary-matrix file (``.gz`` or raw) into a numpy array.

    Raises:
        DataNotFoundError: if the file is missing, truncated or not a NORB matrix.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"Small-NORB file not found: {path}; {HOW_TO_GET}")
    opener = gzip.open if path.suffix == ".gz" else open
    # gzip.BadGzipFile is an OSError; a corrupt deflate stream raises zlib.error.
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataNotFoundError(f"cannot read {path} ({e}); the file is corrupt, replace it") from e
    if len(raw) < 8:
        raise DataNotFoundError(f"{path} is truncated (incomplete header); replace it")
    magic, ndim = struct.unpack("<ii", raw[:8])
    if magic not in NORB_DTYPES:
        raise DataNotFoundError(
            f"{path} is not a NORB binary matrix (bad magic number {magic:#x}); replace it"
        )
    if not 0 <= ndim <= 16:
        raise DataNotFoundError(f"{path} is corrupt (ndim {ndim} in header); replace it")
    header = 8 + 4 * max(3, ndim)
    if len(raw) < header:
        raise DataNotFoundError(f"{path} is truncated (incomplete header); replace it")
    shape = struct.unpack(f"<{ndim}i", raw[8 : 8 + 4 * ndim])
    dtype = NORB_DTYPES[magic]
    expected = int(np.prod(shape)) * dtype.itemsize
    if min(shape, default=0) < 0 or len(raw) - header != expected:
        raise DataNotFoundError(
            f"{path} is corrupt: header says shape {shape} ({expected} bytes) "
            f"but {len(raw) - header} bytes follow; replace it"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def write_norb_matrix(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as a NORB binary matrix (gzipped if the name ends in ``.gz``)."""
    path = Path(path)
    codes = {v.newbyteorder("="): k for k, v in NORB_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise UserError(f"dtype {array.dtype} has no NORB magic number; use one of uint8, int32")
    magic = codes[native]
    dims = list(array.shape) + [1] * max(0, 3 - array.ndim)
    header = struct.pack(f"<ii{len(dims)}i", magic, array.ndim, *dims)
    payload = header + np.ascontiguousarray(array, dtype=NORB_DTYPES[magic]).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)


def _candidates(data_dir: str | Path | None) -> list[Path]:
    candidates = [Path(data_dir)] if data_dir is not None else []
    if os.environ.get(DATA_ENV):
        root = Path(os.environ[DATA_ENV])
        candidates += [root / "smallnorb", root]
    return candidates


def _find_files(directory: Path) -> dict[str, Path | None]:
    found: dict[str, Path | None] = {}
    for split, stem in SMALLNORB_STEMS.items():
        for part in ("dat", "cat", "info"):
            name = f"{stem}-{part}.mat"
            found[f"{split}-{part}"] = next(
                (directory / (name + s) for s in (".gz", "") if (directory / (name + s)).is_file()),
                None,
            )
    return found


def _downsample(images: np.ndarray, size: int | None, chunk: int = 1024) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, C, size, size) float32 in [0, 1] by area averaging."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = images.shape
    out_hw = (h, w) if size is None else (size, size)
    out = np.empty((n, c, *out_hw), dtype=np.float32)
    # chunks: the full training set is 1.8 GB as float32 at 96x96x2
    for start in range(0, n, chunk):
        block = torch.from_numpy(images[start : start + chunk].astype(np.float32) / 255.0)
        if size is not None and (size, size) != (h, w):
            block = F.interpolate(block, size=out_hw, mode="area")
        out[start : start + chunk] = block.numpy()
    return out


def _read_split(files: dict[str, Path | None], split: str) -> tuple[np.ndarray, ...]:
    dat = read_norb_matrix(files[f"{split}-dat"])
    cat = read_norb_matrix(files[f"{split}-cat"])
    info = read_norb_matrix(files[f"{split}-info"])
    n = len(dat)
    if dat.ndim != 4 or dat.shape[1] != 2 or cat.shape != (n,) or info.shape != (n, 4):
        raise DataNotFoundError(
            f"smallnorb: {split} files have shapes dat {dat.shape}, cat {cat.shape}, info "
            f"{info.shape}, expected (N, 2, H, W), (N,), (N, 4); the files are mixed up, replace them"
        )
    # azimuth is stored as 0, 2, ..., 34 (tens of degrees); make it an id 0..17
    factors = np.column_stack([cat, info[:, 0], info[:, 1], info[:, 2] // 2, info[:, 3]])
    bad = (factors < 0) | (factors >= np.array(SMALLNORB_FACTOR_SIZES))
    bad[:, 3] |= info[:, 2] % 2 == 1
    if bad.any():
        column = SMALLNORB_FACTORS[int(np.flatnonzero(bad.any(0))[0])]
        raise DataNotFoundError(
            f"smallnorb: {split} {column} values outside the published range; replace the files"
        )
    return dat, factors.astype(np.int64)


def load_smallnorb(
    data_dir: str | Path | None = None, *, image_size: int | None = None, stereo: bool = True
) -> Dataset:
    """Small-NORB's 24300 training and 24300 test stereo pairs, labelled by category.

    Args:
        data_dir: directory holding the six files; then ``$PPL_SSVAE_DATA/smallnorb``
            and ``$PPL_SSVAE_DATA`` are searched.
        image_size: side length after area-averaging (e.g. 32 or 64); ``None`` keeps
            the paper's 96x96 (App. A.4), which takes 1.8 GB per split as float32.
        stereo: keep both cameras as two channels, as the paper does; ``False`` keeps
            the left camera only.

    Returns:
        A :class:`~ppl_ssvae.data.datasets.Dataset` with rows flattened from
        ``image_shape`` = (2, H, W) (stereo, channels first) or (H, W), values in [0, 1],
        ``y`` = category, and in ``extra`` the ``factor_names``/``factor_sizes`` and
        ``factors_train``/``factors_test`` arrays (category, instance, elevation,
        azimuth id, lighting) and the ``metric_factors`` the paper scores;
        ``FactorImages.from_dataset(ds)`` gives the betaVAE score its image pairs.

    Raises:
        DataNotFoundError: files missing or corrupt (the message says where we looked).
    """
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise UserError(f"image_size must be a positive integer or None, got {image_size!r}")
    searched = _candidates(data_dir)
    for directory in searched:
        files = _find_files(directory)
        if all(files.values()):
            break
        if data_dir is not None and directory == Path(data_dir):
            if not directory.is_dir():
                raise DataNotFoundError(
                    f"smallnorb: data directory {directory} does not exist; {HOW_TO_GET}"
                )
            missing = [k for k, v in files.items() if v is None]
            raise DataNotFoundError(
                f"smallnorb: {directory} lacks the {', '.join(missing)} file(s); {HOW_TO_GET}"
            )
    else:
        where = ", ".join(str(p) for p in searched) or "(no directory given, $PPL_SSVAE_DATA unset)"
        raise DataNotFoundError(f"smallnorb: files not found in {where}; {HOW_TO_GET}")

    arrays = {}
    for split in ("train", "test"):
        dat, factors = _read_split(files, split)
        if not stereo:
            dat = dat[:, :1]
        images = _downsample(dat, image_size)
        arrays[split] = (images.reshape(len(images), -1), factors)
    c, h, w = images.shape[1:]
    return Dataset(
        name="smallnorb",
        x_train=arrays["train"][0],
        y_train=arrays["train"][1][:, 0].copy(),
        x_test=arrays["test"][0],
        y_test=arrays["test"][1][:, 0].copy(),
        class_names=list(SMALLNORB_CLASSES),
        image_shape=(c, h, w) if stereo else (h, w),
        support="unit",
        default_validation_size=len(arrays["train"][0]) // 10,
        source=str(directory),
        extra={
            "factor_names": SMALLNORB_FACTORS,
            "factor_sizes": SMALLNORB_FACTOR_SIZES,
            "factors_train": arrays["train"][1],
            "factors_test": arrays["test"][1],
            "metric_factors": SMALLNORB_METRIC_FACTORS,
        },
    )
