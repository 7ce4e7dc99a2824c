"""The run directory: one object owns what a run keeps on disk, and trusts nothing there.

A training run's directory holds ``config.json`` (everything needed to rebuild, evaluate
and resume the run, with a marker saying it is a ppl-ssvae run, of which kind and written
with checksums: ``kinds.run_marker``), ``metrics.jsonl`` (one line per epoch),
``checkpoint.pt`` (the last epoch: the source of truth on resume) and ``best.pt`` (the
best-validation epoch), each checkpoint with a SHA-256 sidecar. The rules a run depends on
live here and nowhere else:

- a run is ours only if its config.json parses, carries our marker (or, for runs written
  before it, our keys) and passes its kind's checks (``runs.config``); a directory that
  holds anything else under a run's file names is refused, and never cleared;
- a directory that holds a run is never reused unless asked (``resume`` or
  ``overwrite``), and never by a run of another kind; ``overwrite`` clears exactly the
  kind's own files (``kinds.KINDS``);
- nothing is followed out of the directory: files are read with ``O_NOFOLLOW``, a link
  where a run keeps a file is refused, writes replace (rename) rather than open a file;
- one run at a time: an exclusive ``flock`` on ``.lock`` (``runs.lock``) for its life;
- every file is replaced atomically (temp file, fsync, rename), with the mode the user's
  umask gives; the library's own temp files left by a killed process are removed on the
  next start;
- a fresh start that fails before it has done any work leaves the directory as it found
  it; a stub left by a killed one is taken over by the next plain start;
- checkpoints are verified against their checksum on load, and fail closed: a missing or
  malformed checksum of a run that wrote them is an error (``trust_unverified`` to load
  anyway), of an older run a warning;
- on resume the checkpoint wins: a torn last line of ``metrics.jsonl`` or epochs written
  after the checkpoint are dropped, with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError, is_int
from . import checkpoint, kinds
from .checkpoint import link_refusal, read_jsonl, read_regular_file, write_bytes_atomic
from .kinds import BEST, CHECKPOINT, CHECKSUM_SUFFIX, CONFIG, KINDS, LOCK, METRICS
from .lock import HeldLock, acquire, is_lock_file

# The file names live in kinds.py; they are imported from here too.
__all__ = ["BEST", "CHECKPOINT", "CONFIG", "METRICS", "RunDir", "RunDirWarning", "current_budget"]


class RunDirWarning(UserWarning):
    """Something in a run directory was repaired or left unverified (said, never silent)."""


class RunDir:
    """A run's directory. ``RunDir(path)`` touches nothing on disk; ``start`` (inside
    ``lock``) prepares it for a new run or a resume.

    Args:
        path: the directory (it may be a link to one: that is the user's choice; what is
            inside it is never followed).
        kind: the kind of run it holds (``kinds.KINDS``): what it may write and clear.
        trust_unverified: load a checkpoint whose checksum is missing or malformed (with a
            warning) instead of refusing it.
    """

    def __init__(
        self, path: str | Path, kind: str = "train", trust_unverified: bool = False
    ) -> None:
        if isinstance(path, str) and not path:
            raise UserError("the run directory is an empty path (--out ''); give a directory")
        if kind not in KINDS:
            raise ValueError(f"unknown run kind {kind!r}; one of {', '.join(KINDS)}")
        self.path, self.kind, self.trust_unverified = Path(path), kind, trust_unverified
        self._lock: HeldLock | None = None
        self._lock_depth = 0
        self._created: list[Path] = []  # folders the lock's mkdir made, outermost first
        self._fresh = False  # a new run was started under the lock held now

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
        """Whether any file or folder of this kind's names is here."""
        return any(kinds.entries(self.path, self.kind))

    def check_start(self, resume: bool, overwrite: bool) -> str:
        """The one-line refusals of starting a run here, before anything is written; what
        the directory holds: ``"nothing"``, a ``"stub"`` (a run without work) or a ``"run"``."""
        self.check_usable()
        if resume and overwrite:
            raise UserError("resume and overwrite exclude each other; give one of them")
        holding = self.holding()
        needs = KINDS[self.kind].resume_from
        if resume and holding == "nothing":
            raise UserError(
                f"no run in {self.path} (config.json missing); start one without resume"
            )
        if resume and needs and not os.path.lexists(self.file(needs)):
            raise UserError(
                f"{self.path} has no {needs} (its run stopped before its first epoch "
                "ended); start it again without --resume"
            )
        if not resume and not overwrite and holding == "run":
            raise UserError(
                f"{self.path} already holds a run; use --resume, or --overwrite to start again"
            )
        return holding

    def holding(self) -> str:
        """``"nothing"``, ``"stub"`` or ``"run"`` of this kind; a UserError for files under
        the kind's names that are links, not ours, or of another kind of run."""
        files, folders = kinds.entries(self.path, self.kind)
        for folder in folders:
            RunDir(folder).holding()  # a training run of ours, or refused
        if self.file(CONFIG) not in files:
            if files:  # (training runs in its folders are ours: a start reuses them)
                raise UserError(
                    f"{self.path} is not a ppl-ssvae run (it holds "
                    f"{', '.join(p.name for p in files[:3])} but no config.json); ppl-ssvae "
                    "will neither use nor delete those files; choose another directory"
                )
            return "nothing"
        self.read_config()
        return "run" if kinds.has_work(self.path, self.kind) else "stub"

    # -- the lock --------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold the directory's exclusive lock (re-entrant within one process). A fresh
        start (``start``) that fails before it has done any work is undone when the lock
        is released: the directory is left as it was found."""
        if self._lock_depth == 0:
            self._acquire()
        self._lock_depth += 1
        failed = False
        try:
            yield self
        except BaseException:
            failed = True
            raise
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                self._release(undo=failed)

    def _acquire(self) -> None:
        self.check_usable()
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        self._created = list(reversed(missing))
        in_use = (f"{self.path} is in use by another training (pid {{pid}}); wait for it to "
                  "finish or choose another --out")  # fmt: skip
        try:
            self._lock = acquire(self.file(LOCK), in_use)
        except BaseException:
            self._remove_created_folders()
            raise

    def _release(self, undo: bool) -> None:
        undo = undo and not (self._fresh and kinds.has_work(self.path, self.kind))
        if undo and self._fresh:
            try:
                self._clear()
            except (OSError, UserError):
                undo = False  # the failure that brought us here is the one to report
        self._lock.release(remove=undo)
        self._lock, self._fresh = None, False
        if undo:
            self._remove_created_folders()

    def _remove_created_folders(self) -> None:
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []

    def _require_lock(self) -> None:
        if self._lock_depth == 0:
            raise RuntimeError(f"{self} is written without its lock; use `with run.lock():`")

    # -- starting ------------------------------------------------------------------------
    def start(self, resume: bool, overwrite: bool) -> None:
        """Check again (another process may have written), clear the library's stale temp
        files and, for a new run, what the directory holds of this kind (the previous
        run with ``overwrite``, a stub without)."""
        self._require_lock()
        holding = self.check_start(resume, overwrite)
        self.remove_stale_temp_files()
        if not resume:
            if holding != "nothing":
                self._clear()
            self._fresh = True

    def _clear(self) -> None:
        """Remove this kind's files and the training runs in its folders; nothing else."""
        files, folders = kinds.entries(self.path, self.kind)
        for folder in folders:
            inner = RunDir(folder)
            if inner.holding() == "nothing":
                continue
            inner._clear()
            inner.remove_stale_temp_files()
            if is_lock_file(inner.file(LOCK)):
                inner.file(LOCK).unlink()
            with contextlib.suppress(OSError):  # the user keeps files there too
                folder.rmdir()
        for path in files:
            path.unlink(missing_ok=True)

    def remove_stale_temp_files(self) -> list[Path]:
        """Temp files that a killed process left from an atomic write of one of this kind's
        files (``.NAME.XXXXXXXX.tmp``); any other file, ``.*.tmp`` or not, is left alone."""
        stale = kinds.stale_temp_files(self.path, self.kind)
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    # -- config ----------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        """config.json, read without following a link, recognised as a run of this
        directory's kind and checked entry by entry (``runs.config``); anything else is one
        UserError that names the file."""
        path = self.file(CONFIG)
        try:
            config = json.loads(read_regular_file(path))
        except FileNotFoundError:
            raise UserError(f"{self.path} is not a run directory (no config.json)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(
                f"{path} is not valid JSON ({e}): not a ppl-ssvae run's config, or a damaged "
                "one; ppl-ssvae will neither use nor delete it; restore it or choose another "
                "directory"
            ) from None
        kind = kinds.recognise(config, path)
        if kind != self.kind:
            raise UserError(
                f"{self.path} holds {KINDS[kind].title}, not {KINDS[self.kind].title}; a run "
                "of one kind is never resumed, overwritten or read as the other: choose "
                "another directory"
            )
        from .config import check_config, wrap  # its checks import models and training

        try:
            check_config(kind, config)
        except UserError as e:
            raise wrap(path, e) from None
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

    # -- metrics and other records ---------------------------------------------------------
    def write_history(self, history: list[dict[str, Any]]) -> None:
        """Replace metrics.jsonl with ``history`` (atomically: a failed write keeps the old
        file whole, where an append could leave a torn line)."""
        self._require_lock()
        self._write(METRICS, "".join(json.dumps(h) + "\n" for h in history).encode())

    def read_history(self, up_to: int | None = None) -> list[dict[str, Any]]:
        """The epochs of metrics.jsonl up to epoch ``up_to``. A torn line (a write cut
        short) and epochs past ``up_to`` (written after the checkpoint) are dropped with a
        ``RunDirWarning``."""

        def check(number: int, record: dict[str, Any]) -> str | None:
            if not is_int(record.get("epoch")):
                return f"unreadable line {number}"
            if up_to is not None and record["epoch"] > up_to:
                return f"epoch {record['epoch']} (after the checkpoint)"
            return None

        history, dropped = read_jsonl(self.file(METRICS), check)
        if dropped:
            warnings.warn(
                f"{self.file(METRICS)}: dropped {', '.join(dropped)}; the checkpoint's epoch "
                f"{up_to} is where training continues",
                RunDirWarning,
                stacklevel=2,
            )
        return history

    def read_records(
        self, name: str, check: Callable[[int, dict[str, Any]], str | None]
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """``checkpoint.read_jsonl`` of this directory's file ``name``."""
        return read_jsonl(self.file(name), check)

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
        previous = checkpoint.read_checksums(self.file(name + CHECKSUM_SUFFIX))[0] or []
        accepted = [digest, *previous[:1]]
        self._write(name + CHECKSUM_SUFFIX, json.dumps({"sha256": accepted}).encode())
        self._write(name, payload)

    def load_checkpoint(self, name: str, map_location: str | torch.device = "cpu") -> dict:
        """Checkpoint ``name``, read without following a link and verified against its
        checksum; an unverifiable one fails closed (see ``_unverified``)."""
        path = self.file(name)
        try:
            payload = read_regular_file(path)
        except FileNotFoundError:
            raise UserError(
                f"no checkpoint at {path}; train first (ppl-ssvae train --out {self.path})"
            ) from None
        accepted, problem = checkpoint.read_checksums(self.file(name + CHECKSUM_SUFFIX))
        if accepted is None:
            self._unverified(name, problem)
        elif hashlib.sha256(payload).hexdigest() not in accepted:
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
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise UserError(f"{path} holds no 'model' weights; it was not written by ppl-ssvae")
        if not is_int(state.get("epoch")):
            raise UserError(f"{path} records no epoch; it was not written by ppl-ssvae")
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

    def _unverified(self, name: str, problem: str) -> None:
        """Fail closed: a run that wrote checksums (its config.json says so) must have
        them, unless ``trust_unverified``; an older run gets a warning."""
        sidecar = self.file(name + CHECKSUM_SUFFIX)
        try:
            promised = kinds.writes_checksums(self.read_config())
        except UserError:
            promised = True  # nothing readable says this run may lack checksums
        if promised and not self.trust_unverified:
            raise UserError(
                f"{sidecar} {problem}, so {self.file(name)} cannot be verified (this run "
                "wrote checksums); restore the .sha256 file, or load it unverified with "
                "--trust-unverified (RunDir(..., trust_unverified=True) from Python)"
            )
        why = "loaded as asked" if promised else "a run written before checksums were recorded"
        warnings.warn(f"{self.file(name)} is not verified: its checksum file {problem} ({why})",
                      RunDirWarning, stacklevel=3)  # fmt: skip

    def _write(self, name: str, payload: bytes) -> None:
        path = self.file(name)
        if path.is_symlink():  # replacing it would not follow it, but it is not ours
            raise UserError(link_refusal(path))
        try:
            write_bytes_atomic(path, payload)
        except OSError as e:
            raise UserError(
                f"could not write {path} ({e.strerror or e}); the previous "
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
