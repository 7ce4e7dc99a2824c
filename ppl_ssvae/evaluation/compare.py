r"""Runs side by side: ``ppl-ssvae compare RUN RUN ...`` as a Python API.

For each run directory, from its checkpoint (best by default) and its records:

- test accuracy and CPU-seconds per epoch: the numbers the run saved (metrics.jsonl);
- test ELBO and, with ``iwae=K``, the IWAE estimate of :math:`\log p(x)` per image with
  its Monte Carlo standard error over images, on the inputs ``likelihood_report`` scores
  (a fixed, seeded subset of test images, binarised once for a Bernoulli likelihood);
- the gap IWAE - ELBO: how much of the bound the guide loses (the IWAE is the tighter
  bound, so a better guide shrinks it);
- against the first run, the mean per-image difference of the IWAE and its *paired*
  standard error, valid when both runs scored the same inputs (checked by hash). Two
  guides on the same images differ by far less noise than their separate errors say;
- active units (Burda et al. 2016): units whose posterior mean varies over the images,
  :math:`\mathrm{Var}_x\,\mathbb{E}_q[z_u|x] > 0.01`, the mean drawn by Monte Carlo for
  every guide alike (a flow has none in closed form), its noise subtracted.

Scores cost a model/guide pass per importance sample and class, so they are kept in the
run directory (``compare-*.json``), keyed by the checkpoint's SHA-256, K, the subset and
the seed, and read back while they match; an IWAE in progress keeps its progress beside
them (``progress-compare-*.json``), and a compare interrupted resumes it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import SemiSupervisedData, load_recipe
from ..errors import UserError
from ..guides.sampling import seeded_rng
from ..runs.checkpoint import read_regular_file, write_text_atomic
from ..runs.directory import BEST, CHECKPOINT, RunDir
from .kept import KeptProgress
from .likelihood import evaluation_inputs, log_likelihood
from .metrics import mean_elbo

#: Burda et al.'s threshold on the variance of a unit's posterior mean.
ACTIVE_THRESHOLD = 0.01
#: Draws per image for the posterior means of the active-unit count.
MEAN_SAMPLES = 256
DataLoader = Callable[[dict[str, Any], RunDir], SemiSupervisedData]


def standard_error(values: torch.Tensor) -> float:
    """The standard error of the mean of ``values``: sample std (n - 1) / sqrt(n)."""
    n = values.numel()
    return float(values.double().std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan


def recorded_data(config: dict[str, Any], run: RunDir) -> SemiSupervisedData:
    """The run's data from the recipe its config.json records."""
    recipe = (config.get("data") or {}).get("recipe")
    if not recipe:
        raise UserError(f"{run.path} records no data recipe; compare it from Python with its data")
    return load_recipe(recipe)


def compare_runs(
    runs: Sequence[str | Path],
    iwae: int | None = None,
    rows: int | None = None,
    checkpoint: str = "best",
    seed: int = 0,
    data: DataLoader = recorded_data,
) -> list[dict[str, Any]]:
    """One dict per run, in the order given (see the module docstring for each number).

    Args:
        runs: run directories written by ``fit`` / ``ppl-ssvae train``.
        iwae: K importance samples per image (and class); None: no log-likelihood.
        rows: score a fixed, seeded subset of this many test images (all when None).
        checkpoint: ``"best"`` (best.pt) or ``"last"`` (checkpoint.pt).
        seed: the subset, binarisation and every draw come from it.
        data: ``(config, run) -> data``, the run's data (default: its recorded recipe).
    """
    if not runs:
        raise UserError("compare needs at least one run directory")
    if checkpoint not in ("best", "last"):
        raise UserError(f"checkpoint must be best or last, got {checkpoint!r}")
    if iwae is not None and not (isinstance(iwae, int) and iwae >= 1):
        raise UserError(f"iwae={iwae!r} must be an integer >= 1 importance samples")
    if rows is not None and not (isinstance(rows, int) and rows >= 1):
        raise UserError(f"rows={rows!r} must be a positive number of test images")
    for r in runs:  # every refusal before the first (costly) score
        RunDir(r).read_config()
    table = [_run_row(RunDir(r), iwae, rows, checkpoint, seed, data) for r in runs]
    _add_paired_differences(table)
    for row in table:
        row.pop("_log_likelihood_rows", None)
    return table


