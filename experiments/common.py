"""Shared pieces of the experiment scripts: their command-line values, budgets and the
results directory."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import numpy as np
import pyro

from ppl_ssvae import models
from ppl_ssvae.data import SemiSupervisedData, parse_labelled_share
from ppl_ssvae.errors import UserError, check_seed
from ppl_ssvae.models.base import SemiSupervisedModel
from ppl_ssvae.runs.checkpoint import write_text_atomic
from ppl_ssvae.training import FitResult, environment
from ppl_ssvae.training.optim import optimizer_args

# Read when a script starts, so results name the code that produced them, not a commit
# made while a long run was going.
STARTED_FROM = environment()


def run_script(main: Callable[[], Any]) -> None:
    """Run an experiment's ``main`` as a command: bad input (a ``UserError``) is one line
    on stderr and exit code 2, argparse's code for a bad argument, not a traceback."""
    try:
        main()
    except UserError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


# -- command-line values ------------------------------------------------------------------------
# The scripts' argparse ``type=`` functions (the benchmarks' too): a bad value is one line and
# exit code 2 before anything is loaded or written, as `ppl-ssvae` reports its options.
T = TypeVar("T")


class ScriptParser(argparse.ArgumentParser):
    """argparse with its errors on one line, as ``run_script`` prints a UserError (argparse
    itself prints its usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _integer(text: str, minimum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
    return value


def _checked(check: Callable[[Any], T], value: Any) -> T:
    """``check(value)``, its UserError turned into argparse's error for the option."""
    try:
        return check(value)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    """An integer >= 1: epochs, labels, rows, steps, sizes."""
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0, where 0 means none."""
    return _integer(text, 0)


def random_seed(text: str) -> int:
    """A seed numpy and torch both accept (``ppl_ssvae.errors.check_seed``)."""
    return _checked(check_seed, _integer(text))


def _real(text: str, ok: Callable[[float], bool], what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"{text} must be {what}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0: learning rates, weights, minutes."""
    return _real(text, lambda v: v > 0, "a finite number > 0")


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    return _real(text, lambda v: v >= 0, "a finite number >= 0")


def unit_fraction(text: str) -> float:
    """A share of rows in (0, 1]."""
    return _real(text, lambda v: 0 < v <= 1, "in (0, 1]")


def labels_or_all(text: str) -> str:
    """A number of labels >= 1, or ``all``; as text, since results folders are named by it."""
    return text if text == "all" else str(positive_int(text))


def labelled_share(text: str) -> str:
    """``natural``, ``1:1`` or a share in [0, 1) (``ppl_ssvae.data.parse_labelled_share``),
    kept as given."""
    _checked(parse_labelled_share, text)
    return text


def folder_name(text: str) -> str:
    """A results folder's name (``check_name``)."""
    return _checked(check_name, text)


def add_results_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """``--results-dir`` and ``--name``: where a script's results folder goes (``default``
    says how the folder is named without ``--name``)."""
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--name", type=folder_name, default=None,
                        help=f"the results folder [{default}]")  # fmt: skip


def check_name(name: str) -> str:
    """``name`` if it is one folder name: ``--name ../../x`` would write outside
    ``--results-dir``."""
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise UserError(f"results name {name!r} must be a folder name, not a path (no '/', '..')")
    return name


def comma_list(item: Callable[[str], T]) -> Callable[[str], list[T]]:
    """``item`` values separated by commas, at least one and none empty."""

    def parse(text: str) -> list[T]:
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(
                f"{text!r} has an empty item; give values separated by commas, e.g. 1,2"
            )
        return [item(part) for part in parts]

    parse.__name__ = f"{item.__name__} list"
    return parse


name_list, positive_int_list, non_negative_int_list, random_seed_list, unit_fraction_list = map(
    comma_list, (str, positive_int, non_negative_int, random_seed, unit_fraction)
)


# Jurasiński (2019) App. B and sec 5.1: one hidden layer of 500 softplus units per network,
# a latent of 50, Adam 1e-3 without decay, 100 labelled + 100 unlabelled rows per batch.
JURASINSKI_MODEL = {"z_dim": 50, "hidden": (500,), "activation": "softplus"}
JURASINSKI_FIT = {"batch_size": 200, "labelled_share": "1:1", "lr": 1e-3, "lr_decay": 1.0,
                  "optimizer": "adam"}  # fmt: skip


def budget_with(budget: dict[str, Any], args: Any, keys: Sequence[str]) -> dict[str, Any]:
    """A copy of a script's ``budget`` with every one of ``keys`` the command line gave
    (not None) in place of the budget's."""
    given = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    return {**budget, **given}


def build_seeded(name: str, seed: int, **config: Any) -> SemiSupervisedModel:
    """``models.build`` with the initial weights drawn from ``seed``, as ``ppl-ssvae train``
    draws them: a seed run alone then equals that seed inside a multi-seed run (``fit``'s
    seed covers batches and noise, but the weights exist before it is called)."""
    pyro.set_rng_seed(seed)
    return models.build(name, **config)


