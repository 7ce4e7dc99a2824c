"""``fit``: train any model of the library with ``pyro.infer.SVI``.

A run is three things: its settings (``FitSettings``, saved as-is to config.json), its run
directory (``ppl_ssvae.rundir.RunDir``: config, metrics, checkpoints, lock, resume records)
and the loop (``_Loop``): one ``svi.step`` per mixed batch, an evaluation after every
epoch, the best epoch by validation accuracy kept. A resumed run reproduces the
uninterrupted one on CPU (same seed); a non-finite loss, gradient or parameter, or a
diverging loss (``ppl_ssvae.divergence``), stops the run with the last good checkpoint intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import platform
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import SVI
from tqdm.auto import tqdm

from . import __version__, distributed, protocol
from .checkpoint import rng_state, set_rng_state
from .data import SemiSupervisedBatches, SemiSupervisedData, parse_labelled_share
from .distributed import DataParallelSteps, ProcessGroup
from .divergence import DIVERGENCE_FACTOR, DivergenceGuard, is_validation_error
from .errors import (
    DivergenceError,
    NonFiniteLossError,
    UserError,
    check_seed,
    is_finite_number,
    is_int,
    require,
)
from .memory import check_fit_memory
from .models.base import SemiSupervisedModel
from .optim import SingleOptimizer, check_optimizer
from .protocol import Evaluator
from .rundir import BEST, CHECKPOINT, CONFIG, METRICS, RunDir
from .runkinds import run_marker

__all__ = [
    "BEST", "CHECKPOINT", "CONFIG", "METRICS", "PRECISIONS", "FitResult", "FitSettings",
    "environment", "fit", "make_optimizer", "precision_context", "resolve_device",
    "resolve_precision",
]  # fmt: skip

# Training-step precision: autocast dtype per name (None = off). bf16 autocast runs the
# matrix products of the SVI steps in bfloat16 while parameters, optimiser state and every
# distribution stay float32 (nets.full_precision). "auto" picks bf16 only where the device
# multiplies bfloat16 matrices fast enough to gain (``native_bf16``).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
PRECISION_CHOICES = ("auto", *PRECISIONS)
# What an explicit bf16 costs where it is emulated (measured by benchmarks/precision_speed.py
# and a full epoch on an AVX2-only AMD EPYC).
EMULATED_BF16 = (
    "an M2 epoch was measured 7.6x slower (417 vs 55 CPU-s) on an AVX2 CPU, "
    "and M2 steps 1.4x slower on an AVX512-BF16 CPU without AMX"
)
# Settings a resume may change; the others are the run's identity.
RESUMABLE = ("epochs", "max_minutes", "max_cpu_minutes", "device", "divergence_factor")


class PrecisionWarning(UserWarning):
    """bf16 was asked for where it is emulated, so it slows training down."""


@dataclass
class FitSettings:
    """How ``fit`` trains; saved as-is (resolved) to config.json's ``fit``.

    Attributes:
        epochs: passes over the unlabelled training rows.
        batch_size, labelled_share, binarize: see ``SemiSupervisedBatches``.
            ``labelled_share=None`` takes the protocol's (``protocol.default_labelled_share``:
            1:1 under hidden or extra classes, else the data's natural share);
            ``binarize=None`` binarises exactly when the likelihood is Bernoulli, so grey
            levels become the binary data it describes (Willetts et al. App. B).
        lr: learning rate.
        lr_decay: the learning rate is multiplied by this once per epoch (spread evenly
            over its steps); 0.9 takes 1e-3 to ~5e-5 in 30 epochs.
        optimizer: ``"adam"`` or ``"rmsprop"`` (Berkhahn et al. App. A), one torch
            optimizer over all parameters (``ppl_ssvae.optim.SingleOptimizer``).
        optimizer_args: further arguments of that optimizer, e.g. ``{"momentum": 0.9}``.
        seed: seeds batches, binarisation and z samples.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        max_minutes: stop, as a normal finish, at the end of the epoch that passes this
            wall-clock budget.
        max_cpu_minutes: stop, as a normal finish, before an epoch that would end past this
            budget of process CPU time (all threads), judged by the previous epoch's CPU
            time (the budgets of Willetts et al.-style comparisons are CPU-minutes).
        precision: ``"fp32"``; ``"bf16"`` to run the training steps under bfloat16
            autocast (about twice the steps per CPU-minute with AMX, several times slower
            where bfloat16 is emulated, which warns); ``"auto"``: bf16 exactly where the
            device has native bfloat16 matrix products. Evaluation is always float32.
            The default is fp32 because precision changes a run's numbers, and a run's
            numbers should not depend on which CPU it lands on unless asked.
        objective: the Pyro objective by name (``ppl_ssvae.objectives``); None: the model's.
        num_particles: samples per row of the objective (vectorised); Willetts et al.
            App. B use 2.
        divergence_factor: stop, like a non-finite loss (``DivergenceError``, the last
            good checkpoint intact), when a step's loss per row grows past this many times
            the first step's (``ppl_ssvae.divergence.DivergenceGuard``, which says why 1e4);
            None: no such check. A resume may change it.
        progress: show a progress bar (not saved).
    """

    epochs: int = 30
    batch_size: int = 200
    labelled_share: str | float | None = None
    binarize: bool | None = None
    lr: float = 1e-3
    lr_decay: float = 0.9
    optimizer: str = "adam"
    optimizer_args: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    max_minutes: float | None = None
    max_cpu_minutes: float | None = None
    precision: str = "fp32"
    objective: str | None = None
    num_particles: int = 1
    divergence_factor: float | None = DIVERGENCE_FACTOR
    progress: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FitSettings:
        """From config.json's ``fit``; keys of later versions are refused, missing ones
        (runs saved before a setting existed) take the default the run had then."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserError(f"unknown fit settings {unknown}; choose from {sorted(names)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        del values["progress"]
        return values

    def validate(self) -> None:
        """One UserError for the first bad setting, before anything is written."""
        require(
            is_int(self.epochs) and self.epochs >= 0,
            f"epochs={self.epochs!r} must be an integer >= 0",
        )
        require(is_int(self.batch_size) and self.batch_size >= 1,
                 f"batch_size={self.batch_size!r} must be an integer >= 1")  # fmt: skip
        if self.labelled_share is not None:
            parse_labelled_share(self.labelled_share)
        require(
            self.binarize in (None, True, False),
            f"binarize={self.binarize!r} must be true, false or None",
        )
        require(_positive(self.lr), f"lr={self.lr!r} must be a finite number > 0")
        require(is_finite_number(self.lr_decay) and 0.0 < self.lr_decay <= 1.0,
                 f"lr_decay={self.lr_decay!r} must be in (0, 1]")  # fmt: skip
        check_optimizer(self.optimizer, self.optimizer_args)
        check_seed(self.seed)
        resolve_device(self.device)
        for name in ("max_minutes", "max_cpu_minutes"):
            value = getattr(self, name)
            require(
                value is None or _positive(value), f"{name}={value!r} must be a finite number > 0"
            )
        require(self.precision in PRECISION_CHOICES,
                 f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")  # fmt: skip
        require(self.objective is None or isinstance(self.objective, str),
                 f"objective={self.objective!r} must be a name")  # fmt: skip
        require(is_int(self.num_particles) and self.num_particles >= 1,
                 f"num_particles={self.num_particles!r} must be an integer >= 1")  # fmt: skip
        factor = self.divergence_factor
        require(factor is None or (is_finite_number(factor) and factor > 1),
                f"divergence_factor={factor!r} must be a finite number > 1 (or None)")  # fmt: skip

    def resolved(self, model: SemiSupervisedModel, data: SemiSupervisedData) -> FitSettings:
        """The settings with every protocol default filled in from the model and data."""
        share = self.labelled_share
        if share is None:
            share = protocol.default_labelled_share(model.config.num_classes, data)
        binarize = (
            model.config.likelihood == "bernoulli" if self.binarize is None else self.binarize
        )
        return dataclasses.replace(self, labelled_share=share, binarize=binarize,
                                   device=str(resolve_device(self.device)))  # fmt: skip


def _positive(value: Any) -> bool:
    return is_finite_number(value) and value > 0


@dataclass
class FitResult:
    """What ``fit`` returns; ``history`` holds one dict per epoch (as in metrics.jsonl)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_accuracy: float = -math.inf
    stopped: str = "epochs"
    run_dir: Path | None = None

    @property
    def best(self) -> dict[str, Any] | None:
        return next((h for h in self.history if h["epoch"] == self.best_epoch), None)


DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available; a device that is not here is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in DEVICE_TYPES:
        raise UserError(f"device {dev.type!r} is not supported; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                "--device cuda requested but no CUDA device is available; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"--device {dev} but only {torch.cuda.device_count()} CUDA devices exist"
            )
    return dev


@cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def native_bf16(dev: torch.device) -> bool:
    """Whether bf16 autocast speeds training up on ``dev``: a CUDA GPU with bfloat16, or a
    CPU with AMX-BF16 tiles. AVX512-BF16 alone is not enough: on such a Xeon (no AMX)
    benchmarks/precision_speed.py measured bf16 steps at 0.70x (M2) and 0.75x (GM-DGM)
    the speed of fp32; on an AVX2-only EPYC an M2 epoch took 7.6x as long."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return "amx_bf16" in _cpu_flags()


def resolve_precision(precision: str, dev: torch.device) -> str:
    """``"fp32"`` or ``"bf16"`` for ``precision`` on ``dev``; an explicit bf16 where it is
    emulated warns (``PrecisionWarning``) with what it was measured to cost."""
    if precision not in PRECISION_CHOICES:
        raise UserError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}"
        )
    if precision == "auto":
        return "bf16" if native_bf16(dev) else "fp32"
    if precision == "bf16" and not native_bf16(dev):
        if dev.type == "cuda":
            raise UserError(
                "precision='bf16' needs a GPU with bfloat16 support; use precision='fp32'"
            )
        warnings.warn(
            f"bf16 on a CPU without AMX (capability {torch.backends.cpu.get_cpu_capability()}) "
            f"is slower than fp32: {EMULATED_BF16}; use --precision auto or fp32",
            PrecisionWarning,
            stacklevel=3,
        )
    return precision


