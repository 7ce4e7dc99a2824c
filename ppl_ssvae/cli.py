"""The ``ppl-ssvae`` command: ``train`` and ``evaluate``.

User errors exit non-zero with one line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from .distributed import LAUNCHER_ENV, PEER_EXIT, PeerFailure
from .errors import NonFiniteLossError, UserError
from .rundir import RunDir

# The command's own defaults: the data options, then the training settings, which are the
# library's (FitSettings). Kept out of argparse so that --resume can tell which options the
# user actually gave (argparse leaves those not given at None).
DATA_DEFAULTS: dict[str, Any] = {
    "model": "m2",
    "dataset": "fashion-mnist",
    "data_dir": None,
    "labels": None,
    "label_fraction": None,
    "hidden_classes": "",
    "extra_classes": 0,
    "validation_size": None,
    "std_threshold": None,
}
OPTIMIZER_FLAGS = ("momentum", "rho", "eps")
# evaluate --iwae: an hour, then the user says how long they will wait.
IWAE_MAX_MINUTES = 60.0
MODEL_OPTIONS = ("z_dim", "hidden", "alpha", "likelihood", "sigma2", "activation", "variant", "net")
TRUST_HELP = ("load a checkpoint whose .sha256 checksum file is missing or malformed, with a "
              "warning (a run that wrote checksums refuses it otherwise)")  # fmt: skip


def _fit_defaults() -> dict[str, Any]:
    from .train import FitSettings

    defaults = FitSettings().to_dict()
    del defaults["optimizer_args"]  # given as --momentum / --rho / --eps
    return {**defaults, "progress": True}


def train_defaults() -> dict[str, Any]:
    """Every `ppl-ssvae train` option's default."""
    return {
        **DATA_DEFAULTS, **_fit_defaults(), **dict.fromkeys(OPTIMIZER_FLAGS),
        **dict.fromkeys(MODEL_OPTIONS), "model_arg": [], "guide": None, "guide_arg": [],
    }  # fmt: skip


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports errors on a single line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS
    from .guides import describe_guides, guide_names
    from .models import MODELS
    from .objectives import OBJECTIVES
    from .train import PRECISION_CHOICES

    parser = OneLineParser(
        prog="ppl-ssvae", description="Semi-supervised deep generative models in Pyro."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    d = train_defaults()
    t = sub.add_parser("train", help="train a model", description="Train a model with SVI.")
    t.set_defaults(**{k: None for k in d})
    g = t.add_argument_group("model")
    g.add_argument("--model", help=f"model family: {', '.join(MODELS)} [default: {d['model']}]")
    g.add_argument("--z-dim", type=int, help="size of the continuous latent z [model default]")
    g.add_argument("--hidden", help="hidden layer widths, e.g. 500 or 500,500 [model default]")
    g.add_argument(
        "--alpha",
        type=float,
        help="weight of the classification term alpha*log q(y|x) on labelled rows [model default]",
    )
    g.add_argument(
        "--likelihood", help="p(x|y,z): bernoulli (pixels in [0,1]) or gaussian [by dataset]"
    )
    g.add_argument("--sigma2", type=float, help="fixed variance of the gaussian likelihood [1.0]")
    g.add_argument(
        "--activation", help="hidden activation: relu, softplus, tanh, elu [model default]"
    )
    g.add_argument("--variant", help="pi-vae: ss (semi-supervised), es (supervised sibling), "
                   "eu (unsupervised sibling) [ss]")  # fmt: skip
    g.add_argument("--net", help="pi-vae: dense, cnn (images) or rnn (sequences) [dense]")
    g.add_argument("--guide", choices=guide_names(), metavar="NAME",
                   help="the guide family of every continuous latent (z; a for ADGM / AGM-DGM): "
                   + "; ".join(describe_guides().splitlines()) + " [gaussian]")  # fmt: skip
    g.add_argument("--guide-arg", action="append", metavar="KEY=VALUE",
                   help="an argument of the guide family (JSON value), repeatable")  # fmt: skip
    g.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="any other model config field (JSON value), repeatable")  # fmt: skip
    g = t.add_argument_group("data")
    g.add_argument("--dataset", help=f"{', '.join(DATASETS)} [default: {d['dataset']}]")
    g.add_argument("--data-dir", help="directory with the dataset files (IDX for fashion-mnist/mnist); "
                   "else $PPL_SSVAE_DATA, then /usr/share/datasets/fashion-mnist")  # fmt: skip
    g.add_argument(
        "--labels", type=int, help="keep exactly N labels, N/K per labelled class (0 = clustering)"
    )
    g.add_argument(
        "--label-fraction",
        type=float,
        help="keep this fraction of each labelled class's labels instead",
    )
    g.add_argument("--hidden-classes", help="comma-separated classes whose labels are all removed")
    g.add_argument(
        "--extra-classes",
        type=int,
        help="N_aug classes added to the model beyond the dataset's K, |y| = K + N_aug "
        "(Willetts et al. sec 6.1) [default: 0]",
    )
    g.add_argument(
        "--validation-size",
        type=int,
        help="labelled validation rows carved from training [dataset default]",
    )
    g.add_argument(
        "--std-threshold",
        type=float,
        help="keep only features with training std above this (0.1 in Willetts et al.)",
    )
    g.add_argument(
        "--binarize",
        action="store_true",
        help="dynamic binarisation, a fresh Bernoulli draw per batch [default: on for a "
        "bernoulli likelihood, off otherwise]",
    )
    g.add_argument("--no-binarize", dest="binarize", action="store_false", help="keep grey levels")
    g = t.add_argument_group("training")
    g.add_argument(
        "--epochs", type=int, help=f"passes over the unlabelled data [default: {d['epochs']}]"
    )
    g.add_argument(
        "--batch-size",
        type=int,
        help=f"rows per step, labelled + unlabelled [default: {d['batch_size']}]",
    )
    g.add_argument("--labelled-share", help="labelled share of each batch: natural, 1:1 or a number in [0,1) "
                   "[default: 1:1 with hidden or extra classes (Willetts et al. App. B), else natural]")  # fmt: skip
    g.add_argument("--optimizer", help="adam or rmsprop [default: adam; rmsprop for pi-vae]")
    g.add_argument("--momentum", type=float, help="rmsprop momentum [torch's default, 0]")
    g.add_argument("--rho", type=float, help="rmsprop squared-gradient decay (Keras's rho, "
                   "torch's alpha) [torch's default, 0.99; 0.9 for pi-vae]")  # fmt: skip
    g.add_argument("--eps", type=float, help="optimizer epsilon [torch's default; 1e-7 for pi-vae]")
    g.add_argument("--lr", type=float, help=f"learning rate [default: {d['lr']}; 5e-4 for pi-vae]")
    g.add_argument(
        "--lr-decay",
        type=float,
        help=f"multiply the learning rate by this every epoch (1 = constant) [default: {d['lr_decay']}]",
    )
    g.add_argument("--seed", type=int, help=f"random seed [default: {d['seed']}]")
    g.add_argument("--device", help="cpu, cuda or auto [default: auto]")
    g.add_argument("--devices", type=int, default=1, metavar="N",
                   help="train data-parallel on N processes (one per GPU with --device cuda; "
                   "one thread each on CPU), launched through torchrun; --batch-size is then "
                   "each process's [1]")  # fmt: skip
    g.add_argument(
        "--max-minutes",
        type=float,
        help="stop at the end of the epoch that passes this many minutes",
    )
    g.add_argument(
        "--max-cpu-minutes",
        type=float,
        help="stop before an epoch that would end past this many CPU-minutes (all threads; "
        "judged by the previous epoch)",
    )
    g.add_argument(
        "--precision",
        choices=list(PRECISION_CHOICES),
        help="training-step precision: bf16 autocast runs the matrix products in bfloat16 "
        "(~2x faster with AMX, slower without it: it warns); auto = bf16 only on AMX CPUs "
        "and bf16 GPUs; parameters and log-densities stay float32 [fp32]",
    )
    g.add_argument("--objective", choices=list(OBJECTIVES),
                   help="Pyro objective [the model's: trace_enum, or the pi-VAE's own loss]")  # fmt: skip
    g.add_argument("--num-particles", type=int,
                   help="samples per row of the objective, vectorised (2 in Willetts et al. "
                   "App. B) [1]")  # fmt: skip
    g.add_argument("--divergence-factor", type=float, metavar="F",
                   help="stop, like a non-finite loss, when the loss per row grows past F times "
                   f"its first step's; may change on --resume [{d['divergence_factor']:g}]")  # fmt: skip
    g.add_argument(
        "--out", required=True, help="run directory (config.json, metrics.jsonl, checkpoints)"
    )
    g.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    g.add_argument("--overwrite", action="store_true",
                   help="clear the run --out holds and start again (without it, an --out "
                   "that holds a run is refused)")  # fmt: skip
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument("--trust-unverified", action="store_true", help=TRUST_HELP)

    e = sub.add_parser("evaluate", help="test accuracy of a run's best checkpoint",
                       description="Print the test accuracy of the best-validation checkpoint of a run.")  # fmt: skip
    e.add_argument("run_dir", help="a run directory written by `ppl-ssvae train`")
    e.add_argument(
        "--checkpoint",
        choices=["best", "last"],
        default="best",
        help="which checkpoint to evaluate",
    )
    e.add_argument("--data-dir", help="override the data directory recorded in the run")
    e.add_argument("--iwae", type=int, metavar="K",
                   help="also estimate the test log-likelihood with K importance samples per "
                   "row (the IWAE bound; labels summed exactly), in nats and bits per dimension")  # fmt: skip
    e.add_argument("--iwae-rows", type=int, metavar="N",
                   help="estimate it on a fixed seeded subset of N test rows [all]")  # fmt: skip
    e.add_argument("--iwae-max-minutes", type=float, default=IWAE_MAX_MINUTES, metavar="M",
                   help="refuse an estimate that would take longer, judged by its first pass "
                   f"[{IWAE_MAX_MINUTES:g}]")  # fmt: skip
    e.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    e.add_argument("--trust-unverified", action="store_true", help=TRUST_HELP)

    a = sub.add_parser("active", help="cluster-then-label active labelling (Vengalil & Sinha)",
                       description="Label a dataset from nothing: cluster the latent space, ask an "
                       "oracle about decoded cluster centres, propagate the answers, retrain.")  # fmt: skip
    a.add_argument("--dataset", help=f"{', '.join(DATASETS)} [digits]")
    a.add_argument("--data-dir", help="directory with the dataset files")
    a.add_argument("--iterations", type=int, help="cluster-ask-train rounds [5]")
    a.add_argument("--queries", type=int, help="oracle queries per iteration [20]")
    a.add_argument("--k", type=int, help="clusters per round [10]")
    a.add_argument("--clustering", choices=["kmeans", "gmm"], help="[kmeans]")
    a.add_argument("--distance", choices=["euclidean", "mahalanobis"], help="[euclidean]")
    a.add_argument("--decay", choices=["exponential", "gaussian"],
                   help="confidence decay with distance, eq. 2 / eq. 3 [gaussian]")  # fmt: skip
    a.add_argument("--rate", type=float, help="decay rate a of eq. 2-3 [0.1]")
    a.add_argument("--gamma", type=float, help="weight of the propagated labels' loss, eq. 4 [10]")
    a.add_argument("--oracle", choices=["simulated", "human"], help="[simulated]")
    a.add_argument("--answers-file", help="human oracle: answers, one line per centre "
                   "('LABEL CONFIDENCE' or 'invalid') [stdin]")  # fmt: skip
    a.add_argument("--seed", type=int, help="[0]")
    a.add_argument("--out", required=True, help="run directory")
    a.add_argument("--resume", action="store_true",
                   help="continue the run in --out (only --iterations may change)")  # fmt: skip
    a.add_argument("--overwrite", action="store_true",
                   help="clear the run --out holds, its answers included, and start again")  # fmt: skip

    i = sub.add_parser("inspect", help="pictures and an arviz posterior of a run",
                       description="Write a run's pictures (confusion matrix, latent map, samples, "
                       "analogies, training curves...) and its posterior as arviz netCDF.")  # fmt: skip
    i.add_argument("run_dir", help="a run directory written by `ppl-ssvae train`")
    i.add_argument("--out", required=True, help="directory for the pictures and posterior.nc")
    i.add_argument("--rows", type=int, default=16, help="test rows in the posterior [16]")
    i.add_argument("--num-samples", type=int, default=100, help="posterior draws per row [100]")
    i.add_argument("--trust-unverified", action="store_true", help=TRUST_HELP)
    return parser


