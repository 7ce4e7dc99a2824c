"""The run directory: one object owns what a training run keeps on disk.

A run directory holds ``config.json`` (everything needed to rebuild, evaluate and resume
the run), ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt`` (the last epoch: the
source of truth on resume) and ``best.pt`` (the best-validation epoch), each checkpoint with
a SHA-256 sidecar. The rules a run depends on live here and nowhere else:

- a directory that holds a run is never reused unless asked (``resume`` or ``overwrite``);
- one training at a time: an exclusive ``flock`` on ``.lock`` for the life of the run;
- every file is replaced atomically (temp file, fsync, rename), with the mode the user's
  umask gives; temp files left by a killed process are removed on the next start;
- checkpoints are verified against their checksum on load, so flipped bits are an error
  rather than a model that silently scores 10%;
- on resume the checkpoint wins: a torn last line of ``metrics.jsonl`` or epochs written
  after the checkpoint are dropped, with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .checkpoint import write_bytes_atomic
from .errors import UserError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
LOCK = ".lock"
CHECKSUM_SUFFIX = ".sha256"
# Files a run writes besides the four above (clustering reports); ``overwrite`` clears
# exactly these and the run files, never anything else a user keeps in the directory.
ARTIFACTS = ("confusion_matrix.csv", "confusion_matrix.png", "unit_activity.json")
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, BEST)


class RunDirWarning(UserWarning):
    """Something in a run directory was repaired on resume (said, never silent)."""


class RunDir:
    """A training run's directory. ``RunDir(path)`` touches nothing on disk; ``start``
    (inside ``lock``) prepares it for a new run or a resume."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_file: Any = None
        self._lock_depth = 0

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    # -- checks that write nothing ---------------------------------------------------------
    def check_usable(self) -> None:
        """Refuse a path that is a file, lies below a file, or is not writable."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise UserError(f"{path} is a file, not a run directory; choose another --out")
        ancestor = path
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise UserError(f"{path} lies below the file {ancestor}; choose another --out")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise UserError(
                f"cannot write to {ancestor} (read-only or no permission); choose another --out"
            )

    def holds_run(self) -> bool:
        return any(self.file(name).exists() for name in RUN_FILES)

    def check_start(self, resume: bool, overwrite: bool) -> None:
        """The one-line refusals of starting a run here, before anything is written."""
        self.check_usable()
        if resume and overwrite:
            raise UserError("resume and overwrite exclude each other; give one of them")
        if resume:
            if not self.file(CONFIG).is_file():
                raise UserError(
                    f"no run in {self.path} (config.json missing); start one without resume"
                )
            if not self.file(CHECKPOINT).is_file():
                raise UserError(
                    f"{self.path} has no checkpoint.pt (its run ended before the first epoch "
                    "did); start again with --overwrite"
                )
        elif self.holds_run() and not overwrite:
            raise UserError(
                f"{self.path} already holds a run; use --resume, or --overwrite to start again"
            )

    # -- the lock --------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold the directory's exclusive lock (re-entrant within one process)."""
        if self._lock_depth == 0:
            self._acquire()
        self._lock_depth += 1
        try:
            yield self
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                self._release()

    def _acquire(self) -> None:
        self.check_usable()
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.file(LOCK), "a+")  # noqa: SIM115 - held for the run's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise UserError(
                f"{self.path} is in use by another training (pid {owner}); wait for it to "
                "finish or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def _release(self) -> None:
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
        self._lock_file = None

    def _require_lock(self) -> None:
        if self._lock_depth == 0:
            raise RuntimeError(f"{self} is written without its lock; use `with run.lock():`")

    # -- starting ------------------------------------------------------------------------
    def start(self, resume: bool, overwrite: bool) -> None:
        """Check, then clear stale temp files and (``overwrite``) the previous run."""
        self._require_lock()
        self.check_start(resume, overwrite)  # again: another process may have written
        self.remove_stale_temp_files()
        if overwrite:
            for name in (*RUN_FILES, *ARTIFACTS):
                for path in (self.file(name), self.file(name + CHECKSUM_SUFFIX)):
                    path.unlink(missing_ok=True)

    def remove_stale_temp_files(self) -> list[Path]:
        """Temp files of atomic writes that a killed process left (``.name.XXXX.tmp``)."""
        stale = [p for p in self.path.glob(".*.tmp") if p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    # -- config ----------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        path = self.file(CONFIG)
        if not path.is_file():
            raise UserError(f"{self.path} is not a run directory (no config.json)")
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(
                f"{path} is not valid JSON ({e}); restore it or start a new run"
            ) from None
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
            raise UserError(f"{path} has no 'model' entry; it was not written by ppl-ssvae")
        return config

    def write_config(self, config: dict[str, Any]) -> None:
        self._require_lock()
        self._write(CONFIG, json.dumps(config, indent=2, default=str).encode())

    def record_resume(self, from_epoch: int, budget: dict[str, Any], env: dict[str, Any]) -> None:
        """Append to config.json's ``resumes`` the part of ``budget`` that this resume
        changed, as ``{"from_epoch", "changed", "git_commit", "git_dirty"}``.

        ``fit`` keeps the values the run started with, so the run's command is still the one
        that started it, and ``resumes`` says how it was continued: without them a run
        resumed with a larger budget would look as if its first budget had trained it.
        """
        config = self.read_config()
        changed = {k: v for k, v in budget.items() if current_budget(config).get(k) != v}
        if not changed:
            return
        entry = {"from_epoch": from_epoch, "changed": changed,
                 "git_commit": env.get("git_commit"), "git_dirty": env.get("git_dirty")}  # fmt: skip
        config.setdefault("resumes", []).append(entry)
        self.write_config(config)

    # -- metrics ---------------------------------------------------------------------------
    def write_history(self, history: list[dict[str, Any]]) -> None:
        """Replace metrics.jsonl with ``history`` (atomically: a failed write keeps the old
        file whole, where an append could leave a torn line)."""
        self._require_lock()
        self._write(METRICS, "".join(json.dumps(h) + "\n" for h in history).encode())

    def read_history(self, up_to: int | None = None) -> list[dict[str, Any]]:
        """The epochs of metrics.jsonl up to epoch ``up_to``. A torn line (a write cut
        short) and epochs past ``up_to`` (written after the checkpoint) are dropped with a
        ``RunDirWarning``."""
        path = self.file(METRICS)
        history, dropped = [], []
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                epoch = int(record["epoch"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                dropped.append(f"unreadable line {number}")
                continue
            if up_to is not None and epoch > up_to:
                dropped.append(f"epoch {epoch} (after the checkpoint)")
            else:
                history.append(record)
        if dropped:
            warnings.warn(
                f"{path}: dropped {', '.join(dropped)}; the checkpoint's epoch "
                f"{up_to} is where training continues",
                RunDirWarning,
                stacklevel=2,
            )
        return history

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        """``torch.save`` ``state`` to ``name`` atomically, with its SHA-256 in
        ``name.sha256``. The sidecar is written first and also keeps the previous file's
        checksum, so a kill between the two renames leaves a pair that still verifies."""
        self._require_lock()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
        digest = hashlib.sha256(payload).hexdigest()
        accepted = [digest, *self._accepted_checksums(name)[:1]]
        self._write(name + CHECKSUM_SUFFIX, json.dumps({"sha256": accepted}).encode())
        self._write(name, payload)

    def load_checkpoint(self, name: str, map_location: str | torch.device = "cpu") -> dict:
        path = self.file(name)
        if not path.is_file():
            raise UserError(
                f"no checkpoint at {path}; train first (ppl-ssvae train --out {self.path})"
            )
        payload = path.read_bytes()
        accepted = self._accepted_checksums(name)
        if accepted and hashlib.sha256(payload).hexdigest() not in accepted:
            raise UserError(
                f"{path} fails its SHA-256 check (changed on disk since it was written); "
                "restore it or retrain (for best.pt, evaluate --checkpoint last still works)"
            )
        try:
            state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
            raise UserError(
                f"checkpoint {path} is unreadable ({type(e).__name__}); delete it"
            ) from e
        if not isinstance(state, dict) or "model" not in state:
            raise UserError(f"{path} holds no 'model' weights; it was not written by ppl-ssvae")
        return state

    def load_weights(self, model: torch.nn.Module, name: str) -> dict[str, Any]:
        """Load checkpoint ``name`` into ``model``; weights of another model are an error."""
        state = self.load_checkpoint(name, map_location=_device_of(model))
        try:
            model.load_state_dict(state["model"])
        except (RuntimeError, KeyError) as e:
            first = str(e).strip().splitlines()[0]
            raise UserError(
                f"{self.file(name)} does not fit the model in config.json ({first}); the "
                "files come from different runs"
            ) from None
        return state

    def _accepted_checksums(self, name: str) -> list[str]:
        sidecar = self.file(name + CHECKSUM_SUFFIX)
        if not sidecar.is_file():
            return []  # written before checksums existed: nothing to verify against
        try:
            return list(json.loads(sidecar.read_text())["sha256"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{sidecar} is corrupt; restore it or retrain") from None

    def _write(self, name: str, payload: bytes) -> None:
        try:
            write_bytes_atomic(self.file(name), payload)
        except OSError as e:
            raise UserError(
                f"could not write {self.file(name)} ({e.strerror or e}); the previous "
                f"{name} is kept; free space or fix the filesystem, then --resume"
            ) from None


def current_budget(config: dict[str, Any]) -> dict[str, Any]:
    """The run's training settings as the last resume left them."""
    current = dict(config.get("fit", {}))
    for earlier in config.get("resumes", []):
        current.update(earlier["changed"])
    return current


def _device_of(model: torch.nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))