def environment() -> dict[str, Any]:
    """Versions, CPU capability and git commit recorded with every run."""
    import numpy
    import sklearn

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here,
        ).stdout.strip() or None  # fmt: skip
        # Edits to tracked files that the commit does not hold.
        dirty = bool(subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, timeout=5, cwd=here,
        ).stdout.strip()) if commit else None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = dirty = None
    return {
        "ppl_ssvae": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "numpy": numpy.__version__,
        "sklearn": sklearn.__version__,
        "threads": torch.get_num_threads(),
        "git_commit": commit,
        "git_dirty": dirty,
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": native_bf16(torch.device("cpu")),
        **({"cuda": _cuda_environment()} if torch.cuda.is_available() else {}),
    }


def _cuda_environment() -> dict[str, Any]:
    """The GPU and the float32 settings that change its numbers. The library leaves
    torch's defaults: TF32 off for matrix products (float32 means float32; bf16 is asked
    for with precision), cuDNN's TF32 on for convolutions, no cuDNN autotuning (the
    pi-VAE's CNN would otherwise pick kernels per run, and resumes would not repeat)."""
    return {
        "device": torch.cuda.get_device_name(),
        "cuda": torch.version.cuda,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "bf16": torch.cuda.is_bf16_supported(),
    }


def _forget_model_params(model: SemiSupervisedModel) -> None:
    # pyro.module() returns what the param store already holds under a name, so stale
    # tensors of an earlier model with the same name would be optimised instead of ours.
    store = pyro.get_param_store()
    for name in [n for n in store if n.startswith(f"{model.name}.")]:
        del store[name]


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


