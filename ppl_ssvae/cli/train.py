"""``ppl-ssvae train``: argv (and ``--config FILE``) -> ``RunSpec`` -> ``RunSpec.train``.

Every training option is generated from the spec's fields (:mod:`.options`); a config
file gives the same settings by section, and flags override it. ``--resume`` rebuilds the
run with ``load_run`` and may change only the budget (``RESUMABLE``).
"""

from __future__ import annotations

import argparse
import copy
import json
from typing import Any

from ..errors import UserError
from ..runs import DataSpec, RunSpec, load_run
from ..runs.directory import RunDir, current_budget
from ..runs.files import read_spec_file, to_toml
from ..training import RESUMABLE, FitResult, FitSettings, check_run_start
from ..training.optim import OPTIMIZER_OPTIONS
from .launch import launch_data_parallel
from .options import (
    TRUST_HELP,
    add_dataclass,
    add_model_fields,
    add_trust_guide,
    callback_option,
    given,
    key_values,
    number_text,
)  # fmt: skip


def add_parser(sub: Any) -> None:
    from ..guides import describe_guides
    from ..models import MODELS

    t = sub.add_parser("train", help="train a model", description="Train a model with SVI. "
                       "Every option is also a field of a --config file's section.")  # fmt: skip
    g = t.add_argument_group("data [data]")
    add_dataclass(g, DataSpec, "data")
    g = t.add_argument_group("model [model]")
    g.add_argument("--model", dest="model.name", default=argparse.SUPPRESS, metavar="NAME",
                   help=f"model family: {', '.join(MODELS)} [m2]")  # fmt: skip
    g.add_argument("--guide", dest="model.guide", metavar="NAME", default=argparse.SUPPRESS,
                   help="the guide family of every continuous latent: "
                   + "; ".join(describe_guides().splitlines()) + "; or a head function of "
                   "yours as pkg.module:factory (recorded; reading the run back needs "
                   "--trust-guide pkg.module) [gaussian]")  # fmt: skip
    g.add_argument("--init-from", dest="init_from", metavar="RUN", default=argparse.SUPPRESS,
                   help="start from RUN's best checkpoint: copy every weight the two models "
                   "share (encoder, decoder, classifier, the Gaussian head a flow refines)")  # fmt: skip
    g.add_argument("--guide-arg", dest="model.guide_arg", action="append", metavar="KEY=VALUE",
                   default=argparse.SUPPRESS, help="an argument of the guide family (JSON value)")  # fmt: skip
    g.add_argument("--extra-classes", dest="model.extra_classes", type=int, metavar="N",
                   default=argparse.SUPPRESS, help="N_aug classes added beyond the dataset's K "
                   "(Willetts et al. sec 6.1) [0]")  # fmt: skip
    g.add_argument("--model-arg", dest="model.model_arg", action="append", metavar="KEY=VALUE",
                   default=argparse.SUPPRESS, help="any model config field (JSON value)")  # fmt: skip
    add_model_fields(t.add_argument_group("model config fields [model.options]"))
    g = t.add_argument_group("training [fit]")
    add_dataclass(g, FitSettings, "fit")
    for flag, dest in (
        ("--optimizer-arg", "optimizer_arg"),
        ("--lr-scheduler-arg", "scheduler_arg"),
    ):
        g.add_argument(flag, dest=f"fit.{dest}", action="append", metavar="KEY=VALUE",
                       default=argparse.SUPPRESS, help="an argument of it (JSON value), repeatable")  # fmt: skip
    for name in OPTIMIZER_OPTIONS:  # the optimizer arguments papers name (RMSprop's rho)
        g.add_argument(f"--{name}", dest=f"fit.{name}", type=float, default=argparse.SUPPRESS, metavar="X",
                       help=f"optimizer argument {OPTIMIZER_OPTIONS[name]!r} (torch's name)")  # fmt: skip
    g.add_argument("--no-progress", dest="fit.progress", action="store_false",
                   default=argparse.SUPPRESS, help="no progress bar")  # fmt: skip
    g.add_argument("--callback", dest="callbacks", action="append", type=callback_option,
                   metavar="NAME[:KEY=VALUE,...]", default=argparse.SUPPRESS,
                   help="a registered callback with its arguments, repeatable: kl_warmup:epochs=10, "
                   "early_stopping:patience=5, alpha_schedule, csv, tensorboard, mlflow")  # fmt: skip
    g = t.add_argument_group("run")
    g.add_argument("--out", help="run directory (config.json, metrics.jsonl, checkpoints)")
    g.add_argument("--config", metavar="FILE", help="a run spec file (TOML, YAML or JSON); "
                   "flags override its values")  # fmt: skip
    g.add_argument("--print-config", action="store_true",
                   help="print the run spec these options give, as TOML, and exit")  # fmt: skip
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (only "
                   f"{', '.join(RESUMABLE)} may change)")  # fmt: skip
    g.add_argument("--overwrite", action="store_true", help="clear the run --out holds and "
                   "start again (without it, an --out that holds a run is refused)")  # fmt: skip
    g.add_argument("--trust-unverified", action="store_true", help=TRUST_HELP)
    add_trust_guide(g)
    g.add_argument("--devices", type=int, default=1, metavar="N",
                   help="train data-parallel on N processes (one per GPU with --device cuda; one "
                   "thread each on CPU); --batch-size is then each process's [1]")  # fmt: skip


