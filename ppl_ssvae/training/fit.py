"""``fit``: train any model of the library with ``pyro.infer.SVI``, with callbacks.

``fit`` settles a run's settings (the caller's, the model's recommendations, the
protocol's defaults; on resume, the run's own), checks the run directory, and hands the
loop (:class:`~ppl_ssvae.training.loop.Trainer`) the callbacks every run has plus the
caller's. A resumed run reproduces the uninterrupted one on CPU (same seed), callbacks'
state included; a non-finite loss, gradient or parameter stops the run with the last good
checkpoint intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from .. import protocol
from ..data import SemiSupervisedData
from ..errors import UserError
from ..models.base import SemiSupervisedModel
from ..protocol import Evaluator
from ..runs.directory import CHECKPOINT, RunDir, current_budget
from ..runs.kinds import run_marker
from . import distributed
from .callbacks import Callback
from .checkpointing import ClusteringArtifacts, RunDirectory
from .devices import environment
from .distributed import ProcessGroup
from .loop import FitResult, Trainer
from .schedules import LRScheduler
from .settings import RESUMABLE, FitSettings
from .standard import BestEpoch, Budget, Evaluation, NonFiniteGuard, ProgressBar

log = logging.getLogger("ppl_ssvae")


def fit(
    model: SemiSupervisedModel,
    data: SemiSupervisedData,
    settings: FitSettings | None = None,
    *,
    out: str | Path | RunDir | None = None,
    resume: bool = False,
    overwrite: bool = False,
    evaluate: Evaluator | None = None,
    callbacks: list[Callback] | None = None,
    run_config: dict[str, Any] | None = None,
    init_from: str | Path | RunDir | None = None,
    **options: Any,
) -> FitResult:
    """Train ``model`` on ``data`` with SVI and the model's objective.

    Args:
        settings: a ``FitSettings``; keyword ``options`` (its field names: ``epochs=``,
            ``lr=``...) override it. Settings left None take the model's recommendation
            (``fit_defaults``, e.g. GM-DGM's Adam at 3e-4 on 1:1 batches), then the
            library's; what came from the model is logged and recorded in config.json.
        out: run directory for config.json, metrics.jsonl, checkpoint.pt (last epoch) and
            best.pt (best validation accuracy). None: keep nothing.
        resume: continue the run in ``out`` from its checkpoint with the run's recorded
            settings; only the budget (``epochs``, ``max_minutes``, ``max_cpu_minutes``)
            and the ``device`` may be given anew (recorded in config.json's ``resumes``);
            another value of any other setting is refused.
        overwrite: clear the run ``out`` holds and start again (without it, a directory
            that holds a run is refused).
        evaluate: ``(model, data) -> dict`` run after each epoch, giving ``val_accuracy``
            (or, for models that cannot classify, ``elbo``: the validation ELBO). None: the
            protocol's (``protocol.default_evaluator_name``). Without validation rows the
            last epoch counts as the best.
        callbacks: the caller's own callbacks (``ppl_ssvae.training.callbacks``), called
            after the run's own evaluation and before its checkpoint, so their state is
            saved and a resume continues them exactly.
        run_config: extra entries for config.json.
        init_from: a trained run whose shared weights ``model`` starts from (encoder,
            decoder, classifier, the Gaussian head a flow refines: ``ppl_ssvae.training.init_from``);
            recorded in config.json. A resumed run continues from its own checkpoint.

    Inside a ``torch.distributed`` process group of N ranks (``torchrun``), ``fit`` trains
    data-parallel (``ppl_ssvae.training.distributed``): ``batch_size`` is each rank's, the global
    batch N times that; rank 0 alone evaluates and writes ``out``; every rank returns.

    Raises:
        UserError: a bad setting, or a run directory that cannot be used as asked;
            raised before anything is written.
        NonFiniteLossError: the loss, a gradient or a parameter became NaN/inf; the last
            good checkpoint is intact.
    """
    run = out if isinstance(out, RunDir) else (RunDir(out) if out is not None else None)
    if resume and run is None:
        raise UserError("resume needs the run directory (out=...)")
    _check_training_data(model, data)
    group = distributed.current()
    if group is not None and model.trains_in_stages:
        raise UserError(
            f"{model.name} trains in stages, each stepping only part of the model, which "
            "data-parallel training cannot do (DDP gives every parameter a gradient, so the "
            "frozen part would move); train it in one process"
        )
    if init_from is not None and resume:
        raise UserError("init_from starts a run; a resumed run continues from its checkpoint")
    if resume:  # the plain refusals (no run, no checkpoint) before reading the run
        _on_main(group, lambda: run.check_start(resume, overwrite))
    recorded = _on_main(group, lambda: _recorded(run, model)) if resume else None
    if resume and group is not None:  # every rank trains with rank 0's reading of the run
        recorded = group.broadcast(recorded)
    settings, applied = _settle(model, data, settings, options, recorded)
    if model.trains_in_stages and settings.lr_scheduler:
        raise UserError(
            f"{model.name} trains in stages and starts its optimizer afresh at each, which an "
            "lr_scheduler (bound to the first optimizer) cannot follow; use lr_decay"
        )
    evaluate = evaluate or protocol.evaluators()[protocol.default_evaluator_name(model, data)]
    if run is not None:  # said before the lock is taken, so a refused start writes nothing
        world = group.world_size if group else 1
        _on_main(group, lambda: check_run_start(run, resume, overwrite, settings.epochs, world))
    if not resume:
        run_config = {**(run_config or {}), **_initial_weights(model, init_from)}
    own = _own_callbacks(settings, evaluate, run, group)
    trainer = Trainer(model, data, settings, [*own, *(callbacks or [])], group)
    trainer.result.run_dir = run.path if run else None
    trainer.result.applied_defaults = applied
    if run is None:
        return trainer.fit(start_epoch=1)
    with contextlib.ExitStack() as held:
        _on_main(group, lambda: held.enter_context(run.lock()))
        _on_main(group, lambda: run.start(resume, overwrite))
        start = _restore(trainer, run, group) if resume else 1
        if group is None or group.is_main:
            record = {"fit_defaults_applied": applied,
                      "callbacks": [cb.describe() for cb in callbacks or []], **(run_config or {})}  # fmt: skip
            _record_start(run, model, data, settings, evaluate, record, resume, start, group)
        return trainer.fit(start_epoch=start)


def _initial_weights(model: SemiSupervisedModel, init_from: Any) -> dict[str, Any]:
    """Start a new run's weights from trained runs: ``init_from``'s shared weights, and any
    part the model names as a trained run (m1-m2's m1). Returns what config.json records."""
    from .init_from import init_from as copy_shared_weights
    from .init_from import init_parts

    record = {}
    if init_from is not None:
        record["init_from"] = copy_shared_weights(model, init_from)
    if model.parts_from_runs:
        parts = init_parts(model)
        if parts:
            record["parts_from_runs"] = parts
    return record


def _own_callbacks(
    settings: FitSettings, evaluate: Evaluator, run: RunDir | None, group: Any
) -> list[Callback]:
    """The run's own callbacks, in order: evaluation, best-epoch tracking, the guards, the
    budget, progress, the lr schedule, and what keeps the run directory."""
    best = BestEpoch()
    main = group is None or group.is_main
    keep = [RunDirectory(run if main else None, best)] if run else []
    if run is not None and main and evaluate is _clustering():
        keep.append(ClusteringArtifacts(run))
    schedule = (
        [LRScheduler(settings.lr_scheduler, settings.lr_scheduler_args)]
        if settings.lr_scheduler
        else []
    )
    return [Evaluation(evaluate), best, NonFiniteGuard(settings.divergence_factor),
            Budget(settings.max_minutes, settings.max_cpu_minutes),
            *([ProgressBar()] if settings.progress else []), *schedule, *keep]  # fmt: skip


def _settle(
    model: SemiSupervisedModel,
    data: SemiSupervisedData,
    settings: FitSettings | None,
    options: dict[str, Any],
    recorded: FitSettings | None,
) -> tuple[FitSettings, dict[str, Any]]:
    """The run's settings, validated: on resume the recorded ones with only the budget
    changed; else the caller's with the model's recommendations and the protocol's
    defaults filled in. Also what was taken from the model's recommendations."""
    base = settings or recorded or FitSettings()
    settings = dataclasses.replace(base, **_known_options(options))
    settings.validate()
    settings, applied = settings.recommended(model)
    settings = settings.resolved(model, data)
    settings.validate()
    _check_binarize(settings, data)
    if recorded is not None:
        settings.resume_changes(recorded)
        applied = {}
    elif applied:
        said = ", ".join(f"{k}={v!r}" for k, v in applied.items())
        log.info("%s: applied the model's recommended settings %s", model.name, said)
    return settings, applied


def _recorded(run: RunDir, model: SemiSupervisedModel) -> FitSettings:
    """The settings the run in ``run`` trains with (as its last resume left them), after
    checking that ``model`` is the model it trained."""
    config = run.read_config()
    if _normal(model.to_config()) != _normal(config.get("model")):
        raise UserError(
            f"the model passed to fit(resume=True) is not the one {run.path} trained (its "
            "config.json 'model' differs); rebuild it with ppl_ssvae.runs.load_run"
        )
    return FitSettings.from_dict({**current_budget(config), "progress": True})


def _normal(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _restore(trainer: Trainer, run: RunDir | None, group: ProcessGroup | None) -> int:
    """Load the run's checkpoint into the trainer (rank 0 reads it and sends it to the
    other ranks); the epoch to continue from."""
    main = group is None or group.is_main
    state = run.load_weights(trainer.model, CHECKPOINT) if main else None
    if group is not None:
        state = group.broadcast(state)
        if not main:
            trainer.model.load_state_dict(state["model"])
    start = trainer.load_state_dict(state)
    if main:
        on_disk = run.read_history(up_to=start - 1)  # warns of what the resume drops
        if "history" not in state:
            trainer.result.history = on_disk
        run.write_history(trainer.result.history)
    return start


def _on_main(group: ProcessGroup | None, action: Any) -> Any:
    """``action()`` here, or on rank 0 of a data-parallel run with its refusal raised on
    every rank."""
    return action() if group is None else group.on_main(action)


def check_run_start(
    run: RunDir, resume: bool, overwrite: bool, epochs: int, world_size: int = 1
) -> None:
    """The refusals of starting (or resuming) a run of ``world_size`` processes in ``run``,
    before anything is written: a run to keep, nothing left to train, another N."""
    run.check_start(resume, overwrite)
    if not resume:
        return
    _check_epochs_left(run.load_checkpoint(CHECKPOINT)["epoch"], epochs, run)
    saved = (run.read_config().get("distributed") or {}).get("world_size", 1)
    if saved != world_size:
        raise UserError(
            f"{run.path} was trained by {saved} process(es) and cannot be resumed by "
            f"{world_size}: its batches and RNG states are per rank; resume with --devices {saved}"
            if saved > 1 else
            f"{run.path} was trained by one process and cannot be resumed by {world_size}; "
            "resume it without --devices / torchrun"
        )  # fmt: skip


def _record_start(
    run: RunDir,
    model: SemiSupervisedModel,
    data: SemiSupervisedData,
    settings: FitSettings,
    evaluate: Evaluator,
    run_config: dict[str, Any],
    resume: bool,
    start: int,
    group: ProcessGroup | None,
) -> None:
    env = environment()
    if resume:
        run.record_resume(start - 1, {k: getattr(settings, k) for k in RESUMABLE}, env)
        return
    parallel = {"distributed": {**group.describe(),
                "global_batch_size": settings.batch_size * group.world_size}} if group else {}  # fmt: skip
    run.write_config({
        **run_marker("train"),
        "model": model.to_config(),
        "fit": settings.to_dict(),
        "evaluator": protocol.evaluator_name(evaluate),
        "data": _data_record(data),
        **parallel,
        **run_config,
        "environment": env,
    })  # fmt: skip
    run.write_history([])


def _check_epochs_left(trained: int, epochs: int, run: RunDir) -> None:
    if trained >= epochs:
        raise UserError(
            f"nothing left to train: {run.path} has trained {trained} epochs already; "
            f"resume with --epochs above {trained}"
        )


def _check_training_data(model: SemiSupervisedModel, data: SemiSupervisedData) -> None:
    model.check_x(data.x_train)
    model.check_y(data.y_train, len(data.x_train))
    if model.can_classify and model.config.num_classes < 2:  # its evaluation would fail
        raise UserError(
            f"{model.name} has {model.config.num_classes} class; a classifier needs at least 2 "
            "(data with two or more classes, or extra classes to cluster into)"
        )
    if data.num_classes > model.config.num_classes:
        raise UserError(
            f"the data has {data.num_classes} classes but the model only {model.config.num_classes}"
        )
    for split in ("val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if len(x):
            model.check_x(x)
        if len(y) != len(x):
            raise UserError(
                f"x_{split} has {len(x)} rows but y_{split} {len(y)}; give one label per row"
            )


def _check_binarize(settings: FitSettings, data: SemiSupervisedData) -> None:
    """Binarisation draws each input as a Bernoulli probability: refused, before anything
    is written, for data outside [0, 1] (real-valued features such as moons)."""
    x = data.x_train
    if settings.binarize and len(x) and (x.min() < 0 or x.max() > 1):
        raise UserError(
            f"binarize needs inputs in [0, 1], but the {data.name} training rows lie in "
            f"[{x.min().item():.3g}, {x.max().item():.3g}]; drop --binarize (binarize=False)"
        )


def _data_record(data: SemiSupervisedData) -> dict[str, Any]:
    """The data's summary and, when it came from a named dataset, the recipe that rebuilds
    it (``ppl_ssvae.data.load_recipe``), so evaluate and resume need nothing but the run."""
    return {**data.summary, **({"recipe": data.recipe} if data.recipe else {})}


def _known_options(options: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(FitSettings)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise UserError(f"fit() got unknown settings {unknown}; choose from {sorted(names)}")
    return options


def _clustering() -> Any:
    return protocol.evaluators()["clustering"]