def _train_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's options: the defaults, the model's paper defaults and what was given; on
    --resume, what the run recorded, with only the budget options allowed to change."""
    defaults = train_defaults()
    given = {k: v for k, v in vars(args).items() if k in defaults and v is not None}
    if not args.resume:
        return {**defaults, **_model_fit_defaults(given), **given}
    config = RunDir(args.out).read_config() if _has_config(args.out) else None
    if config is None:
        raise UserError(
            f"--resume: no run in {args.out} (config.json missing); drop --resume to start one"
        )
    saved = dict(config.get("cli") or {})
    # A later resume starts from the budget the last one gave, not the first one's.
    for resumed in config.get("resumes", []):
        saved |= resumed["changed"]
    # Options a resumed run may change (the budget, and the progress bar, which is not
    # saved); everything else must match the saved run.
    from .train import RESUMABLE

    resumable = {*RESUMABLE, "progress"}
    changed = sorted(k for k, v in given.items() if k not in resumable and saved.get(k) != v)
    if changed:
        raise UserError(f"--resume cannot change {', '.join(changed)}; start a new --out instead")
    return {**defaults, **saved, **given}


def _has_config(out: str) -> bool:
    return (Path(out) / "config.json").is_file()


def _model_fit_defaults(given: dict[str, Any]) -> dict[str, Any]:
    """Training defaults from the chosen model's paper (e.g. RMSprop for the pi-VAE)."""
    from .models import MODELS

    name = given.get("model", DATA_DEFAULTS["model"])
    return dict(MODELS[name].fit_defaults) if name in MODELS else {}


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UserError(f"expected comma-separated integers, got {text!r}") from None


