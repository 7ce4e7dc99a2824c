"""The run directory trusts nothing it finds: planted links, look-alike files, runs of
another kind, unverifiable checkpoints and crafted run files are each refused in one line
(exit 2, no traceback) with the directory, and whatever a link points to, left exactly as
they were. CLI cases through the command's ``main`` in this process (one also as its own
process); the rules then from Python."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import ppl_ssvae.active.loop as active_loop
from ppl_ssvae.active import ActiveConfig, QueryLog, run_active
from ppl_ssvae.cli import main
from ppl_ssvae.data import load, semi_supervised_split
from ppl_ssvae.errors import UserError
from ppl_ssvae.models import build
from ppl_ssvae.runs.directory import RunDir, RunDirWarning
from ppl_ssvae.training import fit

from ..cli_in_process import assert_refused_in_one_line, run_as_process, run_in_process

TINY = ["--dataset", "digits", "--labels", "50", "--z-dim", "4", "--hidden", "16",
        "--batch-size", "200", "--no-progress"]  # fmt: skip
TRAIN = ["train", *TINY, "--epochs", "1"]
ACTIVE = ["active", "--dataset", "digits", "--iterations", "1", "--queries", "4", "--k", "4"]
TINY_ACTIVE = dict(dataset="digits", iterations=1, queries=4, k=4, z_dim=3, hidden=(16,),
                   pretrain_epochs=2, patience=1, epochs=1, batch_size=500)  # fmt: skip
MARKER = ("format", "format_version", "kind", "checksums")


def _tree(root: Path) -> dict[str, tuple]:
    """Everything under ``root``, links not followed: each link's target, each file's
    bytes and inode (a file replaced by an identical copy is still a change)."""
    found: dict[str, tuple] = {}
    for base, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(base) / name
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                found[str(path.relative_to(root))] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                found[str(path.relative_to(root))] = ("file", path.read_bytes(), info.st_ino)
            else:
                found[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode),)
    return found


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished one-epoch CLI training run."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """A finished one-iteration active-labelling run."""
    run = tmp_path_factory.mktemp("labelled") / "run"
    run_active(ActiveConfig(**TINY_ACTIVE), run)
    return run


def _copy(source: Path, folder: Path) -> Path:
    shutil.copytree(source, folder / "run", symlinks=True)
    return folder / "run"


def _empty(folder: Path) -> Path:
    (folder / "run").mkdir()
    return folder / "run"


def _thesis(folder: Path) -> Path:
    thesis = folder / "thesis.tex"
    thesis.write_text("four years of work\n")
    return thesis


def _link(path: Path, target: Path) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(target)


def _edit_config(run: Path, edit: Callable[[dict], object]) -> None:
    config = json.loads((run / "config.json").read_text())
    edit(config)
    (run / "config.json").write_text(json.dumps(config))


def _lock_link(source: Path | None) -> Callable[[Path], Path]:
    def plant(folder: Path) -> Path:
        run = _copy(source, folder) if source else _empty(folder)
        _link(run / ".lock", _thesis(folder))
        return run

    return plant


def _look_alike(folder: Path) -> Path:
    run = _empty(folder)
    (run / "config.json").write_text('{"experiment": "mine", "lr": 0.1}')
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    return run


def _foreign_checkpoint(folder: Path) -> Path:
    run = _empty(folder)
    (run / "checkpoint.pt").write_bytes(b"another tool's weights")
    return run


def _sidecar(trained: Path, name: str, text: str | None) -> Callable[[Path], Path]:
    def plant(folder: Path) -> Path:
        run = _copy(trained, folder)
        (run / f"{name}.sha256").unlink()
        if text is not None:
            (run / f"{name}.sha256").write_text(text)
        return run

    return plant


def _linked_out(trained: Path | None, name: str) -> Callable[[Path], Path]:
    """``name`` in the run replaced by a link to a copy of it (or a thesis) outside."""

    def plant(folder: Path) -> Path:
        run = _copy(trained, folder) if trained else _empty(folder)
        target = folder / f"outside-{name}"
        if trained:
            shutil.copy(run / name, target)
        else:
            target = _thesis(folder)
        _link(run / name, target)
        return run

    return plant


def _crafted(source: Path, edit: Callable[[dict], object]) -> Callable[[Path], Path]:
    def plant(folder: Path) -> Path:
        run = _copy(source, folder)
        _edit_config(run, edit)
        return run

    return plant


def _cli_cases(trained: Path, labelled: Path) -> dict[str, tuple[Callable, Callable, str]]:
    """name -> (plant(folder) -> run, argv(run), expected part of the one error line)."""
    out = lambda run: ["--out", str(run)]  # noqa: E731
    resume = lambda run: ["train", *out(run), "--resume", "--epochs", "2", "--no-progress"]  # noqa: E731
    no_input_dim = _crafted(trained, lambda c: c["model"].pop("input_dim"))
    return {
        "lock links out, train": (_lock_link(None), lambda r: [*TRAIN, *out(r)], "symbolic link"),
        "lock links out, resume": (_lock_link(trained), resume, "symbolic link"),
        "lock links out, overwrite": (_lock_link(trained), lambda r: [*TRAIN, *out(r), "--overwrite"], "symbolic link"),
        "lock links out, active": (_lock_link(None), lambda r: [*ACTIVE, *out(r)], "symbolic link"),
        "look-alike config": (_look_alike, lambda r: [*TRAIN, *out(r)], "is not a ppl-ssvae run"),
        "look-alike config, overwrite": (_look_alike, lambda r: [*TRAIN, *out(r), "--overwrite"], "is not a ppl-ssvae run"),
        "another tool's checkpoint, overwrite": (_foreign_checkpoint, lambda r: [*TRAIN, *out(r), "--overwrite"], "is not a ppl-ssvae run"),
        "out is empty": (_empty, lambda r: [*TRAIN, "--out", ""], "empty path"),
        "active --overwrite onto a training run": (lambda f: _copy(trained, f), lambda r: [*ACTIVE, *out(r), "--overwrite"], "holds a training run, not an active-labelling run"),
        "active --resume of a training run": (lambda f: _copy(trained, f), lambda r: ["active", *out(r), "--resume"], "holds a training run, not an active-labelling run"),
        "train --overwrite onto an active run": (lambda f: _copy(labelled, f), lambda r: [*TRAIN, *out(r), "--overwrite"], "holds an active-labelling run, not a training run"),
        "best.pt without its checksum": (_sidecar(trained, "best.pt", None), lambda r: ["evaluate", str(r)], "best.pt.sha256 is missing"),
        "best.pt with an empty checksum list": (_sidecar(trained, "best.pt", '{"sha256": []}'), lambda r: ["evaluate", str(r)], "best.pt.sha256 is malformed"),
        "resume without the checkpoint's checksum": (_sidecar(trained, "checkpoint.pt", None), resume, "checkpoint.pt.sha256 is missing"),
        "best.pt links out": (_linked_out(trained, "best.pt"), lambda r: ["evaluate", str(r)], "best.pt is a symbolic link"),
        "config.json links out, resume": (_linked_out(trained, "config.json"), resume, "config.json is a symbolic link"),
        "metrics.jsonl links out, overwrite": (_linked_out(trained, "metrics.jsonl"), lambda r: [*TRAIN, *out(r), "--overwrite"], "metrics.jsonl is a symbolic link"),
        "confusion_matrix.csv links out": (_linked_out(None, "confusion_matrix.csv"), lambda r: ["train", *TINY[:2], "--labels", "0", *TINY[4:], "--epochs", "1", *out(r)], "confusion_matrix.csv is a symbolic link"),
        "model without input_dim, evaluate": (no_input_dim, lambda r: ["evaluate", str(r)], "lacks input_dim"),
        "model without input_dim, inspect": (no_input_dim, lambda r: ["inspect", str(r), "--out", str(r.parent / "pictures")], "lacks input_dim"),
        "recipe with labels abc": (_crafted(trained, lambda c: c["data"]["recipe"].update(labels="abc")), lambda r: ["evaluate", str(r)], "labels='abc'"),
        "resume record without changes": (_crafted(trained, lambda c: c.update(resumes=[{"from_epoch": 1}])), resume, "'resumes' must list"),
        "active settings with hidden 5": (_crafted(labelled, lambda c: c["active"].update(hidden=5)), lambda r: ["active", *out(r), "--resume"], "active.hidden=5"),
    }  # fmt: skip


@pytest.fixture(scope="module")
def replayed(trained, labelled, tmp_path_factory):
    """Every CLI case planted in its own folder, and each folder snapshotted (the run
    directory and what its links point to), up front."""
    root = tmp_path_factory.mktemp("trust")
    planted = {}
    for name, (plant, argv, expected) in _cli_cases(trained, labelled).items():
        folder = root / re.sub(r"[^a-z0-9]+", "-", name.lower())
        folder.mkdir()
        planted[name] = (folder, argv(plant(folder)), expected, _tree(folder))
    return planted


CLI_CASES = [
    "lock links out, train", "lock links out, resume", "lock links out, overwrite",
    "lock links out, active", "look-alike config", "look-alike config, overwrite",
    "another tool's checkpoint, overwrite", "out is empty",
    "active --overwrite onto a training run", "active --resume of a training run",
    "train --overwrite onto an active run", "best.pt without its checksum",
    "best.pt with an empty checksum list", "resume without the checkpoint's checksum",
    "best.pt links out", "config.json links out, resume", "metrics.jsonl links out, overwrite",
    "confusion_matrix.csv links out", "model without input_dim, evaluate",
    "model without input_dim, inspect", "recipe with labels abc", "resume record without changes",
    "active settings with hidden 5",
]  # fmt: skip


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_refuses_in_one_line_and_touches_nothing(replayed, case):
    folder, argv, expected, before = replayed[case]
    assert_refused_in_one_line(*run_in_process(argv, folder), expected)
    assert _tree(folder) == before


def test_a_refusal_is_the_same_from_its_own_process(replayed):
    """The process around ``main`` adds nothing: exit code 2 and the same single line."""
    folder, argv, expected, before = replayed["best.pt links out"]
    code, stderr = run_as_process(argv, folder)
    assert_refused_in_one_line(code, stderr, expected)
    assert (code, stderr) == run_in_process(argv, folder)
    assert _tree(folder) == before


def test_every_cli_case_is_replayed(trained, labelled):
    assert sorted(_cli_cases(trained, labelled)) == sorted(CLI_CASES)


# -- the lock ----------------------------------------------------------------------------------
PLANTS = {
    "a hard link to a thesis": lambda lock, thesis: os.link(thesis, lock),
    "a folder": lambda lock, thesis: lock.mkdir(),
    "a FIFO": lambda lock, thesis: os.mkfifo(lock),
    "someone's notes": lambda lock, thesis: lock.write_text("do not delete\n"),
}


@pytest.mark.parametrize("plant", list(PLANTS))
def test_a_lock_file_that_is_not_ours_is_refused_and_left_alone(tmp_path, plant):
    thesis = _thesis(tmp_path)
    run = _empty(tmp_path)
    PLANTS[plant](run / ".lock", thesis)
    before = _tree(tmp_path)
    with pytest.raises(UserError, match="not a lock file ppl-ssvae made"), RunDir(run).lock():
        pass
    assert _tree(tmp_path) == before


# -- look-alikes, kinds, temp files, --out "" --------------------------------------------------
def _digits():
    return semi_supervised_split(load("digits"), labels=50, seed=0)


def _small_model(data):
    return build("m2", input_dim=data.input_dim, num_classes=10, z_dim=4, hidden=(16,))


def test_overwrite_never_clears_a_config_with_our_keys_that_is_not_ours(tmp_path):
    run = _empty(tmp_path)
    (run / "config.json").write_text('{"model": {"name": "resnet50"}, "fit": {"epochs": 3}}')
    (run / "checkpoint.pt").write_bytes(b"resnet weights")
    before, data = _tree(tmp_path), _digits()
    with pytest.raises(UserError, match="not as ppl-ssvae wrote it"):
        fit(_small_model(data), data, epochs=1, out=run, overwrite=True, progress=False)
    assert _tree(tmp_path) == before


def test_a_run_of_one_kind_is_never_overwritten_by_the_other(trained, labelled, tmp_path):
    training, active = _copy(trained, tmp_path / "t"), _copy(labelled, tmp_path / "a")
    before, data = _tree(tmp_path), _digits()
    with pytest.raises(UserError, match="holds a training run, not an active-labelling run"):
        run_active(ActiveConfig(**TINY_ACTIVE), training, overwrite=True)
    with pytest.raises(UserError, match="holds an active-labelling run, not a training run"):
        fit(_small_model(data), data, epochs=1, out=active, overwrite=True, progress=False)
    assert _tree(tmp_path) == before


def test_active_overwrite_clears_its_own_files_and_keeps_the_users(labelled, tmp_path):
    run = _copy(labelled, tmp_path)
    (run / "pretrain" / "notes.txt").write_text("mine")
    (run / "labels-notes.txt").write_text("mine too")
    old = (run / "pretrain" / "checkpoint.pt").read_bytes()
    run_active(ActiveConfig(**{**TINY_ACTIVE, "seed": 1}), run, overwrite=True)
    assert (run / "pretrain" / "notes.txt").read_text() == "mine"
    assert (run / "labels-notes.txt").read_text() == "mine too"
    assert (run / "pretrain" / "checkpoint.pt").read_bytes() != old


def test_a_sub_run_folder_that_links_out_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = _empty(tmp_path)
    (run / "pretrain").symlink_to(elsewhere)
    before = _tree(tmp_path)
    with pytest.raises(UserError, match="pretrain is a symbolic link"):
        run_active(ActiveConfig(**TINY_ACTIVE), run)
    assert _tree(tmp_path) == before


def test_only_the_librarys_own_temp_files_are_removed(trained, tmp_path):
    run = _copy(trained, tmp_path)
    ours = run / ".checkpoint.pt.k3j2h1ab.tmp"
    ours.write_bytes(b"x" * 100)
    kept = [run / ".notes.txt.tmp", run / ".draft.tmp", run / ".config.json.tmp"]
    for path in kept:
        path.write_text("mine")
    (run / ".metrics.jsonl.q8w7e6r5.tmp").symlink_to(_thesis(tmp_path))
    kept.append(run / ".metrics.jsonl.q8w7e6r5.tmp")
    with RunDir(run).lock() as held:
        held.start(resume=True, overwrite=False)
    assert not ours.exists()
    assert all(p.is_symlink() or p.read_text() == "mine" for p in kept)
    assert (tmp_path / "thesis.tex").read_text() == "four years of work\n"


def test_an_empty_out_is_refused_from_python(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _digits()
    with pytest.raises(UserError, match="empty path"):
        fit(_small_model(data), data, epochs=1, out="", progress=False)
    assert list(tmp_path.iterdir()) == []


# -- failed starts and stubs -------------------------------------------------------------------
def _out_of_memory(model, data):
    raise MemoryError("simulated allocation failure")


def test_a_start_that_fails_before_its_first_checkpoint_leaves_no_trace(tmp_path):
    data = _digits()
    new = tmp_path / "new" / "run"
    with pytest.raises(MemoryError):
        fit(_small_model(data), data, epochs=1, out=new, evaluate=_out_of_memory, progress=False)
    assert not (tmp_path / "new").exists()
    mine = _empty(tmp_path)
    (mine / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    with pytest.raises(MemoryError):
        fit(_small_model(data), data, epochs=1, out=mine, evaluate=_out_of_memory, progress=False)
    assert _tree(tmp_path) == before
    fit(_small_model(data), data, epochs=1, out=mine, progress=False)  # the plain rerun
    assert (mine / "checkpoint.pt").is_file()


def test_an_active_start_that_fails_before_its_first_checkpoint_leaves_no_trace(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(active_loop, "evaluate", _out_of_memory)
    with pytest.raises(MemoryError):
        run_active(ActiveConfig(**TINY_ACTIVE), tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_a_stub_is_taken_over_by_a_plain_start(trained, tmp_path, capsys):
    """A run killed before its first epoch ended (config.json, an empty metrics.jsonl, its
    lock) cannot be resumed, and the same command without --resume takes it over."""
    stub = _empty(tmp_path)
    for name in ("config.json", ".lock"):
        shutil.copy(trained / name, stub / name)
    (stub / "metrics.jsonl").write_text("")
    assert main(["train", "--out", str(stub), "--resume", "--epochs", "2"]) == 2
    assert "start it again without --resume" in capsys.readouterr().err
    assert main([*TRAIN, "--out", str(stub)]) == 0
    assert len((stub / "metrics.jsonl").read_text().splitlines()) == 1


# -- integrity ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sidecar", [None, "", "{}", "[1]", '{"sha256": []}', '{"sha256": "abc"}', '{"sha256": ["0"]}']
)
def test_an_unverifiable_checkpoint_fails_closed(trained, tmp_path, sidecar):
    run = _sidecar(trained, "best.pt", sidecar)(tmp_path)
    with pytest.raises(UserError, match="cannot be verified .* --trust-unverified"):
        RunDir(run).load_checkpoint("best.pt")
    with pytest.warns(RunDirWarning, match="best.pt is not verified"):
        assert RunDir(run, trust_unverified=True).load_checkpoint("best.pt")["epoch"] == 1


def test_evaluate_trust_unverified_loads_with_one_warning(trained, tmp_path, capsys):
    run = _sidecar(trained, "best.pt", None)(tmp_path)
    assert main(["evaluate", str(run), "--trust-unverified"]) == 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "warning" in err and "not verified" in err


def test_a_run_from_before_the_marker_loads_without_checksums_with_a_warning(
    trained, tmp_path, capsys
):
    run = _sidecar(trained, "best.pt", None)(tmp_path)
    _edit_config(run, lambda c: [c.pop(k) for k in MARKER])
    assert main(["evaluate", str(run)]) == 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "best.pt is not verified" in err, err


def test_a_run_of_a_later_format_is_refused(trained, tmp_path):
    run = _crafted(trained, lambda c: c.update(format_version=99))(tmp_path)
    with pytest.raises(UserError, match="later ppl-ssvae"):
        RunDir(run).read_config()


# -- crafted active-labelling files ------------------------------------------------------------
def test_a_torn_line_of_queries_jsonl_is_dropped_with_a_note(labelled, tmp_path):
    run = _copy(labelled, tmp_path)
    lines = (run / "queries.jsonl").read_text().splitlines()
    torn = [*lines[:-1], lines[-1][: len(lines[-1]) // 2]]
    (run / "queries.jsonl").write_text("\n".join(torn))
    with pytest.warns(RunDirWarning, match=f"unreadable line {len(lines)}"):
        log = QueryLog(RunDir(run))
    assert len(log) == len(lines) - 1
    kept = (run / "queries.jsonl").read_text().splitlines()
    assert kept == lines[:-1]  # repaired on disk, as metrics.jsonl is


def test_damaged_labels_of_an_iteration_are_one_line(labelled, tmp_path):
    run = _copy(labelled, tmp_path)
    (run / "labels-001.json").write_text('{"labels": "abc"}')
    with pytest.raises(UserError, match="labels-001.json is damaged"):
        run_active(ActiveConfig(**TINY_ACTIVE), run, resume=True)
