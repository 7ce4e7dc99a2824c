"""Summarise `ppl-ssvae train` run directories into a results table.

    python experiments/report_runs.py runs/m2-a runs/m2-b --name m2_fashion_mnist

For each run: its command line (rebuilt from config.json), the best-validation epoch,
validation and test accuracy there, epochs run and CPU-minutes. Writes
results/<name>/ with results.md, results.csv, curve.png and each run's config and metrics.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import plot_curves, write_results  # noqa: E402
from ppl_ssvae.cli import TRAIN_DEFAULTS  # noqa: E402
from ppl_ssvae.train import FitResult  # noqa: E402


def command_line(cli: dict) -> str:
    """The `ppl-ssvae train` options that differ from the defaults."""
    parts = ["ppl-ssvae train"]
    for key, value in cli.items():
        if key in ("progress", "model_arg") or value == TRAIN_DEFAULTS.get(key):
            continue
        flag = "--" + key.replace("_", "-")
        parts.append(flag if value is True else f"{flag} {value}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args(argv)

    rows, curves = [], {}
    for run in args.runs:
        config = json.loads((run / "config.json").read_text())
        history = [
            json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line
        ]
        best = max(history, key=lambda h: h["val_accuracy"])
        rows.append(
            {
                "run": run.name,
                "command": command_line(config["cli"]) + f" --out {run}",
                "best_epoch": best["epoch"],
                "val_accuracy": best["val_accuracy"],
                "test_accuracy": best["test_accuracy"],
                "epochs": len(history),
                "cpu_minutes": history[-1]["elapsed_cpu_seconds"] / 60,
                "threads": config["environment"]["threads"],
            }
        )
        curves[run.name] = FitResult(history=history)
    out = write_results(args.name, rows, {"runs": [str(r) for r in args.runs]}, args.results_dir)
    for run in args.runs:
        for name in ("config.json", "metrics.jsonl"):
            shutil.copy(run / name, out / f"{run.name}.{name}")
    plot_curves(out / "curve.png", curves)
    print((out / "results.md").read_text())
    return out


if __name__ == "__main__":
    main()
