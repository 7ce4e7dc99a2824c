"""``ppl-ssvae report``: one table grouped by the settings that vary, mean ± sd over the
seeds, from a sweep directory or any run directories; written only where it is told."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from ppl_ssvae.cli import main
from ppl_ssvae.sweeps import report_runs

from .conftest import trials

pytest.importorskip("optuna")


def _by_labels(sweep_dir) -> dict[int, list[dict]]:
    """Each run's best-validation epoch, by its labels: what the table must average."""
    runs: dict[int, list[dict]] = {}
    for trial in trials(sweep_dir):
        lines = (sweep_dir / trial.user_attrs["run_dir"] / "metrics.jsonl").read_text().splitlines()
        history = [json.loads(line) for line in lines]
        runs.setdefault(trial.params["labels"], []).append(
            max(history, key=lambda h: h["val_accuracy"])
        )
    return runs


def test_the_report_of_a_grid_is_grouped_by_labels_over_seeds(
    grid_sweep, tmp_path, monkeypatch, capsys
):
    path, _ = grid_sweep
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(path)]) == 0  # printed, nothing written
    printed = capsys.readouterr().out
    assert (
        printed.startswith("| labels | runs | test acc. (best val.) |")
        and list(tmp_path.iterdir()) == []
    )
    out = tmp_path / "tables"
    assert main(["report", str(path), "--out", str(out), "--name", "m2-labels"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "m2-labels-curves.png", "m2-labels-test_accuracy-vs-labels.png", "m2-labels.csv",
        "m2-labels.json", "m2-labels.md",
    ]  # fmt: skip
    assert (out / "m2-labels.md").read_text() == printed
    groups = json.loads((out / "m2-labels.json").read_text())["groups"]
    expected = _by_labels(path)
    assert [g["settings"] for g in groups] == [{"labels": 50}, {"labels": 100}]
    for group in groups:
        best = expected[group["settings"]["labels"]]
        accuracy = [h["test_accuracy"] for h in best]
        assert group["metrics"]["test_accuracy"] == {
            "mean": pytest.approx(statistics.fmean(accuracy)),
            "sd": pytest.approx(statistics.stdev(accuracy)), "n": 2,
        }  # fmt: skip
        assert group["metrics"]["epochs"]["mean"] == 1 and len(group["runs"]) == 2
        assert group["metrics"]["test_elbo"]["n"] == 2
    rows = list(csv.DictReader((out / "m2-labels.csv").open()))
    assert [r["labels"] for r in rows] == ["50", "100"] and rows[0]["runs"] == "2"
    assert all(p.stat().st_size > 1000 for p in out.glob("*.png"))


def test_any_run_directories_give_the_same_table_as_their_sweep(grid_sweep):
    path, _ = grid_sweep
    runs = sorted(p for p in path.iterdir() if p.is_dir())
    from_runs = report_runs(runs)
    assert from_runs.rows() == report_runs([path]).rows()
    assert report_runs([path, runs[0]]).rows() == from_runs.rows()  # each run counted once
    one = report_runs(runs[:1])
    assert one.columns == {} and one.rows()[0]["test_accuracy"]["sd"] is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--name", "../elsewhere"], "must be a file name, not a path"),
        (["--name", "a/b"], "must be a file name, not a path"),
        (["--against", "lr"], "--against 'lr' is not a setting that varies"),
        (["--metric", "accuracy"], "--metric 'accuracy'"),
    ],
)
def test_report_refuses_names_that_are_paths(grid_sweep, tmp_path, capsys, argv, message):
    path, _ = grid_sweep
    out = tmp_path / "out"
    assert main(["report", str(path), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and not (tmp_path / "elsewhere.md").exists()


def test_report_refuses_what_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    assert main(["report", str(tmp_path / "notes")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_cluster_and_label_runs_report_their_visible_and_hidden_class_accuracies(tmp_path):
    """Willetts et al. Table 1's columns: accuracy on the classes that kept labels and on
    those that lost them all, at the best-validation epoch; absent for plain runs."""
    common = ["train", "--dataset", "digits", "--model", "m2", "--z-dim", "4", "--hidden", "16",
              "--epochs", "1", "--batch-size", "100", "--no-progress", "--label-fraction",
              "0.3", "--hidden-classes", "0,1"]  # fmt: skip
    runs = [tmp_path / f"seed{s}" for s in (0, 1)]
    for seed, run in enumerate(runs):
        assert main([*common, "--seed", str(seed), "--out", str(run)]) == 0
    (group,) = report_runs(runs).rows()
    for key in ("test_accuracy_visible", "test_accuracy_hidden"):
        values = [json.loads((r / "metrics.jsonl").read_text().splitlines()[-1])[key] for r in runs]
        assert group[key]["mean"] == pytest.approx(statistics.fmean(values))
        assert group[key]["n"] == 2
    assert "test acc. hidden classes" in report_runs(runs).markdown()


def test_selection_by_lowest_training_loss_is_reported_beside_selection_by_validation():
    """Jurasinski's Fig 12: the epoch of the lowest training loss, chosen without a
    validation set, against the best-validation epoch and the last."""
    from ppl_ssvae.sweeps.records import summary

    history = [
        {"epoch": 1, "train_loss": 5.0, "val_accuracy": 0.5, "test_accuracy": 0.1},
        {"epoch": 2, "train_loss": 3.0, "val_accuracy": 0.4, "test_accuracy": 0.2},
        {"epoch": 3, "train_loss": 3.0, "val_accuracy": 0.6, "test_accuracy": 0.3},
        {"epoch": 4, "train_loss": 4.0, "val_accuracy": 0.6, "test_accuracy": 0.4},
    ]
    numbers = summary(history)
    assert (numbers["best_epoch"], numbers["test_accuracy"]) == (3, 0.3)
    assert (numbers["lowest_loss_epoch"], numbers["lowest_loss_test_accuracy"]) == (2, 0.2)
    assert numbers["last_test_accuracy"] == 0.4
    unscored = [{k: v for k, v in h.items() if k != "train_loss"} for h in history]
    assert summary(unscored)["lowest_loss_epoch"] == 4  # no loss recorded: the last epoch


def test_the_report_shows_the_lowest_loss_selection(grid_sweep):
    path, _ = grid_sweep
    report = report_runs([path])
    assert "test acc. (lowest train. loss)" in report.markdown()
    for values, runs in report.groups:
        chosen = [min(r.history, key=lambda h: h["train_loss"])["test_accuracy"] for r in runs]
        (row,) = [r for r in report.rows() if r["labels"] == values["labels"]]
        assert row["lowest_loss_test_accuracy"]["mean"] == pytest.approx(statistics.fmean(chosen))
