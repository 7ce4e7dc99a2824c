"""Reports across runs: one table grouped by the settings that vary, mean ± sd over the
seeds (and the number of runs), as markdown, CSV and JSON, with figures.

The runs come from sweep directories (their complete trials; pruned, failed, running and
waiting ones are counted and left out) and from run directories given one by one, in any
mix. Settings are read from each run's recorded spec, so the groups are whatever differs
between the runs, except the seed, over which the mean and standard deviation are taken::

    from ppl_ssvae.sweeps import report_runs, write_report

    report = report_runs(["runs/sweep"])
    print(report.markdown())
    write_report(report, "results/m2-labels", against="labels")
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..runs.checkpoint import read_regular_file, write_text_atomic
from ..runs.directory import RunDir
from .records import best_digest, finite, read_scores, summary

# The report's numbers: the run's key -> (the table's heading, its format).
METRICS = {
    "test_accuracy": ("test acc. (best val.)", ".4f"),
    "last_test_accuracy": ("test acc. (last)", ".4f"),
    "lowest_loss_test_accuracy": ("test acc. (lowest train. loss)", ".4f"),
    "test_accuracy_visible": ("test acc. visible classes", ".4f"),
    "test_accuracy_hidden": ("test acc. hidden classes", ".4f"),
    "test_elbo": ("test ELBO", ".2f"),
    "test_iwae": ("test IWAE", ".2f"),
    "val_iwae": ("val. IWAE", ".2f"),
    "epochs": ("epochs", ".1f"),
    "cpu_minutes": ("CPU-min", ".2f"),
}
# Settings that are not groups: the seed is what the mean is over; where the data lives
# differs between machines, not between settings.
NOT_GROUPS = {"fit.seed", "data.data_dir", "fit.device"}
SHORT = {"model.name": "model", "model.guide": "guide"}


@dataclass
class RunRecord:
    """One run: its directory, flattened settings (``fit.lr``...), numbers and epochs."""

    path: Path
    settings: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


@dataclass
class Report:
    """Runs grouped by the settings that vary: ``columns`` maps each such setting (its
    spec path) to its column name; ``groups`` holds each group's setting values (by column)
    and its runs; ``left_out`` counts sweep trials that are not complete, by state."""

    columns: dict[str, str]
    groups: list[tuple[dict[str, Any], list[RunRecord]]]
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        """The numbers at least one run has."""
        return [
            m for m in METRICS if any(finite(r.metrics.get(m)) for _, g in self.groups for r in g)
        ]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per group: its settings, ``runs`` and per metric mean, sd and n."""
        rows = []
        for values, runs in self.groups:
            row: dict[str, Any] = {**values, "runs": len(runs)}
            for metric in self.metrics:
                row[metric] = aggregate([r.metrics.get(metric) for r in runs])
            rows.append(row)
        return rows

    def markdown(self) -> str:
        heads = [*self.columns.values(), "runs", *(METRICS[m][0] for m in self.metrics)]
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for row in self.rows():
            cells = [_shown(row[c]) for c in self.columns.values()] + [str(row["runs"])]
            cells += [_stat(row[m], METRICS[m][1], row["runs"]) for m in self.metrics]
            lines.append("| " + " | ".join(cells) + " |")
        if self.left_out:
            said = ", ".join(f"{n} {state}" for state, n in sorted(self.left_out.items()))
            lines += ["", f"Left out (sweep trials not complete): {said}."]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        stats = [f"{m}_{s}" for m in self.metrics for s in ("mean", "sd", "n")]
        writer.writerow([*self.columns.values(), "runs", *stats])
        for row in self.rows():
            numbers = [row[m][s] for m in self.metrics for s in ("mean", "sd", "n")]
            writer.writerow(
                [_cell(row[c]) for c in self.columns.values()] + [row["runs"], *numbers]
            )
        return text.getvalue()

    def to_json(self) -> dict[str, Any]:
        groups = [{"settings": values, "runs": [str(r.path) for r in runs],
                   "metrics": {m: row[m] for m in self.metrics}}
                  for (values, runs), row in zip(self.groups, self.rows(), strict=True)]  # fmt: skip
        return {"settings": self.columns, "groups": groups, "left_out": self.left_out}


