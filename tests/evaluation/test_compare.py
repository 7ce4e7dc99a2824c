"""ppl-ssvae compare / ppl_ssvae.evaluation.compare: the table's numbers are the runs' own (saved
accuracy and CPU time, likelihood_report's ELBO and IWAE), the standard errors are those of
the per-image estimates, and scores are kept in the run and read back."""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch

from ppl_ssvae.cli import main
from ppl_ssvae.data import load, semi_supervised_split
from ppl_ssvae.errors import UserError
from ppl_ssvae.evaluation import compare
from ppl_ssvae.evaluation.likelihood import evaluation_inputs, likelihood_report, log_likelihood
from ppl_ssvae.models import build
from ppl_ssvae.runs.directory import BEST, RunDir
from ppl_ssvae.training import fit

K, ROWS = 4, 30


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny digits runs on the same data: a Gaussian guide and a MAF."""
    root = tmp_path_factory.mktemp("runs")
    data = semi_supervised_split(load("digits"), labels=50, seed=0)
    out = {}
    for guide in ("gaussian", "maf"):
        pyro.set_rng_seed(0)
        model = build("m2", input_dim=64, num_classes=10, z_dim=3, hidden=(16,), guide=guide)
        fit(model, data, epochs=2, batch_size=400, progress=False, out=root / guide)
        out[guide] = (root / guide, model)
    return out, data


def _best(run_dir, model):
    RunDir(run_dir).load_weights(model, BEST)
    return model


def _inputs(model, data):
    """The images likelihood_report scores: its seeded subset, binarised once."""
    order = torch.randperm(len(data.x_test), generator=torch.Generator().manual_seed(0))
    return evaluation_inputs(model, data.x_test[order[:ROWS]], 0)


def test_the_table_holds_the_runs_own_numbers(runs):
    (paths, data) = runs
    table = compare.compare_runs([paths["gaussian"][0], paths["maf"][0]], iwae=K, rows=ROWS)
    per_row = {}
    for row, guide in zip(table, ("gaussian", "maf"), strict=True):
        run_dir, model = paths[guide]
        history = [
            json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        best = torch.load(run_dir / BEST, weights_only=True)["epoch"]
        saved = next(h for h in history if h["epoch"] == best)
        assert row["guide"] == guide and row["epoch"] == best
        assert row["test_accuracy"] == saved["test_accuracy"]
        cpu = [h["epoch_cpu_seconds"] for h in history]
        assert row["cpu_seconds_per_epoch"] == pytest.approx(sum(cpu) / len(cpu))
        model = _best(run_dir, model)
        report = likelihood_report(model, data.x_test, K, ROWS, seed=0)
        assert row["test_elbo"] == pytest.approx(report["test_elbo"], abs=1e-6)
        assert row["test_log_likelihood"] == pytest.approx(report["test_log_likelihood"], abs=1e-6)
        assert row["gap"] == pytest.approx(row["test_log_likelihood"] - row["test_elbo"])
        per_row[guide] = log_likelihood(model, _inputs(model, data), num_samples=K, seed=0)
        values = per_row[guide].double()
        se = math.sqrt(((values - values.mean()) ** 2).sum().item() / (ROWS - 1) / ROWS)
        assert row["test_log_likelihood_se"] == pytest.approx(se, rel=1e-6)
        assert 0 <= row["active_units"] <= 3
    diff = (per_row["maf"] - per_row["gaussian"]).double()
    assert table[0]["vs_first"] is None
    assert table[1]["vs_first"] == pytest.approx(diff.mean().item(), abs=1e-5)
    paired = math.sqrt(((diff - diff.mean()) ** 2).sum().item() / (ROWS - 1) / ROWS)
    assert table[1]["vs_first_se"] == pytest.approx(paired, rel=1e-5)
    assert table[1]["vs_first_se"] < table[1]["test_log_likelihood_se"]  # the same images


def test_scores_are_kept_in_the_run_and_reused(runs, monkeypatch):
    (paths, _) = runs
    run = paths["gaussian"][0]
    first = compare.compare_runs([run], iwae=K, rows=ROWS)
    assert list(run.glob("compare-best-k4-rows30-seed0.json"))
    monkeypatch.setattr(compare, "score", lambda *a, **k: pytest.fail("scored again"))
    assert compare.compare_runs([run], iwae=K, rows=ROWS) == first
    with pytest.raises(pytest.fail.Exception):  # another K is another score
        compare.compare_runs([run], iwae=K + 1, rows=ROWS)


def test_active_units_count_units_whose_posterior_mean_varies(runs):
    """For a Gaussian guide the Monte Carlo activity (noise subtracted) matches the exact
    variance over images of the posterior mean."""
    (paths, data) = runs
    model = _best(*paths["gaussian"])
    x = evaluation_inputs(model, data.x_test[:200], 0)
    exact = model.encode(x)["z_mean"].var(0)
    counted = compare.active_units(model, x, samples=2000)
    assert counted == int((exact > compare.ACTIVE_THRESHOLD).sum())
    assert compare.active_units(model, x[:1]) is None


def test_standard_error_is_of_the_mean():
    values = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert compare.standard_error(values) == pytest.approx(math.sqrt(14 / 3 / 4))
    assert math.isnan(compare.standard_error(values[:1]))


def test_cli_prints_the_table_or_json(runs, capsys):
    (paths, _) = runs
    dirs = [str(paths["gaussian"][0]), str(paths["maf"][0])]
    assert main(["compare", *dirs, "--iwae", str(K), "--iwae-rows", str(ROWS), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table == compare.compare_runs(dirs, iwae=K, rows=ROWS)
    assert main(["compare", *dirs]) == 0  # no --iwae: no log-likelihood columns
    printed = capsys.readouterr().out
    assert "test ELBO" in printed and "IWAE" not in printed
    assert sum(line.startswith("| ") for line in printed.splitlines()) == 3  # header, 2 runs


@pytest.mark.parametrize("argv, message", [
    (["compare", "/no/such/run"], "not a run directory"),
    (["compare", "{run}", "--iwae", "0"], "must be an integer >= 1"),
    (["compare", "{run}", "--iwae", "3", "--iwae-rows", "0"], "positive number of test images"),
])  # fmt: skip
def test_cli_refusals_are_one_line(runs, capsys, argv, message):
    run = str(runs[0]["gaussian"][0])
    assert main([a.format(run=run) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_last_epoch_of_a_run_kept_without_its_checkpoint_is_its_best_file(runs, tmp_path):
    """A run kept with best.pt alone: --checkpoint last scores best.pt when that is the last
    epoch (the same weights as checkpoint.pt), and refuses in one line when it is not."""
    import shutil

    (paths, _) = runs
    source = paths["gaussian"][0]
    full = compare.compare_runs([source], iwae=K, rows=ROWS, checkpoint="last")
    kept = tmp_path / "kept"
    shutil.copytree(source, kept, ignore=shutil.ignore_patterns("checkpoint.pt*", "compare-*"))
    best = torch.load(kept / BEST, weights_only=True)["epoch"]
    assert best == 2  # this run's best epoch is its last, so best.pt holds the last weights
    (row,) = compare.compare_runs([kept], iwae=K, rows=ROWS, checkpoint="last")
    assert row["epoch"] == 2 and row["test_log_likelihood"] == full[0]["test_log_likelihood"]
    history = (kept / "metrics.jsonl").read_text()
    (kept / "metrics.jsonl").write_text(
        history + history.splitlines()[-1].replace('"epoch": 2', '"epoch": 3') + "\n"
    )
    with pytest.raises(UserError, match="best.pt is epoch 2, not its last \\(3\\)"):
        compare.compare_runs([kept], iwae=K, rows=ROWS, checkpoint="last")


def test_last_checkpoint_is_scored_as_it_is_when_the_records_run_ahead(runs, tmp_path):
    """checkpoint.pt is the last checkpoint written, whatever metrics.jsonl says after it
    (a crash between the two files); the best.pt stand-in check is for best.pt alone."""
    import shutil

    (paths, _) = runs
    kept = tmp_path / "ahead"
    shutil.copytree(paths["gaussian"][0], kept, ignore=shutil.ignore_patterns("compare-*"))
    history = (kept / "metrics.jsonl").read_text()
    (kept / "metrics.jsonl").write_text(
        history + history.splitlines()[-1].replace('"epoch": 2', '"epoch": 3') + "\n"
    )
    (row,) = compare.compare_runs([kept], iwae=K, rows=ROWS, checkpoint="last")
    assert row["epoch"] == 2 and row["checkpoint"] == "last"


class Killed(Exception):
    """Stands for the process being killed after the IWAE's second save."""