def _run_row(
    run: RunDir, iwae: int | None, rows: int | None, checkpoint: str, seed: int, data: DataLoader
) -> dict[str, Any]:
    from .. import models

    config = run.read_config()
    try:
        model = models.from_config(config["model"])
    except UserError as e:
        raise UserError(f"{run.file('config.json')}: {e}") from None
    name = _weights_file(run, checkpoint)
    state = run.load_weights(model, name)
    history = run.read_history()
    last = history[-1]["epoch"] if history else state["epoch"]
    if checkpoint == "last" and name == BEST and state["epoch"] != last:
        raise UserError(
            f"{run.path} has no {CHECKPOINT}, and its {BEST} is epoch {state['epoch']}, not "
            f"its last ({last}); score its best epoch with --checkpoint best"
        )
    record = next((h for h in history if h["epoch"] == state["epoch"]), {})
    split = data(config, run)
    scores = _scores(model, run, name, split.x_test, iwae, rows, seed)
    cpu = [h["epoch_cpu_seconds"] for h in history if "epoch_cpu_seconds" in h]
    return {
        "run": str(run.path),
        "model": model.name,
        "guide": model.config.guide,
        "checkpoint": checkpoint,
        "epoch": state["epoch"],
        "test_accuracy": record.get("test_accuracy"),
        "cpu_seconds_per_epoch": sum(cpu) / len(cpu) if cpu else None,
        **scores,
    }


def _weights_file(run: RunDir, checkpoint: str) -> str:
    """The file with the asked-for weights. A run kept without its training checkpoint
    (best.pt alone, a third of the size) still holds its last epoch when its best epoch
    was its last; the caller checks that epoch."""
    if checkpoint == "best":
        return BEST
    if not run.file(CHECKPOINT).exists() and run.file(BEST).exists():
        return BEST
    return CHECKPOINT


def _scores(
    model: Any,
    run: RunDir,
    checkpoint: str,
    x_test: torch.Tensor,
    iwae: int | None,
    rows: int | None,
    seed: int,
) -> dict[str, Any]:
    """The checkpoint's scores, read back from the run directory while its key matches."""
    digest = hashlib.sha256(run.file(checkpoint).read_bytes()).hexdigest()
    key = {"checkpoint": checkpoint, "sha256": digest, "iwae": iwae, "rows": rows, "seed": seed,
           "mean_samples": MEAN_SAMPLES}  # fmt: skip
    stem = f"compare-{Path(checkpoint).stem}-k{iwae}-rows{rows}-seed{seed}"
    path, progress = run.file(f"{stem}.json"), run.file(f"progress-{stem}.json")
    saved = _parsed(_read_bytes(path))
    if isinstance(saved, dict) and saved.get("key") == key and "scores" in saved:
        return saved["scores"]
    # An IWAE takes hours on a CPU: its progress is kept beside the scores, so that an
    # interrupted compare resumes it (to the same result) instead of starting again.
    kept = KeptProgress(key, lambda: _read_bytes(progress),
                        lambda text: _replace_own(run, progress, text, ("key", "done")),
                        warn=lambda why: warnings.warn(f"{run.path}: {why}", stacklevel=2))  # fmt: skip
    scores = score(model, x_test, iwae, rows, seed, kept=kept)
    try:
        _replace_own(run, path, json.dumps({"key": key, "scores": scores}), ("key", "scores"),
                     then_remove=progress if kept.owns else None)  # fmt: skip
    except (UserError, OSError) as e:  # a run in training, a read-only directory, a user's file
        warnings.warn(f"{run.path}: scores not kept ({e})", stacklevel=2)
    return scores


def _read_bytes(path: Path) -> bytes | None:
    """The file's bytes, None where there is none; a symbolic link is refused, not followed."""
    try:
        return read_regular_file(path)
    except FileNotFoundError:
        return None


def _parsed(raw: bytes | None) -> Any:
    """The JSON in ``raw``; None where there is none or it does not parse."""
    try:
        return None if raw is None else json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _replace_own(
    run: RunDir, path: Path, text: str, fields: tuple[str, ...], then_remove: Path | None = None
) -> None:
    """Write ``text`` to ``path`` under the run's lock, replacing only a file compare wrote
    (a JSON object with ``fields``), then remove ``then_remove``: a link or a user's file of
    that name is refused in one line and left as it is."""
    with run.lock():
        raw = _read_bytes(path)  # refuses a link
        if raw is not None:
            saved = _parsed(raw)
            if not (isinstance(saved, dict) and all(name in saved for name in fields)):
                raise UserError(f"{path} is not a file compare wrote; move it to keep scores here")
        write_text_atomic(path, text)
        if then_remove is not None:
            then_remove.unlink(missing_ok=True)


