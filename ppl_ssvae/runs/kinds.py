"""What a run directory may hold, by kind of run, and how a run is recognised as ours.

A run's ``config.json`` carries a marker, ``run_marker(kind)``::

    {"format": "ppl-ssvae-run", "format_version": 1, "kind": "train", "checksums": "sha256"}

Runs written before the marker are recognised by their keys (``model`` and ``fit``: a
training run; ``active`` and ``model``: an active-labelling run); anything else is not a
ppl-ssvae run. A kind lists the names of the files and folders it writes: those, and
nothing else, are what a start checks to be regular files (never links), what
``--overwrite`` clears and whose leftover temp files are removed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ..errors import UserError, is_int
from .checkpoint import link_refusal

FORMAT = "ppl-ssvae-run"
FORMAT_VERSION = 1
CHECKSUMS = "sha256"

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
LOCK = ".lock"
CHECKSUM_SUFFIX = ".sha256"
QUERIES = "queries.jsonl"
ITERATIONS = "iterations.jsonl"
# Files a training run writes besides its run files (clustering reports).
ARTIFACTS = ("confusion_matrix.csv", "confusion_matrix.png", "unit_activity.json")
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, BEST)


@dataclass(frozen=True)
class RunKind:
    """One kind of run: what messages call it and what it writes.

    Attributes:
        title: how a message names it ("a training run").
        files: patterns (``fnmatch``) of the files it writes in its directory.
        folders: patterns of the folders it writes, each a training run of its own.
        work: patterns of what a run holds once it has done work worth keeping (a
            checkpoint, an answer); a run without any is a stub that a plain start takes
            over and that a failed start removes.
        resume_from: the file a resume needs (None: any run of the kind resumes).
        legacy_keys: the config.json entries (mappings) that recognise a run written
            before the marker.
    """

    title: str
    files: tuple[str, ...]
    folders: tuple[str, ...] = ()
    work: tuple[str, ...] = ()
    resume_from: str | None = None
    legacy_keys: tuple[str, ...] = ()


_LABELS, _ITERATION = "labels-[0-9][0-9][0-9]*.json", "iter-[0-9][0-9][0-9]*"
KINDS: dict[str, RunKind] = {
    "train": RunKind(
        "a training run",
        files=(*RUN_FILES, CHECKPOINT + CHECKSUM_SUFFIX, BEST + CHECKSUM_SUFFIX, *ARTIFACTS),
        work=(CHECKPOINT, BEST),
        resume_from=CHECKPOINT,
        legacy_keys=("model", "fit"),
    ),
    "active": RunKind(
        "an active-labelling run",
        files=(CONFIG, QUERIES, ITERATIONS, _LABELS, "centres-*.png"),
        folders=("pretrain", _ITERATION),
        work=(QUERIES, ITERATIONS, _LABELS, f"pretrain/{CHECKPOINT}", f"{_ITERATION}/{CHECKPOINT}"),
        legacy_keys=("active", "model"),
    ),
}

# mkstemp's names for the atomic writes of ``checkpoint._replace_atomic``: ``.NAME.XXXXXXXX.tmp``.
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp")


def run_marker(kind: str) -> dict[str, Any]:
    """The entries that mark a config.json as a ppl-ssvae run of ``kind``, written with
    checksums (so a missing or malformed checksum is an error on load)."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}; one of {', '.join(KINDS)}")
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
            "checksums": CHECKSUMS}  # fmt: skip


def recognise(config: Any, path: Path) -> str:
    """The kind of run the parsed config.json at ``path`` describes; a UserError when it
    is not a ppl-ssvae run or was written by a later format."""
    kind = _marked_kind(config, path) if isinstance(config, dict) and "format" in config else None
    if kind is None and isinstance(config, dict) and "format" not in config:
        legacy = [name for name, k in KINDS.items()
                  if all(isinstance(config.get(key), dict) for key in k.legacy_keys)]  # fmt: skip
        kind = legacy[0] if len(legacy) == 1 else None
    if kind is None:
        raise UserError(
            f"{path.parent} is not a ppl-ssvae run (its {path.name} is not one a run writes); "
            "ppl-ssvae will neither use nor delete its files; choose another directory"
        )
    return kind


def _marked_kind(config: dict[str, Any], path: Path) -> str | None:
    version = config.get("format_version")
    if config.get("format") != FORMAT or config.get("kind") not in KINDS or not is_int(version):
        return None
    if version > FORMAT_VERSION:
        raise UserError(
            f"{path} was written by a later ppl-ssvae (run format {version}, this one reads "
            f"up to {FORMAT_VERSION}); upgrade ppl-ssvae to use it"
        )
    return config["kind"] if version >= 1 else None


def writes_checksums(config: dict[str, Any]) -> bool:
    """Whether the run says it wrote a checksum beside every checkpoint."""
    return "format" in config and config.get("checksums") == CHECKSUMS


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def is_temp_of(name: str, kind: str) -> bool:
    """Whether ``name`` is a temp file of an atomic write of one of ``kind``'s files."""
    found = _TEMP_NAME.fullmatch(name)
    return found is not None and matches(found["name"], KINDS[kind].files)


def entries(path: Path, kind: str) -> tuple[list[Path], list[Path]]:
    """The files and folders in ``path`` under ``kind``'s names, found without following
    links; a link, or a file under a file's name that is not a regular file, is refused."""
    names, files, folders = KINDS[kind], [], []
    if not path.is_dir():
        return files, folders
    with os.scandir(path) as found:
        for entry in found:
            where = Path(entry.path)
            if entry.is_symlink() and matches(entry.name, names.files + names.folders):
                raise UserError(link_refusal(where))
            if matches(entry.name, names.files):
                if not entry.is_file(follow_symlinks=False):
                    raise UserError(f"{where} is not a regular file; ppl-ssvae will neither "
                                    "use nor remove it; choose another directory")  # fmt: skip
                files.append(where)
            elif matches(entry.name, names.folders) and entry.is_dir(follow_symlinks=False):
                folders.append(where)
    return sorted(files), sorted(folders)


def has_work(path: Path, kind: str) -> bool:
    """Whether the run in ``path`` has done work worth keeping (``RunKind.work``)."""
    return any(os.path.lexists(p) for pattern in KINDS[kind].work for p in path.glob(pattern))


def stale_temp_files(path: Path, kind: str) -> list[Path]:
    """Regular files in ``path`` named as temp files of ``kind``'s atomic writes."""
    if not path.is_dir():
        return []
    with os.scandir(path) as found:
        return [Path(e.path) for e in found
                if e.is_file(follow_symlinks=False) and is_temp_of(e.name, kind)]  # fmt: skip