def data_recipe(settings: dict[str, Any]) -> dict[str, Any]:
    """The data options as a recipe for ``ppl_ssvae.data.load_recipe``."""
    return {
        "dataset": settings["dataset"],
        "data_dir": settings["data_dir"],
        "labels": settings["labels"],
        "label_fraction": settings["label_fraction"],
        "hidden_classes": settings["hidden_classes"] or "",
        "validation_size": settings["validation_size"],
        "std_threshold": settings["std_threshold"],
        "seed": settings["seed"],
    }


def fit_settings(settings: dict[str, Any]):
    """The FitSettings the options describe (validated)."""
    from .optim import optimizer_args
    from .train import FitSettings

    fields = {f.name for f in dataclasses.fields(FitSettings)} - {"optimizer_args"}
    values = {k: settings[k] for k in fields if k in settings}
    fit = FitSettings(**values, optimizer_args=optimizer_args(settings))
    fit.validate()
    return fit


def model_options(settings: dict[str, Any]) -> dict[str, Any]:
    """Model config fields from the model options and --model-arg KEY=VALUE (JSON)."""
    options = {k: settings.get(k) for k in MODEL_OPTIONS if settings.get(k) is not None}
    if "hidden" in options:
        options["hidden"] = _int_list(options["hidden"])
    options |= _key_values(settings.get("model_arg"), "--model-arg")
    if settings.get("guide") is not None:
        options["guide"] = settings["guide"]
    if settings.get("guide_arg"):
        options["guide_args"] = _key_values(settings["guide_arg"], "--guide-arg")
    return options