def score(
    model: Any,
    x_test: torch.Tensor,
    iwae: int | None,
    rows: int | None,
    seed: int = 0,
    kept: KeptProgress | None = None,
) -> dict[str, Any]:
    """Test ELBO, IWAE per image with its standard error, gap and active units of
    ``model`` on the inputs ``likelihood_report(model, x_test, iwae, rows, seed)`` scores
    (the same subset and binarisation, so the numbers are that report's); ``kept`` keeps
    the IWAE's progress (:func:`~ppl_ssvae.evaluation.likelihood.log_likelihood`)."""
    started = time.process_time()
    x = x_test
    if rows is not None and rows < len(x):  # likelihood_report's subset
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        x = x[order[:rows].to(x.device)]
    inputs = evaluation_inputs(model, model.check_x(x), seed)
    with seeded_rng(seed, inputs.device):
        elbo = mean_elbo(model, inputs)
    out: dict[str, Any] = {
        "test_elbo": elbo,
        "rows": len(inputs),
        "inputs_sha256": hashlib.sha256(inputs.cpu().numpy().tobytes()).hexdigest(),
        "active_units": active_units(model, inputs, seed=seed),
    }
    if iwae is not None:
        per_row = log_likelihood(model, inputs, num_samples=iwae, seed=seed, kept=kept)
        out |= {
            "iwae_samples": iwae,
            "test_log_likelihood": per_row.mean().item(),
            "test_log_likelihood_se": standard_error(per_row),
            "gap": per_row.mean().item() - elbo,
            "_log_likelihood_rows": per_row.tolist(),
        }
    earlier = kept.earlier_cpu_seconds if kept is not None else 0.0  # before an interruption
    out["score_cpu_seconds"] = earlier + time.process_time() - started
    return out


@torch.no_grad()
def active_units(
    model: Any, x: torch.Tensor, samples: int = MEAN_SAMPLES, seed: int = 0, chunk: int = 50
) -> int | None:
    r"""Units of z with :math:`\mathrm{Var}_x\,\mathbb{E}_q[z_u|x] > 0.01` (Burda et al.),
    the posterior means from ``samples`` seeded draws per image, their Monte Carlo noise
    (the draws' variance over ``samples``) subtracted; ``q(z|x, y*)`` as ``model.encode``
    gives it, ``chunk`` images at a time. None for a single image or a model without z."""
    if len(x) < 2:
        return None
    means, noise = [], []
    with seeded_rng(seed, x.device):
        for part in x.split(chunk):
            q_z = model.encode(part).get("z")
            if q_z is None:
                return None
            draws = q_z.rsample((samples,))  # (S, n, D)
            means.append(draws.mean(0))
            noise.append(draws.var(0) / samples)
    activity = torch.cat(means).var(0) - torch.cat(noise).mean(0)
    return int((activity > ACTIVE_THRESHOLD).sum())


def _add_paired_differences(table: list[dict[str, Any]]) -> None:
    """``vs_first`` and ``vs_first_se``: mean per-image IWAE difference to the first run
    and its paired standard error, where both scored the same inputs."""
    first = table[0]
    first["vs_first"] = first["vs_first_se"] = None
    for row in table[1:]:
        same = row.get("inputs_sha256") == first.get("inputs_sha256")
        if "_log_likelihood_rows" not in row or not same:
            row["vs_first"] = row["vs_first_se"] = None
            continue
        diff = torch.tensor(row["_log_likelihood_rows"]) - torch.tensor(
            first["_log_likelihood_rows"]
        )
        row["vs_first"], row["vs_first_se"] = diff.mean().item(), standard_error(diff)


COLUMNS = (
    ("run", "run", "{}"),
    ("guide", "guide", "{}"),
    ("epoch", "epoch", "{}"),
    ("test acc", "test_accuracy", "{:.4f}"),
    ("test ELBO", "test_elbo", "{:.2f}"),
    ("IWAE log p(x)", "test_log_likelihood", "{:.2f}"),
    ("± SE", "test_log_likelihood_se", "{:.2f}"),
    ("vs first", "vs_first", "{:+.2f}"),
    ("± paired SE", "vs_first_se", "{:.2f}"),
    ("gap", "gap", "{:.2f}"),
    ("active", "active_units", "{}"),
    ("CPU-s/epoch", "cpu_seconds_per_epoch", "{:.1f}"),
)


def format_table(table: list[dict[str, Any]]) -> str:
    """The runs as a markdown table (IWAE columns only when they were scored)."""
    scored = any("test_log_likelihood" in row for row in table)
    iwae_keys = {"test_log_likelihood", "test_log_likelihood_se", "vs_first", "vs_first_se", "gap"}
    columns = [c for c in COLUMNS if scored or c[1] not in iwae_keys]
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in table:
        cells = [_cell(row.get(key), fmt) for _, key, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    footer = []
    if scored:
        first = next(r for r in table if "iwae_samples" in r)
        footer.append(f"IWAE K={first['iwae_samples']} on {first['rows']} test images; "
                      "SE over images; paired SE of the per-image difference to the first run; "
                      "gap = IWAE - ELBO")  # fmt: skip
    footer.append(f"active: units with Var_x E[z_u|x] > {ACTIVE_THRESHOLD}")
    return "\n".join(lines + [""] + footer)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)