def fit(
    model: SemiSupervisedModel,
    data: SemiSupervisedData,
    settings: FitSettings | None = None,
    *,
    out: str | Path | RunDir | None = None,
    resume: bool = False,
    overwrite: bool = False,
    evaluate: Evaluator | None = None,
    run_config: dict[str, Any] | None = None,
    **options: Any,
) -> FitResult:
    """Train ``model`` on ``data`` with SVI and the model's objective.

    Args:
        settings: a ``FitSettings``; keyword ``options`` (its field names: ``epochs=``,
            ``lr=``...) override it.
        out: run directory for config.json, metrics.jsonl, checkpoint.pt (last epoch) and
            best.pt (best validation accuracy). None: keep nothing.
        resume: continue the run in ``out`` from its checkpoint, up to ``epochs``.
        overwrite: clear the run ``out`` holds and start again (without it, a directory
            that holds a run is refused).
        evaluate: ``(model, data) -> dict`` run after each epoch, giving ``val_accuracy``
            (or, for models that cannot classify, ``elbo``: the validation ELBO). None: the
            protocol's (``protocol.default_evaluator_name``). Without validation rows the
            last epoch counts as the best.
        run_config: extra entries for config.json.

    Inside a ``torch.distributed`` process group of N ranks (``torchrun``), ``fit`` trains
    data-parallel (``ppl_ssvae.distributed``): ``batch_size`` is each rank's, the global
    batch N times that; rank 0 alone evaluates and writes ``out``; every rank returns.

    Raises:
        UserError: a bad setting, a run directory that cannot be used as asked, or a step
            too big for memory (``ppl_ssvae.memory``); raised before anything is written.
        NonFiniteLossError: the loss, a gradient, a parameter or a network's output became
            NaN/inf, or the loss diverged (``DivergenceError``); the last good checkpoint is
            intact.
    """
    settings = dataclasses.replace(settings or FitSettings(), **_known_options(options))
    settings.validate()
    _check_training_data(model, data)
    settings = settings.resolved(model, data)
    _check_binarize(settings, data)
    evaluate = evaluate or protocol.evaluators()[protocol.default_evaluator_name(model, data)]
    run = out if isinstance(out, RunDir) else (RunDir(out) if out is not None else None)
    if resume and run is None:
        raise UserError("resume needs the run directory (out=...)")
    group = distributed.current()
    if run is not None:  # said before the lock is taken, so a refused start writes nothing
        world = group.world_size if group else 1
        _on_main(group, lambda: check_run_start(run, resume, overwrite, settings.epochs, world))
    loop = _Loop(model, data, settings, evaluate, run, group)
    if run is None:
        return loop.train(start_epoch=1)
    with contextlib.ExitStack() as held:
        _on_main(group, lambda: _enter(held, run.lock()))
        _on_main(group, lambda: run.start(resume, overwrite))
        start = loop.restore() if resume else 1
        if group is None or group.is_main:
            _record_start(run, model, data, settings, evaluate, run_config, resume, start, group)
        return loop.train(start_epoch=start)


