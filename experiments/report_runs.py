"""Summarise `ppl-ssvae train` run directories into a results table.

    python -m experiments.report_runs runs/m2-a runs/m2-b --name m2_fashion_mnist

For each run: its command line (rebuilt from config.json), the best-validation epoch,
validation and test accuracy there, epochs run and CPU-minutes. Clustering runs (hidden
classes, extra classes or no labels) add the cluster mapping and the test accuracy on
visible and on hidden classes (Willetts et al. Table 1's columns). Writes results/<name>/
with results.md, results.csv, curve.png and each run's config and metrics, and its
confusion matrix and z-unit activity when the run has them (and curve_hidden.png: hidden-class
accuracy against CPU-minutes, when a run has hidden classes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

from experiments.common import (
    ScriptParser,
    folder_name,
    plot_curves,
    run_script,
    write_results,
)
from ppl_ssvae.errors import UserError
from ppl_ssvae.runs.directory import RunDir
from ppl_ssvae.training import FitResult

# Extra columns of clustering runs, from their best-validation epoch's metrics.
CLUSTERING_COLUMNS = ("cluster_mapping", "test_accuracy_visible", "test_accuracy_hidden")
# torch's name of an optimizer argument -> its `ppl-ssvae train` flag (RMSprop's alpha is
# Keras's rho; --alpha is the model's classification weight).
OPTIMIZER_FLAGS = {"alpha": "rho"}
# What `ppl-ssvae train` writes into a clustering run's directory.
CLUSTERING_FILES = ("confusion_matrix.csv", "confusion_matrix.png", "unit_activity.json")


def command_line(config: dict) -> str:
    """The `ppl-ssvae train` command of a run, spelled out from the values it recorded.

    Effective values (``fit``, ``model``) are written explicitly rather than diffed against
    today's defaults, so the command stays right when defaults change later.
    """
    # A run started from Python has no "cli" record: its data recipe names the same options.
    cli = config.get("cli") or config.get("data", {}).get("recipe") or {}
    fit, model = config["fit"], config["model"]
    if "dataset" not in cli:
        raise SystemExit(
            f"report_runs: {config.get('model', {}).get('model')} run has no "
            "dataset recipe (data built by hand); it has no command line"
        )
    parts = ["ppl-ssvae train", f"--model {model['model']}", f"--dataset {cli['dataset']}"]
    for key in ("labels", "label_fraction", "hidden_classes", "extra_classes", "std_threshold"):
        value = cli.get(key)
        if isinstance(value, list):  # a recipe's class ids
            value = ",".join(map(str, value))
        # --labels 0 (clustering) is a setting; a 0 elsewhere is the default.
        if value not in (None, "", []) and (value != 0 or key == "labels"):
            parts.append(f"--{key.replace('_', '-')} {value}")
    parts += [
        f"--epochs {fit['epochs']}",
        f"--seed {fit['seed']}",
        f"--batch-size {fit['batch_size']}",
        f"--labelled-share {fit['labelled_share']}",
        f"--lr {fit['lr']:g}",
        f"--lr-decay {fit.get('lr_decay', 1.0):g}",
        "--binarize" if fit["binarize"] else "--no-binarize",
    ]
    for key in ("max_minutes", "max_cpu_minutes"):
        if fit.get(key) is not None:
            parts.append(_flag(key, fit[key]))
    if fit.get("precision", "fp32") != "fp32":
        parts.append(f"--precision {fit['precision']}")
    for key in ("z_dim", "hidden", "activation", "alpha", "likelihood"):
        if key in model:
            value = model[key]
            parts.append(
                _flag(key, ",".join(map(str, value)) if isinstance(value, list) else value)
            )
    if model.get("likelihood") == "gaussian":
        parts.append(f"--sigma2 {model['sigma2']}")
    if "optimizer" in fit:
        parts.append(f"--optimizer {fit['optimizer']}")
        for key, value in (fit.get("optimizer_args") or {}).items():
            parts.append(_flag(OPTIMIZER_FLAGS.get(key, key), value))
    for key in ("variant", "net"):
        if key in model:
            parts.append(f"--{key} {model[key]}")
    if model.get("guide", "gaussian") != "gaussian":
        parts.append(f"--guide {model['guide']}")
    for key, value in (model.get("guide_args") or {}).items():
        parts.append(f"--guide-arg {key}={json.dumps(value, separators=(',', ':'))}")
    return " ".join(parts + _other_model_args(model))


def _flag(key: str, value: object) -> str:
    """``--key-name value``, a float in its shortest form (0.001, not 0.0010000)."""
    return f"--{key.replace('_', '-')} {f'{value:g}' if isinstance(value, float) else value}"


def resume_commands(config: dict, run: Path | str) -> str:
    """`` && ppl-ssvae train --out RUN --resume ...`` for each budget change config.json's
    ``resumes`` recorded, so a run continued past its first budget is rebuilt as it ran."""
    commands = []
    for resumed in config.get("resumes", []):
        # A budget lifted to None (possible only from Python) has no flag.
        flags = [
            _flag(key, value) for key, value in resumed["changed"].items() if value is not None
        ]
        commands.append(" && " + " ".join(["ppl-ssvae train", f"--out {run}", "--resume", *flags]))
    return "".join(commands)


def _other_model_args(model: dict) -> list[str]:
    """``--model-arg`` for every other model field that differs from its current default
    (listing all of them would bury the command; the run's config.json has every value)."""
    from ppl_ssvae.models import MODELS

    covered = {"model", "input_dim", "num_classes", "z_dim", "hidden", "activation", "alpha",
               "likelihood", "sigma2", "variant", "net", "prior", "guide", "guide_args"}  # fmt: skip
    cls = MODELS.get(model["model"])
    if cls is None:
        return []
    defaults = {f.name: f.default for f in dataclasses.fields(cls.config_class)}
    args = []
    for key, value in model.items():
        default = defaults.get(key, dataclasses.MISSING)
        default = list(default) if isinstance(default, tuple) else default
        if key not in covered and key in defaults and value != default:
            args.append(f"--model-arg {key}={json.dumps(value, separators=(',', ':'))}")
    return args


def _read_run(run: Path) -> tuple[dict, list[dict]]:
    """A run's config and history; a one-line error for a folder that is not a run or has
    no finished epoch to report."""
    rundir = RunDir(run)
    config = rundir.read_config()
    history = rundir.read_history()
    if not history:
        raise UserError(f"{run} has no finished epoch (metrics.jsonl is empty); train it "
                        "first or leave it out")  # fmt: skip
    return config, history


def main(argv: list[str] | None = None) -> Path:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--name", type=folder_name, required=True)
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args(argv)

    runs = {run: _read_run(run) for run in args.runs}  # all of them before anything is written
    clustering = any("cluster_mapping" in h for _, history in runs.values() for h in history)
    rows, curves = [], {}
    for run, (config, history) in runs.items():
        best = max(history, key=lambda h: h["val_accuracy"])
        row = {
            "run": run.name,
            "command": command_line(config) + f" --out {run}" + resume_commands(config, run),
            "best_epoch": best["epoch"],
            "val_accuracy": best["val_accuracy"],
            "test_accuracy": best["test_accuracy"],
        }
        if clustering:  # blanks for a run without them, or with no hidden class (null)
            row |= {key: "" if best.get(key) is None else best[key] for key in CLUSTERING_COLUMNS}
        rows.append(
            row
            | {
                "epochs": len(history),
                "cpu_minutes": history[-1]["elapsed_cpu_seconds"] / 60,
                "threads": config["environment"]["threads"],
            }
        )
        curves[run.name] = FitResult(history=history)
    out = write_results(args.name, rows, {"runs": [str(r) for r in args.runs]}, args.results_dir)
    for run in args.runs:
        for name in ("config.json", "metrics.jsonl", *CLUSTERING_FILES):
            if (run / name).exists():
                shutil.copy(run / name, out / f"{run.name}.{name}")
    plot_curves(out / "curve.png", curves)
    hidden = {
        name: r
        for name, r in curves.items()
        if r.history[-1].get("test_accuracy_hidden") is not None
    }
    if hidden:
        plot_curves(out / "curve_hidden.png", hidden, key="test_accuracy_hidden")
    print((out / "results.md").read_text())
    return out


if __name__ == "__main__":
    run_script(main)