def test_an_interrupted_iwae_resumes_from_the_run_directory(runs, tmp_path, monkeypatch):
    """compare killed mid-IWAE leaves its progress in the run; the next compare resumes it
    (fewer passes) to the scores of an uninterrupted compare, then removes it."""
    import shutil

    from ppl_ssvae.evaluation import likelihood

    (paths, _) = runs
    source = paths["maf"][0]
    fresh, run = tmp_path / "fresh", tmp_path / "run"
    for copy in (fresh, run):
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("compare-*"))
    k = likelihood.MAX_ROWS // 10  # 10 items (row, class) a pass: 30 passes
    expected = compare.compare_runs([fresh], iwae=k, rows=ROWS)

    class Stopping(compare.KeptProgress):
        def __init__(self, key, read, write, warn=None):
            def dying(text):
                write(text)
                self.writes = getattr(self, "writes", 0) + 1
                if self.writes == 2:
                    raise Killed

            super().__init__(key, read, dying, every_seconds=0, warn=warn)

    monkeypatch.setattr(compare, "KeptProgress", Stopping)
    with pytest.raises(Killed):
        compare.compare_runs([run], iwae=k, rows=ROWS)
    progress = run / f"progress-compare-best-k{k}-rows30-seed0.json"
    assert len(json.loads(progress.read_text())["done"]) == 20  # two passes of 10 items
    monkeypatch.undo()
    passes = []
    weights = likelihood.log_weights
    monkeypatch.setattr(
        likelihood, "log_weights", lambda *a, **k: passes.append(1) or weights(*a, **k)
    )
    (resumed,) = compare.compare_runs([run], iwae=k, rows=ROWS)
    timing = ("run", "score_cpu_seconds")
    assert {n: v for n, v in resumed.items() if n not in timing} == {
        n: v for n, v in expected[0].items() if n not in timing
    }
    assert len(passes) == ROWS * 10 // 10 - 2  # the two saved passes are not done again
    assert not progress.exists() and (run / progress.name.removeprefix("progress-")).is_file()