def spec_values(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The spec's sections from ``base`` (a config file's or a run's), with the flags the
    user gave laid over them."""
    values = copy.deepcopy(base or {})
    flags = given(args)
    model, fit = flags.pop("model", {}), flags.pop("fit", {})
    options = {
        **model.pop("options", {}),
        **key_values(model.pop("model_arg", None), "--model-arg"),
    }
    guide_args = key_values(model.pop("guide_arg", None), "--guide-arg")
    section = values.setdefault("model", {})
    section.update(model)
    section["options"] = {**(section.get("options") or {}), **options}
    section["guide_args"] = {**(section.get("guide_args") or {}), **guide_args}
    optimizer_args = key_values(fit.pop("optimizer_arg", None), "--optimizer-arg")
    optimizer_args |= {
        OPTIMIZER_OPTIONS[k]: fit.pop(k) for k in list(fit) if k in OPTIMIZER_OPTIONS
    }
    scheduler_args = key_values(fit.pop("scheduler_arg", None), "--lr-scheduler-arg")
    section = values.setdefault("fit", {})
    section.update(fit)
    if optimizer_args:
        section["optimizer_args"] = {**(section.get("optimizer_args") or {}), **optimizer_args}
    if scheduler_args:
        section["lr_scheduler_args"] = {
            **(section.get("lr_scheduler_args") or {}),
            **scheduler_args,
        }
    values.setdefault("data", {}).update(flags.pop("data", {}))
    values["callbacks"] = [*(values.get("callbacks") or []), *getattr(args, "callbacks", [])]
    if getattr(args, "init_from", None) is not None:
        values["init_from"] = args.init_from
    return values


def train(args: argparse.Namespace) -> int:
    from ..training import distributed

    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other; give one of them")
    if args.devices < 1:
        raise UserError(f"--devices {args.devices} must be >= 1")
    if args.print_config:
        print(to_toml(spec_from_args(args).to_dict()), end="")
        return 0
    if args.out is None:
        raise UserError("train needs --out DIR, the run directory")
    run = RunDir(args.out, trust_unverified=args.trust_unverified)
    run.check_start(args.resume, args.overwrite)
    spec = _resumed_spec(args, run) if args.resume else spec_from_args(args)
    if args.devices > 1 and not distributed.launched():
        # Refusals (a run to keep, nothing left, another N) before launching.
        check_run_start(run, args.resume, args.overwrite, spec.fit.epochs, args.devices)
        return launch_data_parallel(args.devices, args.out)
    group, device = distributed.init_from_environment(spec.fit.device or "auto")
    spec.fit.device = device
    if args.resume:
        budget = {k: getattr(spec.fit, k) for k in (*RESUMABLE, "progress")}
        result = load_run(run).resume(**budget)
    else:
        result = spec.train(run, overwrite=args.overwrite)
    if group is None:
        _report(result)
    else:  # rank 0 reports while the others wait, so that the ranks leave the group together
        group.on_main(lambda: _report(result))
    return 0


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """The run spec of a new run: the ``--config`` file's, with the flags laid over it."""
    base = read_spec_file(args.config) if args.config else {}
    return RunSpec.from_dict(spec_values(args, base))


def _resumed_spec(args: argparse.Namespace, run: RunDir) -> RunSpec:
    """The run's own spec with the budget given now; any other flag that differs from what
    the run recorded is refused (runs from before specs: from their recorded options)."""
    if args.config:
        raise UserError("--resume continues the run as config.json records it; drop --config")
    config = run.read_config()
    if "spec" not in config:
        return _legacy_resume(args, config)
    recorded = {
        **config["spec"],
        "fit": {**config["spec"].get("fit", {}), **current_budget(config)},
    }
    wanted = spec_values(args, recorded)
    # Compared as JSON holds them: --hidden 16 is the (16,) a spec file records as [16].
    as_json = lambda values: json.loads(json.dumps(values, default=str))  # noqa: E731
    changed = sorted(_differences(as_json(recorded), as_json(wanted), {*RESUMABLE, "progress"}))
    if changed:
        raise UserError(f"--resume cannot change {', '.join(changed)}; start a new --out instead")
    return RunSpec.from_dict(wanted)


def _legacy_resume(args: argparse.Namespace, config: dict[str, Any]) -> RunSpec:
    """A run written before specs were recorded resumes with its recorded settings and the
    budget flags only."""
    flags = given(args)
    budget = {k: v for k, v in flags.get("fit", {}).items() if k in (*RESUMABLE, "progress")}
    others = sorted({k for section in flags.values() for k in section} - set(budget))
    if others or getattr(args, "callbacks", None):
        raise UserError(
            f"{args.out} was written before run specs; --resume takes only "
            f"{', '.join(RESUMABLE)} for it, not {', '.join(others) or '--callback'}"
        )
    fit = {**current_budget(config), **budget}
    return RunSpec(fit=FitSettings.from_dict(fit))


def _differences(before: Any, after: Any, allowed: set[str], path: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        keys = set(before) | set(after)
        return [d for k in keys for d in _differences(before.get(k), after.get(k), allowed,
                                                       f"{path}.{k}" if path else k)]  # fmt: skip
    leaf = path.rsplit(".", 1)[-1]
    if leaf in allowed or before == after or (after in (None, {}, []) and before in (None, {}, [])):
        return []
    if not path.startswith(("fit", "data", "model")) and not path.startswith("callbacks"):
        return []
    return [leaf]


def _report(result: FitResult) -> None:
    best = result.best
    if best is None:
        print(f"no epoch trained (stopped: {result.stopped})")
        return
    budget = (f"[{len(result.history)} epochs, {result.history[-1]['elapsed_cpu_seconds'] / 60:.1f} "
              f"CPU-min, stopped: {result.stopped}]")  # fmt: skip
    if "val_accuracy" not in best:
        print(f"best epoch {best['epoch']} (validation ELBO {best['elbo']:.2f}): test ELBO "
              f"{best['test_elbo']:.2f}  {budget}")  # fmt: skip
        return
    print(f"best epoch {best['epoch']} (validation accuracy {number_text(best['val_accuracy'])}): "
          f"test accuracy {number_text(best['test_accuracy'])}  {budget}")  # fmt: skip
    if result.artifacts is not None:
        _clustering_lines(best, result.artifacts)


def _clustering_lines(best: dict[str, Any], written: dict[str, Any]) -> None:
    print(f"cluster-and-label ({best['cluster_mapping']} mapping): visible classes "
          f"{number_text(best['test_accuracy_visible'])}, hidden classes {number_text(best['test_accuracy_hidden'])}")  # fmt: skip
    if written["unit_activity_error"]:
        print(f"unit activity skipped: {written['unit_activity_error']}")
    folder = written["files"][0].parent if written["files"] else ""
    print(f"wrote {', '.join(p.name for p in written['files'])} to {folder}")
