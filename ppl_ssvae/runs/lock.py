"""A run directory's lock: an exclusive ``flock`` on ``DIR/.lock``, holding the owner's pid.

The lock file is opened without following a link (``O_NOFOLLOW``), and one that this
process did not create is written only if it is a lock file: a regular file with no other
hard link, holding nothing but a pid. A ``.lock`` planted as a link to a thesis, a hard
link to ``~/.bashrc``, a folder or a FIFO is refused in one line and left as it is.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .checkpoint import FILE_MODE, link_refusal

_OPEN = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_PID = re.compile(rb"\d{0,20}\n?")
_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


@dataclass
class HeldLock:
    """A lock this process holds; ``created``: it made the lock file."""

    path: Path
    fd: int
    created: bool

    def release(self, remove: bool = False) -> None:
        """Unlock. ``remove`` deletes the lock file first when this process created it
        and it is still the one there (a start that failed leaves no trace)."""
        try:
            if remove and self.created and _same_file(self.path, self.fd):
                os.unlink(self.path)
        except OSError:
            pass  # the lock goes anyway; a leftover lock file is harmless
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def acquire(path: Path, in_use: str) -> HeldLock:
    """Lock ``path`` exclusively, without waiting; ``in_use`` (with ``{pid}``) is the
    refusal when another process holds it."""
    for _ in range(5):  # the file may be replaced between opening and locking it
        fd, created = _open(path)
        try:
            _check_ours(path, fd, created)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in _BUSY:
                    raise
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise UserError(in_use.format(pid=owner)) from None
            if _same_file(path, fd):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return HeldLock(path, fd, created)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise UserError(f"{path} keeps being replaced by another process; try again")


def is_lock_file(path: Path) -> bool:
    """Whether ``path`` is (still) a lock file of ours: a regular file of one link holding
    a pid at most. A folder's lock file is removed with the run it locked, nothing else."""
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_size > 21:
            return False
        return _PID.fullmatch(path.read_bytes()) is not None
    except OSError:
        return False


def _open(path: Path) -> tuple[int, bool]:
    for _ in range(5):
        try:
            return os.open(path, _OPEN | os.O_CREAT | os.O_EXCL, FILE_MODE), True
        except FileExistsError:
            pass
        except OSError as e:
            raise UserError(f"cannot create {path} ({e.strerror or e})") from None
        try:
            return os.open(path, _OPEN), False
        except FileNotFoundError:
            continue  # removed in between: create it
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UserError(link_refusal(path)) from None
            if e.errno == errno.EISDIR:
                raise UserError(_not_ours(path, "is a folder")) from None
            raise UserError(f"cannot open {path} ({e.strerror or e})") from None
    raise UserError(f"{path} keeps being replaced by another process; try again")


def _check_ours(path: Path, fd: int, created: bool) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UserError(_not_ours(path, "is not a regular file"))
    if created:
        return
    if info.st_nlink != 1:
        raise UserError(_not_ours(path, f"has {info.st_nlink} hard links"))
    if info.st_size > 21 or _PID.fullmatch(os.pread(fd, 32, 0)) is None:
        raise UserError(_not_ours(path, "holds something other than a pid"))


def _not_ours(path: Path, what: str) -> str:
    return (
        f"{path} {what}: it is not a lock file ppl-ssvae made, and ppl-ssvae will not "
        "change it; remove it or choose another directory"
    )


def _same_file(path: Path, fd: int) -> bool:
    try:
        here, held = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)