def read_results(folder: Path) -> list[dict[str, Any]]:
    """The rows of the results.csv an experiment script wrote into ``folder``, numbers
    parsed, for its ``--merge``."""
    csv_path = folder / "results.csv"
    if not csv_path.is_file():
        raise UserError(f"--merge: {csv_path} not found; pass folders this script wrote")
    return [{key: _number(value) for key, value in row.items()}
            for row in csv.DictReader(csv_path.open())]  # fmt: skip


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def paper_fit_arguments(model_class: type[SemiSupervisedModel]) -> dict[str, Any]:
    """``fit`` keyword arguments from a model's ``fit_defaults`` (its paper's training
    settings): batch composition, binarisation, learning rate and its decay, optimizer and
    its options. A setting the model does not name keeps ``fit``'s default."""
    settings = model_class.fit_defaults
    arguments = {key: settings[key] for key in PAPER_FIT_KEYS if key in settings}
    if options := optimizer_args(settings):
        arguments["optimizer_args"] = options
    return arguments


PAPER_FIT_KEYS = ("labelled_share", "binarize", "lr", "lr_decay", "optimizer")


def selected_epoch_columns(
    result: FitResult, split: SemiSupervisedData, train_split: SemiSupervisedData
) -> dict[str, Any]:
    """A results row's data and selected-epoch columns for one ``fit``: labels, rows trained
    on, epochs run, and the best-validation epoch's accuracies and log loss (the last epoch
    when the split has no validation rows to select by)."""
    best = result.best or result.history[-1]
    return {
        "labels": int(split.labelled_mask.sum()),
        "training_rows": len(train_split.x_train),
        "epochs": len(result.history),
        "best_epoch": best["epoch"],
        "val_accuracy": best["val_accuracy"],
        "test_accuracy": best["test_accuracy"],
        "test_log_loss": best["test_log_loss"],
    }


def _markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(rows[0])
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def mean_and_sd(
    rows: list[dict[str, Any]], by: str | tuple[str, ...], columns: list[str]
) -> list[dict[str, Any]]:
    """One row per value of ``by`` (a column, or a tuple of columns grouped together): the
    runs' count and, for each of ``columns``, the mean and the sample standard deviation
    (0 for a single run), as the papers' "± " columns."""
    keys = (by,) if isinstance(by, str) else by
    summary = []
    for key in dict.fromkeys(tuple(r[k] for k in keys) for r in rows):
        group = [r for r in rows if tuple(r[k] for k in keys) == key]
        row: dict[str, Any] = {**dict(zip(keys, key, strict=True)), "runs": len(group)}
        for column in columns:
            values = np.array([float(r[column]) for r in group])
            row[f"{column}_mean"] = float(values.mean())
            row[f"{column}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary.append(row)
    return summary


# The folders this process has taken for its results (``claim_results``); only these are
# written, so a rerun never overwrites a folder an earlier run filled.
_CLAIMED: set[Path] = set()
CLAIM_FILE = ".claimed"


def claim_results(name: str, results_dir: str | Path = "results") -> Path:
    """Take ``results_dir/name/`` for this run: call it before any work, so that a folder
    that already holds files (an earlier run's results, perhaps of other settings) or is a
    link is refused in one line before anything is computed or written. The claim is a
    file created exclusively, so two runs given one name cannot both take the folder."""
    out = Path(results_dir) / check_name(name)
    if out.absolute() in _CLAIMED:
        return out
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"{out} is a link or a file, not a results folder; give another --name")
    out.mkdir(parents=True, exist_ok=True)
    held = sorted(p.name for p in out.iterdir())
    if held:
        listed = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise UserError(
            f"{out} already holds results of an earlier run ({listed}); give another --name, "
            "or move that folder away to run this again"
        )
    try:
        with (out / CLAIM_FILE).open("x") as claim:
            json.dump({"argv": sys.argv, "started_from": STARTED_FROM.get("git_commit")}, claim)
    except FileExistsError:
        raise UserError(f"another run has just taken {out}; give another --name") from None
    _CLAIMED.add(out.absolute())
    return out


def write_results(
    name: str,
    rows: list[dict[str, Any]],
    config: dict[str, Any],
    results_dir: str | Path = "results",
    summary: list[dict[str, Any]] | None = None,
) -> Path:
    """Write ``results/<name>/`` with results.md, results.csv and config.json; a
    ``summary`` (e.g. ``mean_and_sd`` over seeds) goes to summary.csv and under the table."""
    out = claim_results(name, results_dir)  # a script that claimed at its start passes here
    _write_csv(out / "results.csv", rows)
    lines = _markdown_table(rows)
    if summary:
        _write_csv(out / "summary.csv", summary)
        lines += ["", "Mean and standard deviation over runs:", "", *_markdown_table(summary)]
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n")
    write_text_atomic(
        out / "config.json", json.dumps({**config, "environment": STARTED_FROM}, indent=2)
    )
    return out


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, imported only when a script plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(path: Path, curves: dict[str, FitResult], key: str = "test_accuracy") -> None:
    """Accuracy against CPU-minutes, one line per run."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, result in curves.items():
        ax.plot(
            [h["elapsed_cpu_seconds"] / 60 for h in result.history],
            [h[key] for h in result.history],
            marker=".",
            label=label,
        )
    ax.set_xlabel("CPU-minutes")
    ax.set_ylabel(key.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def whole_labels(requested: int, num_classes: int) -> int:
    """The largest label count <= ``requested`` that every class can share equally.

    ``semi_supervised_split`` keeps the same number of labels per class, so it refuses
    e.g. 100 labels over 3 shape classes; the paper's counts (100, 300, ...) become 99, 300.
    """
    return requested // num_classes * num_classes
