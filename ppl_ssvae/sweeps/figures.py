"""A report's figures (matplotlib, the ``plots`` extra): learning curves per group with a
band of ± one standard deviation over its runs, and a metric against one varying setting
(accuracy against labels), one line per combination of the other settings."""

from __future__ import annotations

import io
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..runs.checkpoint import write_bytes_atomic
from .records import finite
from .report import METRICS, Report, aggregate


def write_figures(
    report: Report, out: Path, name: str, curve: str, against: str | None, metric: str
) -> list[Path]:
    """The figures written into ``out``; none, with one warning, without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("figures skipped: matplotlib is not installed (pip install "
                      "'ppl-ssvae[plots]'); the tables are written", stacklevel=3)  # fmt: skip
        return []
    written = [out / f"{name}-curves.png"]
    _curves(plt, report, curve, written[0])
    if against is not None and metric in report.metrics:
        written.append(out / f"{name}-{metric}-vs-{against}.png")
        _against(plt, report, against, metric, written[-1])
    return written


def _label(values: dict[str, Any], skip: str | None = None) -> str:
    shown = [f"{k}={v}" for k, v in values.items() if k != skip]
    return ", ".join(shown) or "all runs"


def _curves(plt: Any, report: Report, key: str, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    for values, runs in report.groups:
        by_epoch: dict[int, list[float]] = defaultdict(list)
        for run in runs:
            for h in run.history:
                if finite(h.get(key)):
                    by_epoch[h["epoch"]].append(float(h[key]))
        epochs = sorted(by_epoch)
        if not epochs:
            continue
        stats = [aggregate(by_epoch[e]) for e in epochs]
        mean = [s["mean"] for s in stats]
        sd = [s["sd"] or 0.0 for s in stats]
        (line,) = ax.plot(epochs, mean, marker=".", label=f"{_label(values)} (n={len(runs)})")
        ax.fill_between(epochs, [m - s for m, s in zip(mean, sd, strict=True)],
                        [m + s for m, s in zip(mean, sd, strict=True)], color=line.get_color(),
                        alpha=0.2)  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(key.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path, plt)


def _against(plt: Any, report: Report, setting: str, metric: str, path: Path) -> None:
    series: dict[str, list[tuple[Any, dict[str, Any]]]] = defaultdict(list)
    for values, runs in report.groups:
        stats = aggregate([r.metrics.get(metric) for r in runs])
        if stats["n"]:
            series[_label(values, skip=setting)].append((values[setting], stats))
    xs = sorted({x for points in series.values() for x, _ in points}, key=str)
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    if numeric:
        xs = sorted(xs)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        points.sort(key=lambda p: xs.index(p[0]))
        at = [p[0] if numeric else xs.index(p[0]) for p in points]
        ax.errorbar(at, [p[1]["mean"] for p in points], yerr=[p[1]["sd"] or 0.0 for p in points],
                    marker="o", capsize=3, label=label)  # fmt: skip
    if numeric and xs and min(xs) > 0 and max(xs) / min(xs) >= 20:
        ax.set_xscale("log")
    if numeric and len(xs) <= 12:
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
    if not numeric:
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_xlabel(setting)
    ax.set_ylabel(METRICS[metric][0] + " (mean ± sd)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path, plt)


def _save(fig: Any, path: Path, plt: Any) -> None:
    """Written atomically (a temp file renamed), like every file the library writes."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, dpi=120, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
