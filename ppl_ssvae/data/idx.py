"""Reader and writer for the IDX format used by MNIST and Fashion-MNIST (optionally gzipped)."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import DataNotFoundError, UserError
from ..memory import available_bytes, human_bytes

# IDX type codes (third byte of the magic number) -> numpy dtype (big-endian on disk).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


#: Deflate's largest compression ratio (about 1032:1): a gzip file cannot decompress to
#: more than this many bytes per byte, so a header claiming more is corrupt.
MAX_DEFLATE_RATIO = 1032
#: Bytes read at a time: the payload goes straight into its array, never whole into a buffer.
CHUNK = 1 << 24


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a numpy array.

    The header is read first and the payload streamed into an array of the size it
    states, so a file that decompresses to more (a gzip bomb) is refused after reading
    one byte past it, never decompressed whole.

    Raises:
        DataNotFoundError: if the file is missing, truncated, longer than its header says
            or not IDX.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"IDX file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    # gzip.BadGzipFile is an OSError; a corrupt deflate stream raises zlib.error.
    try:
        with opener(path, "rb") as f:
            dtype, shape = _read_header(f, path)
            payload = _read_payload(f, path, dtype, shape)
    except UserError:  # said already (DataNotFoundError is an OSError too)
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise DataNotFoundError(f"cannot read {path} ({e}); the file is corrupt, replace it") from e
    return payload.view(dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def _read_header(f: BinaryIO, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
        raise DataNotFoundError(f"{path} is not an IDX file (bad magic number); replace it")
    ndim = magic[3]
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataNotFoundError(f"{path} is truncated (incomplete header); replace it")
    return _IDX_DTYPES[magic[2]], struct.unpack(f">{ndim}I", dims)


def _read_payload(f: BinaryIO, path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The payload the header promises, as bytes; refused if the file holds more or less."""
    expected = math.prod(shape) * dtype.itemsize
    _check_claim(path, shape, expected, 4 + 4 * len(shape))
    out = np.empty(expected, np.uint8)
    view, done = memoryview(out), 0
    while done < expected:
        got = f.readinto(view[done : done + CHUNK])
        if not got:
            break
        done += got
    if done < expected or f.read(1):
        follows = f"{done} bytes follow" if done < expected else "more bytes follow"
        raise DataNotFoundError(
            f"{path} is corrupt: header says shape {shape} ({expected} bytes) "
            f"but {follows}; replace it"
        )
    return out


def _check_claim(path: Path, shape: tuple[int, ...], expected: int, header: int) -> None:
    """Refuse a header whose payload cannot be in the file, or cannot fit in memory,
    before allocating it."""
    size = path.stat().st_size
    holds = None
    if path.suffix == ".gz" and expected > MAX_DEFLATE_RATIO * size:
        holds = f"a {size}-byte gzip file decompresses to at most {MAX_DEFLATE_RATIO * size}"
    elif path.suffix != ".gz" and expected != size - header:
        holds = f"{size - header} follow"
    if holds is not None:
        raise DataNotFoundError(
            f"{path} is corrupt: header says shape {shape} ({expected} bytes) but {holds}; "
            "replace it"
        )
    free = available_bytes()
    if expected > free:
        raise UserError(
            f"{path} holds {human_bytes(expected)} of data, more than the {human_bytes(free)} "
            "of memory available; free memory or use a smaller file"
        )


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped if the name ends in ``.gz``)."""
    path = Path(path)
    codes = {v.newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)
