"""Atomic file writes, reads that never follow a link, and the RNG state a checkpoint holds
(``RunDir`` saves and loads checkpoints, verified, with ``torch.load(..., weights_only=True)``)."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ..errors import UserError

_SHA256 = re.compile(r"[0-9a-f]{64}")


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write ``obj`` to a temp file in the same directory, fsync, then rename over ``path``.

    A crash at any point leaves either the old file or the new one, never a torn file.
    """
    _replace_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(path: str | Path, text: str) -> None:
    """``Path.write_text`` that, like ``save_atomic``, never leaves a torn file."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str | Path, payload: bytes) -> None:
    """``Path.write_bytes`` that never leaves a torn file."""
    _replace_atomic(path, lambda f: f.write(payload))


def read_regular_file(path: str | Path) -> bytes:
    """The bytes of ``path``, which must be a regular file: a symbolic link is refused, not
    followed (a link planted in a run directory must not lead a read out of it), and a
    FIFO or device is refused rather than blocked on.

    Raises:
        FileNotFoundError: nothing is there.
        UserError: a link, or anything but a regular file.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(link_refusal(path)) from None
        if isinstance(e, FileNotFoundError):
            raise
        raise UserError(f"cannot read {path} ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{path} is not a regular file; ppl-ssvae reads only its own files")
        return f.read()


def read_jsonl(
    path: Path, check: Callable[[int, dict[str, Any]], str | None]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON objects, one a line, of ``path`` (none when it is absent), and in line
    order a note for each line dropped: one that is not a JSON object (torn by a write cut
    short) or of which ``check(line_number, record)`` says why (a string; None keeps it).
    The caller repairs the file and says so."""
    try:
        text = read_regular_file(path).decode(errors="replace")
    except FileNotFoundError:
        return [], []
    records, dropped = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        note = check(number, record) if isinstance(record, dict) else f"unreadable line {number}"
        if note is None:
            records.append(record)
        else:
            dropped.append(note)
    return records, dropped


def read_checksums(sidecar: Path) -> tuple[list[str] | None, str]:
    """The SHA-256 digests a checkpoint's sidecar accepts, or None and what is wrong with
    it (``"is missing"``, ``"is malformed"``: an empty list counts as malformed)."""
    try:
        accepted = json.loads(read_regular_file(sidecar))["sha256"]
    except FileNotFoundError:
        return None, "is missing"
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return None, "is malformed"
    ok = isinstance(accepted, list) and accepted and all(
        isinstance(d, str) and _SHA256.fullmatch(d) for d in accepted)  # fmt: skip
    return (list(accepted), "") if ok else (None, "is malformed")


def link_refusal(path: str | Path) -> str:
    """The one line that refuses a symbolic link where a run keeps a file."""
    return (
        f"{path} is a symbolic link; ppl-ssvae never follows, writes or deletes a link in a "
        "run directory; remove the link or choose another directory"
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; run files get the mode any other file of the user gets.
FILE_MODE = 0o666 & ~_umask()


def _replace_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step touches, in weights_only-loadable types."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
