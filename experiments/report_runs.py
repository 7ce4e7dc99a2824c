"""The experiments' record of individual runs: one row per run, with the command that
replays it, in results/<name>/.

    python -m experiments.report_runs runs/m2-a runs/m2-b --name m2_fashion_mnist

Tables across runs (grouped by the settings that vary, mean ± sd over seeds) are
``ppl-ssvae report``'s (``ppl_ssvae.sweeps.report``); this script reads each run with that
report's reader (``read_run``: the best-validation epoch as ``fit`` selects it, test
accuracy there, on visible and hidden classes for cluster-and-label runs, epochs and
CPU-minutes) and adds what a results folder keeps beside it: the ``ppl-ssvae train``
command of each run (rebuilt from config.json, resumes included), the cluster mapping,
curve.png (and curve_hidden.png for hidden classes), and each run's config, metrics,
confusion matrix and z-unit activity.
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
from ppl_ssvae.runs.directory import RunDir
from ppl_ssvae.sweeps.report import read_run
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


def main(argv: list[str] | None = None) -> Path:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--name", type=folder_name, required=True)
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args(argv)

    records = [read_run(run) for run in args.runs]  # all of them before anything is written
    clustering = any(r.metrics.get("cluster_mapping") for r in records)
    rows, curves = [], {}
    for run, record in zip(args.runs, records, strict=True):
        config, m = RunDir(run).read_config(), record.metrics
        row = {"run": run.name,
               "command": command_line(config) + f" --out {run}" + resume_commands(config, run),
               "best_epoch": m["best_epoch"], "val_accuracy": m["val_accuracy"],
               "test_accuracy": m["test_accuracy"]}  # fmt: skip
        if clustering:  # blanks for a run without them, or with no hidden class (null)
            row |= {key: "" if m.get(key) is None else m[key] for key in CLUSTERING_COLUMNS}
        rows.append(row | {"epochs": m["epochs"], "cpu_minutes": m["cpu_minutes"],
                           "threads": config["environment"]["threads"]})  # fmt: skip
        curves[run.name] = FitResult(history=record.history)
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