def _key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` items as a dict, each value parsed as JSON (else kept as text)."""
    values: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {item!r} must look like KEY=VALUE")
        try:
            values[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            values[key.strip().replace("-", "_")] = value
    return values


def build_model(settings: dict[str, Any], split) -> Any:
    """The model the settings describe, its initial weights drawn from ``settings["seed"]``."""
    from .protocol import build_for_data

    extra = settings.get("extra_classes") or 0
    if not isinstance(extra, int) or extra < 0:
        raise UserError(f"--extra-classes {extra} must be >= 0")
    return build_for_data(
        settings["model"], split, settings["seed"], extra, **model_options(settings)
    )


def train(args: argparse.Namespace) -> int:
    from . import distributed, models
    from .data import load_recipe
    from .protocol import evaluators
    from .train import check_run_start, fit

    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other; give one of them")
    if args.devices < 1:
        raise UserError(f"--devices {args.devices} must be >= 1")
    settings = _train_settings(args)
    if args.devices > 1 and not distributed.launched():
        # Refusals (bad options, a run to keep, a resume by another N) before launching.
        epochs = fit_settings(settings).epochs
        run = RunDir(args.out, trust_unverified=args.trust_unverified)
        check_run_start(run, args.resume, args.overwrite, epochs, args.devices)
        return _launch_data_parallel(args.devices, args.out)
    group, device = distributed.init_from_environment(settings["device"] or "auto")
    settings["device"] = device
    fit_options = fit_settings(settings)
    run = RunDir(args.out, trust_unverified=args.trust_unverified)
    run.check_start(args.resume, args.overwrite)
    if args.resume:
        config = run.read_config()
        split = load_recipe(_recipe_of(config, run))
        model = models.from_config(config["model"])
        evaluate = _recorded_evaluator(config, run)
        fit_options = _resumed_fit_settings(config, settings)
    else:
        split = load_recipe(data_recipe(settings))
        model = build_model(settings, split)
        evaluate = None
    result = fit(model, split, fit_options, out=run, resume=args.resume,
                 overwrite=args.overwrite, evaluate=evaluate, run_config={"cli": settings})  # fmt: skip
    if group is not None and not group.is_main:
        return 0
    best = result.best
    if best is None:
        print(f"no epoch trained (stopped: {result.stopped})")
        return 0
    budget = (
        f"[{len(result.history)} epochs, {result.history[-1]['elapsed_cpu_seconds'] / 60:.1f} "
        f"CPU-min, stopped: {result.stopped}]"
    )
    if "val_accuracy" not in best:
        print(f"best epoch {best['epoch']} (validation ELBO {best['elbo']:.2f}): test ELBO "
              f"{best['test_elbo']:.2f}  {budget}")  # fmt: skip
        return 0
    print(
        f"best epoch {best['epoch']} (validation accuracy {_fmt(best['val_accuracy'])}): "
        f"test accuracy {_fmt(best['test_accuracy'])}  {budget}"
    )
    if "cluster_mapping" in best and evaluate in (None, evaluators()["clustering"]):
        _clustering_artifacts(model, split, run, best)
    return 0


def _launch_data_parallel(devices: int, out: str) -> int:
    """This very command on ``devices`` processes, through torch's elastic launcher (what
    ``torchrun --standalone`` runs), one thread each unless OMP_NUM_THREADS says otherwise.
    A refusal or a non-finite loss is reported by rank 0 itself; a rank that dies is
    reported here, in one line."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from .distributed import LAUNCHER_ENV, use_loopback

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    use_loopback()  # every rank is on this machine
    os.environ[LAUNCHER_ENV] = "1"
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=devices, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
    )  # fmt: skip
    try:
        elastic_launch(config, sys.executable)("-m", "ppl_ssvae", *_without_devices(sys.argv[1:]))
    except ChildFailedError as e:
        return _report_failed_rank(e, out)
    return 0


def _report_failed_rank(error: Any, out: str) -> int:
    from .distributed import PEER_EXIT
    from .rundir import CHECKPOINT

    codes = {rank: failure.exitcode for rank, failure in error.failures.items()}
    if codes.get(0) in (1, 2, 130):  # rank 0 said why (non-finite loss, refusal, Ctrl-C)
        return codes[0]
    # The first to fail is the cause; the agent then stops the others (SIGTERM), and
    # ranks that saw their peer go exit with PEER_EXIT.
    rank, first = error.get_first_failure()
    code = first.exitcode
    if code == PEER_EXIT:
        rank, code = next(
            ((r, c) for r, c in sorted(codes.items()) if c != PEER_EXIT), (rank, code)
        )
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    try:
        kept = f"{out} keeps the checkpoint of epoch {RunDir(out).load_checkpoint(CHECKPOINT)['epoch']}"
    except UserError:
        kept = f"{out} holds no checkpoint yet"
    print(f"ppl-ssvae: error: rank {rank} {how}, so every rank stopped; {kept}; continue "
          "with the same command plus --resume", file=sys.stderr)  # fmt: skip
    return 1


def _without_devices(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--devices":
            skip = True
        elif not arg.startswith("--devices="):
            out.append(arg)
    return out


def _resumed_fit_settings(config: dict[str, Any], settings: dict[str, Any]):
    """The run's recorded FitSettings with the budget options given on this command."""
    from .rundir import current_budget
    from .train import RESUMABLE, FitSettings

    saved = FitSettings.from_dict(current_budget(config))
    budget = {k: settings[k] for k in RESUMABLE}
    resumed = dataclasses.replace(saved, **budget, progress=settings["progress"])
    resumed.validate()
    return resumed


def _recipe_of(config: dict[str, Any], run: RunDir) -> dict[str, Any]:
    """How to rebuild the run's data: the recipe it recorded (runs of 0.2+, CLI or Python),
    else the options of a CLI run saved before recipes existed."""
    recipe = (config.get("data") or {}).get("recipe")
    if recipe:
        return recipe
    if config.get("cli"):
        from .runconfig import check_recipe, wrap

        recipe = data_recipe({**train_defaults(), **config["cli"]})
        try:
            check_recipe(recipe)
        except UserError as e:
            raise wrap(run.file("config.json"), e) from None
        return recipe
    raise UserError(
        f"{run.path} was trained from Python on data that is not a named dataset; evaluate "
        "or resume it from Python with the same data (ppl_ssvae.train.fit(..., resume=True))"
    )


def _recorded_evaluator(config: dict[str, Any], run: RunDir):
    from .protocol import evaluators

    name = config.get("evaluator")
    if name is None:  # saved before evaluators were recorded: the CLI's choice then
        return None
    if name not in evaluators():
        raise UserError(
            f"{run.path} was evaluated by a custom function ({name.removeprefix('custom:')}); "
            "resume it from Python: fit(..., evaluate=that_function, resume=True)"
        )
    return evaluators()[name]


def _clustering_artifacts(model: Any, split, run: RunDir, best: dict[str, Any]) -> None:
    """Confusion matrix and z-unit activity of the best checkpoint, into the run dir."""
    from .clustering import write_clustering_artifacts
    from .rundir import BEST

    source = "last epoch"
    if run.file(BEST).is_file():
        state = run.load_weights(model, BEST)
        source = f"best.pt (epoch {state['epoch']})"
    print(
        f"cluster-and-label ({best['cluster_mapping']} mapping): visible classes "
        f"{_fmt(best['test_accuracy_visible'])}, hidden classes {_fmt(best['test_accuracy_hidden'])}"
    )
    with run.lock():
        written = write_clustering_artifacts(model, split, run.path, source)
    if written["unit_activity_error"]:
        print(f"unit activity skipped: {written['unit_activity_error']}")
    print(f"wrote {', '.join(p.name for p in written['files'])} to {run.path}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def evaluate(args: argparse.Namespace) -> int:
    from . import models
    from .data import load_recipe
    from .likelihood import MAX_ROWS
    from .memory import check_evaluation_memory
    from .rundir import BEST, CHECKPOINT

    if args.iwae is not None and args.iwae < 1:
        raise UserError(f"--iwae {args.iwae} must be >= 1 importance samples")
    if args.iwae_rows is not None and (args.iwae is None or args.iwae_rows < 1):
        raise UserError("--iwae-rows N needs --iwae K and N >= 1")
    if not args.iwae_max_minutes > 0 or args.iwae_max_minutes == float("inf"):
        raise UserError(f"--iwae-max-minutes {args.iwae_max_minutes} must be a finite number > 0")
    run = RunDir(args.run_dir, trust_unverified=args.trust_unverified)
    config = run.read_config()
    recipe = _recipe_of(config, run)
    if args.data_dir:
        recipe = {**recipe, "data_dir": args.data_dir}
    split = load_recipe(recipe)
    try:
        model = models.from_config(config["model"])
    except UserError as e:
        raise UserError(f"{run.file('config.json')}: {e}") from None
    state = run.load_weights(model, BEST if args.checkpoint == "best" else CHECKPOINT)
    check_evaluation_memory(model, model.config.input_dim, model.config.num_classes,
                            MAX_ROWS if args.iwae else 0, model.device)  # fmt: skip
    report = {"run": str(run.path), "checkpoint": args.checkpoint, "epoch": state["epoch"],
              "test_rows": len(split.x_test), **_test_report(model, split, args)}  # fmt: skip
    if args.json:
        print(json.dumps(report))
    else:
        print(_report_line(report))
    return 0


def _test_report(model: Any, split, args: argparse.Namespace) -> dict[str, Any]:
    """Test accuracy (cluster-and-label where the protocol says so; None for a model that
    cannot classify), log loss, ELBO and, with --iwae, the IWAE log-likelihood."""
    from .likelihood import evaluation_inputs, likelihood_report, seeded_elbo
    from .metrics import accuracy, log_loss
    from .protocol import is_clustering

    report: dict[str, Any] = {"test_accuracy": None}
    if model.can_classify and is_clustering(model.config.num_classes, split):
        from .clustering import clustering_report

        clusters = clustering_report(model, split)
        keys = ("test_accuracy", "cluster_mapping", "test_accuracy_visible", "test_accuracy_hidden")
        report |= {k: clusters[k] for k in keys}
    elif model.can_classify:
        probs = model.classify(split.x_test)
        report |= {"test_accuracy": accuracy(probs, split.y_test),
                   "test_log_loss": log_loss(probs, split.y_test)}  # fmt: skip
    report["test_elbo"] = seeded_elbo(model, evaluation_inputs(model, split.x_test))
    if args.iwae is not None:
        report |= likelihood_report(model, split.x_test, args.iwae, args.iwae_rows,
                                    max_minutes=args.iwae_max_minutes, progress=True)  # fmt: skip
    return report


def _report_line(report: dict[str, Any]) -> str:
    parts = [f"test accuracy {_fmt(report['test_accuracy'])}"]
    if "test_log_loss" in report:
        parts.append(f"log loss {_fmt(report['test_log_loss'])}")
    if "cluster_mapping" in report:
        parts.append(
            f"({report['cluster_mapping']} mapping; visible classes "
            f"{_fmt(report['test_accuracy_visible'])}, hidden classes "
            f"{_fmt(report['test_accuracy_hidden'])})"
        )
    parts.append(f"test ELBO {report['test_elbo']:.2f}")
    if "test_log_likelihood" in report:
        parts.append(
            f"log-likelihood {report['test_log_likelihood']:.2f} nats "
            f"({report['bits_per_dim']:.4f} bits/dim; IWAE K={report['iwae_samples']}, "
            f"{report['iwae_rows']} rows)"
        )
    return "  ".join(parts) + (
        f"  ({report['checkpoint']} checkpoint, epoch {report['epoch']}, "
        f"{report['test_rows']} test rows)"
    )


def inspect(args: argparse.Namespace) -> int:
    from .inspect import write_inspection

    if args.rows < 1 or args.num_samples < 1:
        raise UserError("--rows and --num-samples must be >= 1")
    run = RunDir(args.run_dir, trust_unverified=args.trust_unverified)
    run.read_config()  # one line if it is not a run, before writing
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a directory")
    written = write_inspection(run, out, rows=args.rows, num_samples=args.num_samples)
    for name, where in written.items():
        print(f"{name}: {where}")
    return 0


ACTIVE_OPTIONS = ("dataset", "data_dir", "iterations", "queries", "k", "clustering", "distance",
                  "decay", "rate", "gamma", "oracle", "answers_file", "seed")  # fmt: skip


def active(args: argparse.Namespace) -> int:
    from .active import ActiveConfig, run_active

    given = {k: getattr(args, k) for k in ACTIVE_OPTIONS if getattr(args, k) is not None}
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other; give one of them")
    if args.resume:
        stored = ActiveConfig.from_dict(RunDir(args.out, kind="active").read_config()["active"])
        changed = sorted(
            k for k, v in given.items() if k != "iterations" and getattr(stored, k) != v
        )
        if changed:
            raise UserError(f"--resume cannot change {', '.join(changed)}; start a new --out")
        config = dataclasses.replace(stored, iterations=given.get("iterations", stored.iterations))
    else:
        config = ActiveConfig(**given)
    config.validate()
    for record in run_active(config, args.out, resume=args.resume, overwrite=args.overwrite):
        print(json.dumps(record))
    return 0


COMMANDS = {"train": train, "evaluate": evaluate, "inspect": inspect, "active": active}


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"ppl-ssvae: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        _report(f"ppl-ssvae: error: {e}")
        return 2
    except NonFiniteLossError as e:
        _report(f"ppl-ssvae: {e}")
        return 1
    except KeyboardInterrupt:
        _report("ppl-ssvae: interrupted; continue with the same command plus --resume")
        return 130
    except PeerFailure as e:
        if LAUNCHER_ENV not in os.environ:  # under bare torchrun: say it here
            print(f"ppl-ssvae: error: rank {os.environ.get('RANK', '?')}: {e}; another process "
                  "of this data-parallel run stopped; the run directory keeps the last good "
                  "checkpoint: continue with the same command plus --resume", file=sys.stderr)  # fmt: skip
        return PEER_EXIT
    finally:
        warnings.showwarning = shown
        from .distributed import shutdown

        shutdown()


def _report(line: str) -> None:
    """Print a one-line error once: under torchrun only rank 0 does (every rank raises
    the same refusal)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