def _on_main(group: ProcessGroup | None, action: Any) -> Any:
    """``action()`` here, or on rank 0 of a data-parallel run with its refusal raised on
    every rank."""
    return action() if group is None else group.on_main(action)


def _enter(stack: contextlib.ExitStack, context: Any) -> None:
    stack.enter_context(context)


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
    run_config: dict[str, Any] | None,
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
        **(run_config or {}),
        "environment": env,
    })  # fmt: skip
    run.write_history([])


def _check_epochs_left(trained: int, epochs: int, run: RunDir) -> None:
    if trained >= epochs:
        raise UserError(
            f"nothing left to train: {run.path} has trained {trained} epochs already; "
            f"resume with --epochs above {trained}"
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
    return {k: (v or {}) if k == "optimizer_args" else v for k, v in options.items()}


class _Loop:
    """The SVI loop of one run: epochs of steps, evaluation, best epoch, budgets, saving."""

    def __init__(
        self,
        model: SemiSupervisedModel,
        data: SemiSupervisedData,
        settings: FitSettings,
        evaluate: Evaluator,
        run: RunDir | None,
        group: ProcessGroup | None = None,
    ) -> None:
        self.group = group
        self.main = group is None or group.is_main
        rank, world = (group.rank, group.world_size) if group else (0, 1)
        # Every rank joins the checkpoint's RNG gather; only rank 0 writes.
        self.keeps_checkpoints = run is not None
        self.model, self.data, self.settings, self.evaluate = model, data, settings, evaluate
        self.run = run if self.main else None
        self.device = resolve_device(settings.device)
        self.precision = resolve_precision(settings.precision, self.device)
        self.autocast = precision_context(self.device, self.precision)
        pyro.set_rng_seed(distributed.rank_seed(settings.seed, rank))
        model.to(self.device)
        _forget_model_params(model)
        s = settings
        # The training set goes to the GPU once; one too big for it stays in host memory
        # and each batch is copied from pinned memory (``_device_batches``).
        self.host_batches = self.device.type == "cuda" and not _fits_on(self.device, data.x_train)
        where = torch.device("cpu") if self.host_batches else self.device
        self.batches = SemiSupervisedBatches(
            data.x_train.to(where), data.y_train.to(where), s.batch_size * world,
            s.labelled_share, s.binarize, s.seed, shard=(rank, world),
        )  # fmt: skip
        rows = -(-max(sum(sizes) for sizes in self.batches.batch_sizes()) // world)  # per rank
        check_fit_memory(model, model.config.input_dim, model.config.num_classes,
                         (s.batch_size, rows), s.num_particles, self.device)  # fmt: skip
        self.optim = make_optimizer(s.optimizer, s.lr, s.lr_decay ** (1.0 / len(self.batches)),
                                    s.optimizer_args)  # fmt: skip
        elbo = _make_elbo(model, s)
        if group is None:
            self.train_step = SVI(model.model, model.guide, self.optim, elbo).step
        else:
            self.train_step = DataParallelSteps(model, elbo, self.optim, group).step
        self.result = FitResult(run_dir=run.path if run else None)
        self.divergence = DivergenceGuard(s.divergence_factor)
        self.elapsed_wall = self.elapsed_cpu = 0.0
        self.saved_epoch: int | None = None

    # -- resume --------------------------------------------------------------------------
    def restore(self) -> int:
        """Load the run's checkpoint (rank 0 reads it and sends it to the other ranks);
        the epoch to continue from."""
        state = self.run.load_weights(self.model, CHECKPOINT) if self.main else None
        if self.group is not None:
            state = self.group.broadcast(state)
            if not self.main:
                self.model.load_state_dict(state["model"])
        trained = int(state["epoch"])
        self.optim.set_state(state["optim"])
        rank = self.group.rank if self.group else 0
        set_rng_state(state.get("rng_ranks", [state["rng"]])[rank])
        self.elapsed_wall, self.elapsed_cpu = state["elapsed_wall"], state["elapsed_cpu"]
        self.result.best_epoch = state["best_epoch"]
        self.result.best_val_accuracy = state["best_val_accuracy"]
        self.divergence.start = state.get("divergence_start")  # None: saved before the guard
        if self.main:
            on_disk = self.run.read_history(up_to=trained)  # warns of what the resume drops
            self.result.history = list(state.get("history", on_disk))
            self.run.write_history(self.result.history)
        self.saved_epoch = trained
        return trained + 1

    # -- the loop ------------------------------------------------------------------------
    def train(self, start_epoch: int) -> FitResult:
        result = self.result
        for epoch in range(start_epoch, self.settings.epochs + 1):
            stop = self._agreed(self._budget_spent)
            if stop:
                result.stopped = stop
                break
            self._epoch(epoch)
        else:
            result.stopped = "epochs"
        limit = self.settings.max_minutes
        if limit is not None and result.stopped == "epochs" and self.elapsed_wall >= 60 * limit:
            result.stopped = "max_minutes"
        return result

    def _agreed(self, decide: Any) -> Any:
        """Rank 0's decision on every rank (its clocks and history decide)."""
        if self.group is None:
            return decide()
        return self.group.broadcast(decide() if self.main else None)

    def _budget_spent(self) -> str | None:
        s, history = self.settings, self.result.history
        if s.max_minutes is not None and self.elapsed_wall >= 60 * s.max_minutes:
            return "max_minutes"
        next_cpu = history[-1]["epoch_cpu_seconds"] if history else 0.0
        if (
            s.max_cpu_minutes is not None
            and history
            and (self.elapsed_cpu + next_cpu > 60 * s.max_cpu_minutes)
        ):
            return "max_cpu_minutes"
        return None

    def _epoch(self, epoch: int) -> None:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        train_loss = self._train_steps(epoch)
        train_seconds = time.perf_counter() - wall0
        if not self.main:  # rank 0 evaluates the same weights and keeps the record
            self._check_parameters(epoch, "the end of the epoch")
            if self.keeps_checkpoints:
                self.group.gather(rng_state())
            return
        try:
            report = self.evaluate(self.model, self.data)
        except ValueError as e:  # the evaluation's distributions validate the outputs too
            if not is_validation_error(e):
                raise
            raise self._non_finite(epoch, None, "the networks' outputs", "the evaluation") from e
        epoch_wall, epoch_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        self.elapsed_wall += epoch_wall
        self.elapsed_cpu += epoch_cpu
        record = {
            "epoch": epoch, "train_loss": train_loss, **report, "epoch_seconds": epoch_wall,
            "train_seconds": train_seconds, "epoch_cpu_seconds": epoch_cpu,
            "elapsed_seconds": self.elapsed_wall, "elapsed_cpu_seconds": self.elapsed_cpu,
            "precision": self.precision,
        }  # fmt: skip
        self.result.history.append(record)
        improved = self._select(epoch, report)
        if self.settings.progress:
            tqdm.write(_progress_line(record))
        if self.keeps_checkpoints:
            self._check_parameters(epoch, "the end of the epoch")
            self._save(epoch, record, improved)

    def _train_steps(self, epoch: int) -> float:
        self.model.train()
        total, rows = 0.0, 0
        bar = tqdm(self._device_batches(epoch), total=len(self.batches),
                   desc=f"epoch {epoch}/{self.settings.epochs}",
                   disable=not (self.settings.progress and self.main),
                   leave=False, dynamic_ncols=True)  # fmt: skip
        # The loss is the global batch's (summed over ranks), so rows count all of it.
        global_rows = [sum(sizes) for sizes in self.batches.batch_sizes()]
        for step, (x, y) in enumerate(bar, 1):
            loss = self._step(x, y, epoch, step)
            self._check_divergence(loss / global_rows[step - 1], epoch, step)
            total, rows = total + loss, rows + global_rows[step - 1]
            if step % 10 == 1:
                bar.set_postfix(loss=f"{total / rows:.2f}")
        bar.close()
        return total / max(rows, 1)

    def _device_batches(self, epoch: int) -> Any:
        for x, y in self.batches.epoch(epoch):
            if self.host_batches:
                x = x.pin_memory().to(self.device, non_blocking=True)
                y = y.pin_memory().to(self.device, non_blocking=True)
            yield x, y

    def _step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int) -> float:
        try:
            with self.autocast:
                loss = self.train_step(x, y)
        except ValueError as e:
            # Pyro validates distribution arguments: NaN parameters, or finite ones whose
            # activations overflowed, surface as a ValueError inside svi.step before the
            # loss can be checked.
            if not _all_finite(self.model):
                raise self._non_finite(epoch, step, "the parameters") from e
            if is_validation_error(e):
                raise self._non_finite(epoch, step, "the networks' outputs") from e
            raise
        if not math.isfinite(loss):
            raise self._non_finite(epoch, step, f"the loss ({loss})")
        return loss

    def _check_divergence(self, loss_per_row: float, epoch: int, step: int) -> None:
        diverged = self.divergence.check(loss_per_row)
        if diverged:
            raise DivergenceError(
                f"{diverged} at epoch {epoch}, step {step}; training stopped, {self._kept()}; "
                "lower the learning rate, or raise divergence_factor if this growth is expected"
            )

    def _check_parameters(self, epoch: int, where: str) -> None:
        # A step with finite loss can still leave NaN weights (an inf gradient); they must
        # never reach a checkpoint.
        if not _all_finite(self.model):
            raise self._non_finite(epoch, None, "the parameters", where)

    def _non_finite(
        self, epoch: int, step: int | None, what: str, where: str | None = None
    ) -> NonFiniteLossError:
        at = f"epoch {epoch}, step {step}" if step is not None else f"epoch {epoch}, {where}"
        return NonFiniteLossError(
            f"{what} became non-finite at {at}; training stopped, {self._kept()}; lower the "
            "learning rate or check the data"
        )

    def _kept(self) -> str:
        """What a stopped run leaves: the last good checkpoint, if any."""
        if self.run is None and self.keeps_checkpoints:
            return "rank 0 keeps the last good checkpoint in the run directory"
        if self.run is None:
            return "no checkpoint is kept (no run directory)"
        if self.saved_epoch is None:
            return "no checkpoint was written (no epoch had finished)"
        return f"the last good checkpoint is {self.run.file(CHECKPOINT)} (epoch {self.saved_epoch})"

    def _select(self, epoch: int, report: dict[str, Any]) -> bool:
        # Best by validation accuracy (validation ELBO for models that cannot classify);
        # without a finite validation number, the latest epoch.
        val = report.get("val_accuracy", report.get("elbo"))
        val = float(val) if isinstance(val, (int, float)) else float("nan")
        if not math.isfinite(val):
            self.result.best_epoch, self.result.best_val_accuracy = epoch, -math.inf
            return True
        if val > self.result.best_val_accuracy:
            self.result.best_epoch, self.result.best_val_accuracy = epoch, val
            return True
        return False

    def _save(self, epoch: int, record: dict[str, Any], improved: bool) -> None:
        run, model = self.run, self.model
        rngs = self.group.gather(rng_state()) if self.group else [rng_state()]
        if improved:
            run.save_checkpoint(
                BEST, {"model": model.state_dict(), "epoch": epoch, "metrics": record}
            )
        # metrics first: a failed checkpoint write leaves an extra line, which resume drops.
        run.write_history(self.result.history)
        run.save_checkpoint(CHECKPOINT, {
            "model": model.state_dict(), "optim": self.optim.get_state(), "rng": rngs[0],
            "rng_ranks": rngs,
            "epoch": epoch, "elapsed_wall": self.elapsed_wall, "elapsed_cpu": self.elapsed_cpu,
            "best_epoch": self.result.best_epoch,
            "best_val_accuracy": self.result.best_val_accuracy,
            "history": self.result.history, "divergence_start": self.divergence.start,
        })  # fmt: skip
        self.saved_epoch = epoch


def _fits_on(device: torch.device, x: torch.Tensor) -> bool:
    """Whether ``x`` takes at most a quarter of the GPU's free memory (the rest is for the
    networks, the enumerated batch and the evaluation passes)."""
    free, _ = torch.cuda.mem_get_info(device)
    return x.element_size() * x.nelement() <= free // 4


def _make_elbo(model: SemiSupervisedModel, settings: FitSettings) -> Any:
    options: dict[str, Any] = {}
    if settings.objective is not None:
        options["objective"] = settings.objective
    if settings.num_particles != 1:
        options["num_particles"] = settings.num_particles
    return model.make_elbo(**options)


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _progress_line(record: dict[str, Any]) -> str:
    nan = float("nan")
    return (
        f"epoch {record['epoch']}: loss {record['train_loss']:.2f}  "
        f"elbo {_num(record.get('elbo', nan)):.2f}  val acc {_num(record.get('val_accuracy', nan)):.4f}  "
        f"test acc {_num(record.get('test_accuracy', nan)):.4f}  ({record['epoch_seconds']:.1f}s)"
    )


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def precision_context(dev: torch.device, precision: str) -> torch.autocast:
    """The autocast context a training step of ``precision`` (``"fp32"`` or ``"bf16"``)
    runs in on ``dev`` (a disabled one for ``"fp32"``); reusable across steps."""
    dtype = PRECISIONS[precision]
    if dtype is torch.bfloat16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("precision='bf16' needs a GPU with bfloat16 support; use precision='fp32'")
    return torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def make_optimizer(
    name: str, lr: float, lr_decay_per_step: float = 1.0, options: dict[str, Any] | None = None
) -> SingleOptimizer:
    """The optimizer ``fit`` uses: one torch optimizer (``"adam"``, ``"rmsprop"``) over all
    parameters, with the learning rate multiplied by ``lr_decay_per_step`` after each step."""
    return SingleOptimizer(name, lr, lr_decay_per_step, **(options or {}))
