"""The hostile-user replay: bad input and faults, each answered by one line, exit 2, no
traceback, and a run directory left exactly as it was (CLI cases through the command's
``main`` in this process, one also as its own process); then the run-directory rules from
Python."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ppl_ssvae.cli import main
from ppl_ssvae.data import load, semi_supervised_split, write_idx
from ppl_ssvae.errors import UserError
from ppl_ssvae.models import build
from ppl_ssvae.runs.directory import RunDir, RunDirWarning
from ppl_ssvae.training import fit

from .cli_in_process import assert_refused_in_one_line, run_as_process, run_in_process

TINY = ["--dataset", "digits", "--labels", "50", "--z-dim", "4", "--hidden", "16",
        "--batch-size", "200", "--no-progress"]  # fmt: skip
TRAIN = ["train", *TINY, "--epochs", "1"]


def _snapshot(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def _write_mnist(directory: Path, train: np.ndarray, test: np.ndarray) -> None:
    directory.mkdir(parents=True)
    write_idx(directory / "train-images-idx3-ubyte.gz", train)
    write_idx(directory / "train-labels-idx1-ubyte.gz", np.zeros(len(train), np.uint8))
    write_idx(directory / "t10k-images-idx3-ubyte.gz", test)
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", np.zeros(len(test), np.uint8))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished one-epoch CLI run."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    return run


def _variant(trained: Path, root: Path, name: str, edit) -> Path:
    copy = root / name
    shutil.copytree(trained, copy)
    edit(copy)
    return copy


def _flip_a_byte_in_the_tensor_data(run: Path) -> None:
    data = bytearray((run / "best.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (run / "best.pt").write_bytes(bytes(data))


def _weights_without_model(run: Path) -> None:
    torch.save({"epoch": 1}, run / "best.pt")
    digest = hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()
    (run / "best.pt.sha256").write_text(json.dumps({"sha256": [digest]}))


def _another_models_weights(run: Path) -> None:
    other = build("m2", input_dim=64, num_classes=10, z_dim=7, hidden=(16,))
    torch.save({"model": other.state_dict(), "epoch": 1}, run / "best.pt")
    digest = hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()
    (run / "best.pt.sha256").write_text(json.dumps({"sha256": [digest]}))  # a check it passes


def _cases(root: Path, trained: Path) -> dict[str, tuple[list[str], str, Path]]:
    """name -> (argv, expected part of the one error line, path that must not change)."""
    fresh = root / "fresh"  # never created by any case
    a_file = root / "a_file"
    a_file.write_text("not a directory")
    data = root / "data"
    _write_mnist(data / "zero", np.zeros((0, 28, 28), np.uint8), np.zeros((0, 28, 28), np.uint8))
    _write_mnist(data / "sizes", np.zeros((20, 28, 28), np.uint8), np.zeros((5, 14, 14), np.uint8))
    _write_mnist(
        data / "deflate", np.zeros((20, 28, 28), np.uint8), np.zeros((5, 28, 28), np.uint8)
    )
    deflate = data / "deflate" / "train-images-idx3-ubyte.gz"
    raw = bytearray(deflate.read_bytes())
    raw[12:40] = bytes(28)  # inside the deflate stream, past the gzip header
    deflate.write_bytes(bytes(raw))
    out = ["--out", str(fresh)]
    mnist = ["train", "--dataset", "mnist", "--no-progress", *out, "--data-dir"]
    every_class = ",".join(map(str, range(10)))

    def copy(name: str) -> Path:  # each case its own run: the cases run at once
        return _variant(trained, root, name, lambda run: None)

    return {
        "device foo": ([*TRAIN, "--device", "foo", *out], "unknown device 'foo'", fresh),
        "device mps": ([*TRAIN, "--device", "mps", *out], "device 'mps' is not supported", fresh),
        "device gpu": ([*TRAIN, "--device", "gpu", *out], "unknown device 'gpu'", fresh),
        "lr -1": ([*TRAIN, "--lr", "-1", *out], "lr=-1.0 must be a finite number > 0", fresh),
        "lr nan": ([*TRAIN, "--lr", "nan", *out], "lr=nan must be a finite number > 0", fresh),
        "eps -1": ([*TRAIN, "--eps", "-1", *out], "eps=-1.0 must be > 0", fresh),
        "momentum with adam": ([*TRAIN, "--momentum", "0.9", *out], "adam takes no 'momentum'", fresh),
        "rho 2": ([*TRAIN, "--optimizer", "rmsprop", "--rho", "2", *out], "rho=2.0 must be in [0, 1)", fresh),
        "z-dim 0": ([*TRAIN, "--z-dim", "0", *out], "z_dim must be finite and > 0", fresh),
        "hidden 0": ([*TRAIN, "--hidden", "0", *out], "hidden must be finite and > 0", fresh),
        "sigma2 0": ([*TRAIN, "--likelihood", "gaussian", "--sigma2", "0", *out], "sigma2 must be finite and > 0", fresh),
        "sigma2 -1": ([*TRAIN, "--likelihood", "gaussian", "--sigma2", "-1", *out], "sigma2 must be", fresh),
        "alpha -5": ([*TRAIN, "--alpha", "-5", *out], "alpha must be finite and >= 0", fresh),
        "max-minutes -1": ([*TRAIN, "--max-minutes", "-1", *out], "max_minutes=-1.0 must be", fresh),
        "epochs -1": ([*TRAIN, "--epochs", "-1", *out], "epochs=-1 must be", fresh),
        "num-particles 0": ([*TRAIN, "--num-particles", "0", *out], "num_particles=0 must be", fresh),
        "model-arg z_dim=abc": ([*TRAIN, "--model-arg", "z_dim=abc", *out], "z_dim must be an integer, got 'abc'", fresh),
        "model-arg z_dim=-4": ([*TRAIN, "--model-arg", "z_dim=-4", *out], "z_dim must be finite and > 0, got -4", fresh),
        "model-arg hidden=[a]": ([*TRAIN, "--model-arg", 'hidden=["a"]', *out], "hidden must be an integer, got 'a'", fresh),
        "model-arg alpha=str": ([*TRAIN, "--model-arg", 'alpha="x"', *out], "alpha must be a number, got 'x'", fresh),
        "label-fraction, every class hidden": (
            ["train", "--dataset", "digits", "--hidden-classes", every_class, "--label-fraction",
             "0.5", "--no-progress", *out], "every class is hidden", fresh),  # fmt: skip
        "corrupt deflate stream": ([*mnist, str(data / "deflate")], "corrupt", fresh),
        "zero images": ([*mnist, str(data / "zero")], "holds 0 images", fresh),
        "test images of another size": ([*mnist, str(data / "sizes")], "14x14", fresh),
        "out is a file": ([*TRAIN, "--out", str(a_file)], "is a file, not a run directory", a_file),
        "out below a file": ([*TRAIN, "--out", str(a_file / "run")], "lies below the file", a_file),
        "out holds a run": ([*TRAIN, "--out", str(v := copy("holds"))], "already holds a run; use --resume, or --overwrite", v),
        "resume and overwrite": ([*TRAIN, "--out", str(v := copy("both")), "--resume", "--overwrite"], "exclude each other", v),
        "nothing left to train": (["train", "--out", str(v := copy("done")), "--resume", "--epochs", "1"], "nothing left to train", v),
        "corrupt config.json": (
            ["evaluate", str(v := _variant(trained, root, "badconfig",
                                           lambda r: (r / "config.json").write_text("{oops")))],
            "is not valid JSON", v),  # fmt: skip
        "best.pt without model": (
            ["evaluate", str(v := _variant(trained, root, "nomodel", _weights_without_model))],
            "holds no 'model' weights", v),  # fmt: skip
        "best.pt of another model": (
            ["evaluate", str(v := _variant(trained, root, "othermodel", _another_models_weights))],
            "does not fit the model in config.json", v),  # fmt: skip
        "flipped bits in best.pt": (
            ["evaluate", str(v := _variant(trained, root, "flipped", _flip_a_byte_in_the_tensor_data))],
            "fails its SHA-256 check", v),  # fmt: skip
    }  # fmt: skip


@pytest.fixture(scope="module")
def replayed(trained, tmp_path_factory):
    """Every CLI case planted, and what each must leave unchanged snapshotted, up front."""
    root = tmp_path_factory.mktemp("cases")
    cases = _cases(root, trained)
    return root, cases, {name: _snapshot(path) for name, (_, _, path) in cases.items()}


CASE_NAMES = [
    "device foo", "device mps", "device gpu", "lr -1", "lr nan", "eps -1", "momentum with adam",
    "rho 2", "z-dim 0", "hidden 0", "sigma2 0", "sigma2 -1", "alpha -5", "max-minutes -1",
    "epochs -1", "num-particles 0", "model-arg z_dim=abc", "model-arg z_dim=-4",
    "model-arg hidden=[a]", "model-arg alpha=str", "label-fraction, every class hidden",
    "corrupt deflate stream", "zero images", "test images of another size", "out is a file",
    "out below a file", "out holds a run", "resume and overwrite", "nothing left to train",
    "corrupt config.json", "best.pt without model", "best.pt of another model",
    "flipped bits in best.pt",
]  # fmt: skip


@pytest.mark.parametrize("case", CASE_NAMES)
def test_cli_refuses_with_one_line_and_changes_nothing(replayed, case):
    root, cases, before = replayed
    argv, expected, path = cases[case]
    assert_refused_in_one_line(*run_in_process(argv, root), expected)
    assert _snapshot(path) == before[case]


def test_a_refusal_is_the_same_from_its_own_process(replayed):
    """The in-process replay above calls the function the command calls; this checks the
    process around it adds nothing: exit code 2 and the same single line."""
    root, cases, before = replayed
    argv, expected, path = cases["lr -1"]
    code, stderr = run_as_process(argv, root)
    assert_refused_in_one_line(code, stderr, expected)
    assert (code, stderr) == run_in_process(argv, root)
    assert _snapshot(path) == before["lr -1"]


def test_every_case_is_replayed(tmp_path, trained):
    assert sorted(_cases(tmp_path, trained)) == sorted(CASE_NAMES)


def test_exploding_loss_is_one_line_exit_1_with_the_checkpoint_named(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ppl_ssvae.cli", *TRAIN[:-1], "3", "--lr", "1e6",
                           "--out", str(run)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "non-finite" in proc.stderr or "diverged" in proc.stderr
    if (run / "checkpoint.pt").exists():
        epoch = RunDir(run).load_checkpoint("checkpoint.pt")["epoch"]
        assert f"(epoch {epoch})" in proc.stderr
    else:
        assert "no checkpoint was written" in proc.stderr


def test_out_on_a_read_only_filesystem(tmp_path, monkeypatch, capsys):
    mount = tmp_path / "ro"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                             capture_output=True).returncode == 0  # fmt: skip
    try:
        if not mounted:  # no permission to mount: the same answer from the access check
            monkeypatch.setattr(os, "access", lambda path, mode: False)
        assert main([*TRAIN, "--out", str(mount / "run")]) == 2
        err = capsys.readouterr().err
        assert "read-only or no permission" in err and len(err.strip().splitlines()) == 1
        assert not (mount / "run").exists()
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], check=True)


def test_a_second_training_into_a_locked_run_directory_is_refused(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.lock():
        proc = subprocess.run([sys.executable, "-m", "ppl_ssvae.cli", *TRAIN, "--out", str(run.path)],
                              capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and f"in use by another training (pid {os.getpid()})" in proc.stderr
    assert sorted(p.name for p in run.path.iterdir()) == [".lock"]


def test_overwrite_clears_the_old_run_and_keeps_other_files(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "notes.txt").write_text("mine")
    old_best = (run / "best.pt").read_bytes()
    assert main([*TRAIN, "--out", str(run), "--overwrite", "--seed", "3"]) == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert (run / "best.pt").read_bytes() != old_best
    assert json.loads((run / "config.json").read_text())["fit"]["seed"] == 3
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def _digits():
    return semi_supervised_split(load("digits"), labels=50, seed=0)


def _small_model(data):
    return build("m2", input_dim=data.input_dim, num_classes=10, z_dim=4, hidden=(16,))


def test_python_fit_refuses_a_directory_that_holds_a_run_unless_asked(tmp_path):
    data = _digits()
    fit(_small_model(data), data, epochs=1, out=tmp_path, progress=False)
    before = _snapshot(tmp_path)
    with pytest.raises(UserError, match="already holds a run"):
        fit(_small_model(data), data, epochs=1, out=tmp_path, progress=False)
    assert _snapshot(tmp_path) == before
    fit(_small_model(data), data, epochs=2, out=tmp_path, progress=False, overwrite=True)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_python_run_evaluates_and_resumes_from_the_cli(tmp_path, capsys):
    data = _digits()
    fit(_small_model(data), data, epochs=1, out=tmp_path, progress=False)
    assert main(["evaluate", str(tmp_path)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert (
        main(["train", "--out", str(tmp_path), "--resume", "--epochs", "2", "--no-progress"]) == 0
    )
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_resume_drops_a_torn_line_and_epochs_past_the_checkpoint(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    good = (run / "metrics.jsonl").read_text()
    after = json.dumps({**json.loads(good), "epoch": 2})
    (run / "metrics.jsonl").write_text(good + after + "\n" + '{"epoch": 3, "train_lo')
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "ppl-ssvae: warning:" in err and len(err.strip().splitlines()) == 1
    assert "epoch 2 (after the checkpoint), unreadable line 3" in err
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == good.strip() and [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_python_resume_warns_of_what_it_dropped(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "tra')
    data = _digits()
    with pytest.warns(RunDirWarning, match="unreadable line 2"):
        fit(_small_model(data), data, epochs=2, out=run, resume=True, progress=False)


def test_a_write_that_fails_mid_resume_loses_nothing(trained, tmp_path):
    """``ulimit -f``: config.json cannot be rewritten; the resume stops with one line, and
    metrics.jsonl and the checkpoint are whole, so the next resume works."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = _snapshot(run)
    limit = len((run / "config.json").read_bytes()) - 10

    def cap_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    resume = [sys.executable, "-m", "ppl_ssvae.cli", "train", "--out", str(run), "--resume",
              "--epochs", "2", "--no-progress"]  # fmt: skip
    proc = subprocess.run(resume, capture_output=True, text=True, preexec_fn=cap_file_size)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "could not write" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    after = _snapshot(run)
    assert after.pop(".lock") != before.pop(".lock")  # only the lock's owner changed
    assert after == before
    assert subprocess.run(resume, capture_output=True).returncode == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one(trained, tmp_path):
    """The disk fills at the checkpoint of epoch 2 (the file-size cap lets config.json and
    metrics.jsonl through): one line, exit 2, and checkpoint.pt is still epoch 1's,
    verified; the next resume redoes epoch 2."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    limit = 4 * max(len((run / n).read_bytes()) for n in ("config.json", "metrics.jsonl"))
    assert limit < len((run / "checkpoint.pt").read_bytes())

    def cap_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    resume = [sys.executable, "-m", "ppl_ssvae.cli", "train", "--out", str(run), "--resume",
              "--epochs", "2", "--no-progress"]  # fmt: skip
    proc = subprocess.run(resume, capture_output=True, text=True, preexec_fn=cap_file_size)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert ".pt" in proc.stderr and "is kept" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert RunDir(run).load_checkpoint("checkpoint.pt")["epoch"] == 1
    assert not list(run.glob(".*.tmp"))
    assert subprocess.run(resume, capture_output=True).returncode == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_stale_temp_files_are_removed_and_files_get_the_umask_mode(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    stale = run / ".checkpoint.pt.k3j2h1.tmp"
    stale.write_bytes(b"x" * 1000)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert not stale.exists()
    mask = os.umask(0)
    os.umask(mask)
    for name in ("checkpoint.pt", "best.pt", "config.json", "metrics.jsonl"):
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_a_kill_between_the_checksum_and_the_checkpoint_still_verifies(trained, tmp_path):
    """The sidecar is written first and keeps the previous checksum: a process killed
    after it but before the checkpoint's rename leaves the old checkpoint loadable."""
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained, run.path)
    old = run.file("checkpoint.pt").read_bytes()
    with run.lock():
        run.save_checkpoint("checkpoint.pt", {"model": {}, "epoch": 9})
    run.file("checkpoint.pt").write_bytes(old)  # as if the rename had not happened
    assert run.load_checkpoint("checkpoint.pt")["epoch"] == 1