def aggregate(values: list[Any]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for fewer than two) and count of the finite
    numbers among ``values``."""
    numbers = [float(v) for v in values if finite(v)]
    return {"mean": statistics.fmean(numbers) if numbers else None,
            "sd": statistics.stdev(numbers) if len(numbers) > 1 else None, "n": len(numbers)}  # fmt: skip


def report_runs(paths: list[str | Path]) -> Report:
    """The report of the runs in ``paths``: sweep directories and run directories."""
    if not paths:
        raise UserError("report needs at least one sweep or run directory")
    directories: dict[Path, Path] = {}
    left_out: Counter[str] = Counter()
    for path in map(Path, paths):
        found, skipped = _sweep_runs(path) if _is_sweep(path) else ([path], Counter())
        left_out += skipped
        for run in found:
            directories.setdefault(run.resolve(), run)
    records = [read_run(run) for run in directories.values()]
    if not records:
        raise UserError(f"no complete run to report in {', '.join(map(str, paths))}")
    keys = _varying(records)
    columns = _column_names(keys)
    groups: dict[str, tuple[dict[str, Any], list[RunRecord]]] = {}
    for record in records:
        values = {columns[k]: record.settings.get(k) for k in keys}
        groups.setdefault(json.dumps(values, sort_keys=True, default=str), (values, []))[1].append(
            record
        )
    ordered = sorted(groups.values(), key=lambda g: [_order(g[0][c]) for c in columns.values()])
    return Report(columns, ordered, dict(left_out))


def read_run(path: Path) -> RunRecord:
    """A run's settings and numbers; one line for a directory that is not a run or has
    no finished epoch."""
    run = RunDir(path)
    config = run.read_config()
    history = run.read_history()
    if not history:
        raise UserError(f"{path} has no finished epoch (metrics.jsonl is empty); train it "
                        "first or leave it out")  # fmt: skip
    metrics = summary(history)
    scores = read_scores(run)
    if not finite(metrics.get("test_elbo")):
        metrics["test_elbo"] = scores.get("test_elbo")
    metrics |= {"val_iwae": scores.get("val_iwae"), "test_iwae": _compared_iwae(run)}
    return RunRecord(path, flat_settings(config), metrics, history)


def flat_settings(config: dict[str, Any]) -> dict[str, Any]:
    """A run's settings as ``{"fit.lr": 0.001, "model.options.z_dim": 50, ...}``: from its
    recorded spec, or, for runs from before specs, its recipe, model config and settings."""
    spec = config.get("spec")
    if spec:
        values = {k: spec.get(k) for k in ("data", "model", "fit", "init_from", "evaluator")}
        callbacks = [c for c in spec.get("callbacks") or [] if c.get("name") != "sweep_trial"]
        values["callbacks"] = json.dumps(callbacks, sort_keys=True) if callbacks else None
    else:
        recipe = dict((config.get("data") or {}).get("recipe") or {})
        recipe.pop("seed", None)
        values = {"data": recipe, "model": config.get("model"), "fit": config.get("fit")}
    flat: dict[str, Any] = {}
    _flatten(values, "", flat)
    return flat


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            _flatten(inner, f"{prefix}.{key}" if prefix else str(key), out)
    elif prefix:
        out[prefix] = None if value == {} else json.loads(json.dumps(value, default=str))


def _varying(records: list[RunRecord]) -> list[str]:
    keys = list(dict.fromkeys(k for r in records for k in r.settings))
    seen = lambda k: {json.dumps(r.settings.get(k), sort_keys=True) for r in records}  # noqa: E731
    return [k for k in keys if k not in NOT_GROUPS and len(seen(k)) > 1]


def _column_names(keys: list[str]) -> dict[str, str]:
    leaves = [SHORT.get(k, k.rsplit(".", 1)[-1]) for k in keys]
    return {k: leaf if leaves.count(leaf) == 1 else k for k, leaf in zip(keys, leaves, strict=True)}


def _is_sweep(path: Path) -> bool:
    from .storage import SWEEP_FILE

    return (path / SWEEP_FILE).is_file()


def _sweep_runs(path: Path) -> tuple[list[Path], Counter[str]]:
    """The run directories of a sweep's complete trials, and its other trials by state
    (a trial that was queued again is counted by its retry)."""
    from .storage import read_sweep_file

    trials = read_sweep_file(path).load_study().get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    runs, others = [], Counter()
    for trial in trials:
        name = trial.user_attrs.get("run_dir")
        if trial.state.name == "COMPLETE" and name:
            runs.append(path / name)
        elif trial.number not in retried:
            others[trial.state.name.lower().replace("fail", "failed")] += 1
    return runs, others


def _compared_iwae(run: RunDir) -> float | None:
    """The test IWAE that ``ppl-ssvae compare --iwae K`` kept for the run's best.pt (the
    largest K scored); None where none was."""
    digest, found = None, {}
    for file in run.path.glob("compare-best-k*-rows*-seed*.json"):
        try:
            saved = json.loads(read_regular_file(file))
            key, scores = saved["key"], saved["scores"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        digest = digest or best_digest(run)
        if key.get("sha256") == digest and finite(scores.get("test_log_likelihood")):
            found[key.get("iwae") or 0] = scores["test_log_likelihood"]
    return found[max(found)] if found else None


def write_report(
    report: Report, out: str | Path, name: str = "report", against: str | None = None,
    metric: str = "test_accuracy", curve: str | None = None, figures: bool = True,
) -> list[Path]:  # fmt: skip
    """Write ``out/NAME.md``, ``.csv``, ``.json`` and, with matplotlib, the figures
    (``NAME-curves.png``; ``NAME-METRIC-vs-SETTING.png``); the files written. Nothing is
    written anywhere else; ``name`` must be a file name, not a path."""
    check_name(name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a directory")
    setting = _against(report, against)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{name}.md", out / f"{name}.csv", out / f"{name}.json"]
    texts = [report.markdown(), report.csv(), json.dumps(report.to_json(), indent=2) + "\n"]
    for path, text in zip(written, texts, strict=True):
        write_text_atomic(path, text)
    if figures:
        from . import figures as draw

        curve = curve or ("val_accuracy" if _has(report, "val_accuracy") else "elbo")
        written += draw.write_figures(report, out, name, curve, setting, metric)
    return written


def check_name(name: str) -> str:
    """``name`` if it is one file name: a report named ``../x`` would write elsewhere."""
    if name in ("", ".", "..") or any(c in name for c in "/\\\0") or name.startswith("-"):
        raise UserError(f"report name {name!r} must be a file name, not a path (no '/', '..')")
    return name


def _against(report: Report, against: str | None) -> str | None:
    """The column the metric is drawn against: the one named, else the first varying
    setting whose values are numbers, else the first; None without any."""
    columns = list(report.columns.values())
    if against is not None:
        if against not in columns:
            raise UserError(f"--against {against!r} is not a setting that varies between these "
                            f"runs; choose one of {', '.join(columns) or 'none'}")  # fmt: skip
        return against
    numeric = [c for c in columns if all(_number(v[c]) for v, _ in report.groups)]
    return (numeric or columns or [None])[0]


def _has(report: Report, key: str) -> bool:
    return any(finite(h.get(key)) for _, runs in report.groups for r in runs for h in r.history)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _order(value: Any) -> tuple[int, Any]:
    return (0, value) if _number(value) else (1, json.dumps(value, sort_keys=True, default=str))


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _shown(value: Any) -> str:
    """A setting's value in the markdown table: floats to 6 significant digits."""
    return f"{value:.6g}" if isinstance(value, float) else _cell(value)


def _stat(stats: dict[str, Any], fmt: str, runs: int) -> str:
    if stats["n"] == 0 or stats["mean"] is None or not math.isfinite(stats["mean"]):
        return "–"
    text = format(stats["mean"], fmt)
    if stats["sd"] is not None:
        text += f" ± {format(stats['sd'], fmt)}"
    return text + (f" (n={stats['n']})" if stats["n"] != runs else "")