def test_a_planted_link_in_place_of_kept_scores_is_refused(runs, tmp_path):
    import shutil

    (paths, _) = runs
    run = tmp_path / "run"
    shutil.copytree(paths["gaussian"][0], run, ignore=shutil.ignore_patterns("compare-*"))
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}")
    (run / "compare-best-k4-rows30-seed0.json").symlink_to(outside)
    with pytest.raises(UserError, match="link"):
        compare.compare_runs([run], iwae=K, rows=ROWS)
    assert outside.read_text() == "{}"


@pytest.mark.parametrize("name", ["compare-best-k4-rows30-seed0.json",
                                  "progress-compare-best-k1638-rows30-seed0.json"])  # fmt: skip
def test_a_users_file_under_a_compare_name_is_left_untouched(runs, tmp_path, monkeypatch, name):
    """A file compare did not write (not its JSON) is neither replaced nor removed: the
    scores are returned, and a warning says what was not kept and why."""
    import functools
    import shutil

    (paths, _) = runs
    run = tmp_path / "run"
    shutil.copytree(paths["gaussian"][0], run, ignore=shutil.ignore_patterns("compare-*"))
    (run / name).write_text("my notes")
    # Progress saved after every pass, 10 items a pass: the progress file would be written.
    monkeypatch.setattr(
        compare, "KeptProgress", functools.partial(compare.KeptProgress, every_seconds=0)
    )
    k = 1638 if name.startswith("progress") else K
    with pytest.warns(UserWarning, match="is not a file compare wrote") as said:
        (row,) = compare.compare_runs([run], iwae=k, rows=ROWS)
    assert (run / name).read_text() == "my notes"
    assert math.isfinite(row["test_log_likelihood"])
    if name.startswith("progress"):  # the scores themselves are kept beside the user's file
        assert (run / name.removeprefix("progress-")).is_file()
    assert len(said) == 1  # a progress file refused once stops the keeping
