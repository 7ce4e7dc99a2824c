"""The ``ppl-ssvae`` command: ``train`` and ``evaluate``.

User errors exit non-zero with one line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .errors import NonFiniteLossError, UserError

# Defaults live here rather than in argparse so that --resume can tell which options the
# user actually gave (argparse leaves those not given at None).
TRAIN_DEFAULTS: dict[str, Any] = {
    "model": "m2",
    "dataset": "fashion-mnist",
    "data_dir": None,
    "labels": None,
    "label_fraction": None,
    "hidden_classes": "",
    "extra_classes": 0,
    "validation_size": None,
    "std_threshold": None,
    "binarize": None,
    "epochs": 30,
    "batch_size": 200,
    "labelled_share": None,
    "lr": 1e-3,
    "lr_decay": 0.9,
    "optimizer": "adam",
    "momentum": None,
    "rho": None,
    "eps": None,
    "seed": 0,
    "device": "auto",
    "max_minutes": None,
    "max_cpu_minutes": None,
    "precision": "fp32",
    "progress": True,
    "z_dim": None,
    "hidden": None,
    "alpha": None,
    "likelihood": None,
    "sigma2": None,
    "activation": None,
    "variant": None,
    "net": None,
    "model_arg": [],
}
# Options a resumed run may change; everything else must match the saved run.
RESUMABLE = {"epochs", "max_minutes", "max_cpu_minutes", "device", "progress"}
MODEL_OPTIONS = ("z_dim", "hidden", "alpha", "likelihood", "sigma2", "activation", "variant", "net")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports errors on a single line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UserError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS
    from .models import MODELS
    from .train import PRECISIONS

    parser = OneLineParser(
        prog="ppl-ssvae", description="Semi-supervised deep generative models in Pyro."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    d = TRAIN_DEFAULTS
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
        choices=list(PRECISIONS),
        help="training-step precision: bf16 autocast runs the matrix products in bfloat16 "
        "(~2x faster on CPUs with AMX; parameters and log-densities stay float32) [fp32]",
    )
    g.add_argument(
        "--out", required=True, help="run directory (config.json, metrics.jsonl, checkpoints)"
    )
    g.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

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
    return parser


def _train_settings(args: argparse.Namespace) -> dict[str, Any]:
    given = {k: v for k, v in vars(args).items() if k in TRAIN_DEFAULTS and v is not None}
    if not args.resume:
        return {**TRAIN_DEFAULTS, **_model_fit_defaults(given), **given}
    config_path = Path(args.out) / "config.json"
    if not config_path.is_file():
        raise UserError(
            f"--resume: no run in {args.out} (config.json missing); drop --resume to start one"
        )
    config = json.loads(config_path.read_text())
    saved = config["cli"]
    # A later resume starts from the budget the last one gave, not the first one's.
    for resumed in config.get("resumes", []):
        saved |= resumed["changed"]
    changed = sorted(k for k, v in given.items() if k not in RESUMABLE and saved.get(k) != v)
    if changed:
        raise UserError(f"--resume cannot change {', '.join(changed)}; start a new --out instead")
    # Options added after a run was started take the values that run actually used.
    return {**TRAIN_DEFAULTS, **saved, **given}


def _model_fit_defaults(given: dict[str, Any]) -> dict[str, Any]:
    """Training defaults from the chosen model's paper (e.g. RMSprop for the pi-VAE)."""
    from .models import MODELS

    name = given.get("model", TRAIN_DEFAULTS["model"])
    return dict(MODELS[name].fit_defaults) if name in MODELS else {}


def load_data(settings: dict[str, Any]):
    from . import data

    dataset = data.load(settings["dataset"], settings["data_dir"])
    return data.semi_supervised_split(
        dataset,
        labels=settings["labels"],
        label_fraction=settings["label_fraction"],
        hidden_classes=_int_list(settings["hidden_classes"] or ""),
        validation_size=settings["validation_size"],
        std_threshold=settings["std_threshold"],
        seed=settings["seed"],
    )


def build_model(settings: dict[str, Any], split) -> Any:
    """The model the settings describe, its initial weights drawn from ``settings["seed"]``."""
    import pyro

    from . import models

    pyro.set_rng_seed(settings["seed"])

    extra = settings.get("extra_classes") or 0
    if extra < 0:
        raise UserError(f"--extra-classes {extra} must be >= 0")
    num_classes = split.num_classes + extra
    config: dict[str, Any] = {"input_dim": split.input_dim, "num_classes": num_classes}
    if _is_clustering(settings, split) and settings["model"] in models.MODELS:
        prior = _semi_unsupervised_prior(num_classes, split)
        fields = {f.name for f in dataclasses.fields(models.MODELS[settings["model"]].config_class)}
        if prior is not None and "prior" in fields:
            config["prior"] = prior  # --model-arg prior=[...] below overrides it
    config["likelihood"] = settings["likelihood"] or (
        "bernoulli" if split.support == "unit" else "gaussian"
    )
    for key in MODEL_OPTIONS:
        if key != "likelihood" and settings.get(key) is not None:
            config[key] = _int_list(settings[key]) if key == "hidden" else settings[key]
    config.update(_data_layout(settings["model"], split))
    for item in settings.get("model_arg") or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--model-arg {item!r} must look like KEY=VALUE")
        try:
            config[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            config[key.replace("-", "_")] = value
    return models.build(settings["model"], **config)


def _data_layout(model_name: str, split) -> dict[str, Any]:
    """Image and sequence layout of the data, for models whose networks need it (CNN / RNN
    pi-VAE); ``--model-arg`` still overrides."""
    from .models import MODELS

    if model_name not in MODELS:
        return {}
    fields = {f.name for f in dataclasses.fields(MODELS[model_name].config_class)}
    layout: dict[str, Any] = {}
    if "image_shape" in fields and split.image_shape and split.feature_mask is None:
        shape = tuple(split.image_shape)
        layout["image_shape"] = (1, *shape) if len(shape) == 2 else shape
    if "sequence_channels" in fields and "sequence_channels" in split.extra:
        layout["sequence_channels"] = int(split.extra["sequence_channels"])
    return layout


def _default_labelled_share(settings: dict[str, Any], split) -> str:
    """Willetts et al. (App. B) train with 100 labelled + 100 unlabelled rows per batch.
    Under their protocol (hidden or extra classes, ~1% labelled rows) the natural share puts
    ~2 labelled rows in a batch of 200 and q(y|x) collapsed onto one class in our runs, so
    there the default is 1:1; elsewhere it is the data's natural share."""
    protocol = split.hidden_classes or (settings.get("extra_classes") or 0) > 0
    return "1:1" if protocol and bool(split.labelled_mask.any()) else "natural"


def _is_clustering(settings: dict[str, Any], split) -> bool:
    """Hidden classes, extra model classes or no labels at all: cluster-and-label metrics."""
    return bool(
        split.hidden_classes
        or (settings.get("extra_classes") or 0) > 0
        or not bool(split.labelled_mask.any())
    )


def _semi_unsupervised_prior(num_classes: int, split) -> tuple[float, ...] | None:
    """Eq. 34-35 of Willetts et al. over the classes that kept labels; None means uniform.

    Without labels this is the uniform prior of the paper's unsupervised runs. With every
    class labelled and extra classes added, eq. 34 leaves the extra classes no mass, so
    the prior stays uniform rather than refusing the run.
    """
    from .models import semi_unsupervised_prior

    visible = sorted(set(split.y_train[split.labelled_mask].tolist()))
    if len(visible) == split.num_classes:
        return None
    return semi_unsupervised_prior(num_classes, visible, split.num_classes)


def train(args: argparse.Namespace) -> int:
    from .metrics import classification_report, elbo_report
    from .optim import optimizer_args
    from .train import fit

    settings = _train_settings(args)
    split = load_data(settings)
    model = build_model(settings, split)
    clustering = _is_clustering(settings, split) and model.can_classify
    if clustering:
        from .clustering import clustering_report as evaluator
    elif model.can_classify:
        evaluator = classification_report
    else:
        evaluator = elbo_report
    result = fit(
        model,
        split,
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        labelled_share=settings["labelled_share"] or _default_labelled_share(settings, split),
        binarize=settings["binarize"],
        lr=settings["lr"],
        lr_decay=settings["lr_decay"],
        optimizer=settings["optimizer"],
        optimizer_args=optimizer_args(settings),
        seed=settings["seed"],
        device=settings["device"],
        out=args.out,
        resume=args.resume,
        max_minutes=settings["max_minutes"],
        max_cpu_minutes=settings["max_cpu_minutes"],
        precision=settings["precision"],
        progress=settings["progress"],
        evaluate=evaluator,
        run_config={"cli": settings},
    )
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
        f"best epoch {best['epoch']} (validation accuracy {best['val_accuracy']:.4f}): "
        f"test accuracy {best['test_accuracy']:.4f}  {budget}"
    )
    if clustering:
        _clustering_artifacts(model, split, Path(args.out), best)
    return 0


def _clustering_artifacts(model: Any, split, run: Path, best: dict[str, Any]) -> None:
    """Confusion matrix and z-unit activity of the best checkpoint, into the run dir."""
    from . import checkpoint
    from .clustering import write_clustering_artifacts

    source = "last epoch"
    if (run / "best.pt").is_file():
        state = checkpoint.load(run / "best.pt", map_location=model.device)
        model.load_state_dict(state["model"])
        source = f"best.pt (epoch {state['epoch']})"
    print(
        f"cluster-and-label ({best['cluster_mapping']} mapping): visible classes "
        f"{_fmt(best['test_accuracy_visible'])}, hidden classes {_fmt(best['test_accuracy_hidden'])}"
    )
    written = write_clustering_artifacts(model, split, run, source)
    if written["unit_activity_error"]:
        print(f"unit activity skipped: {written['unit_activity_error']}")
    print(f"wrote {', '.join(p.name for p in written['files'])} to {run}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def evaluate(args: argparse.Namespace) -> int:
    from . import checkpoint, models
    from .metrics import accuracy, log_loss

    run = Path(args.run_dir)
    config_path = run / "config.json"
    if not config_path.is_file():
        raise UserError(
            f"{run} is not a run directory (no config.json); give the --out of a train run"
        )
    config = json.loads(config_path.read_text())
    settings = {**TRAIN_DEFAULTS, **config["cli"]}
    if args.data_dir:
        settings["data_dir"] = args.data_dir
    split = load_data(settings)
    model = models.from_config(config["model"])
    state = checkpoint.load(run / ("best.pt" if args.checkpoint == "best" else "checkpoint.pt"))
    model.load_state_dict(state["model"])
    if not model.can_classify:
        from .metrics import mean_elbo

        print(f"test ELBO {mean_elbo(model, split.x_test):.2f} per row  ({args.checkpoint} "
              f"checkpoint, epoch {state['epoch']}, {len(split.x_test)} test rows)")  # fmt: skip
        return 0
    if _is_clustering(settings, split):
        from .clustering import clustering_report

        report = clustering_report(model, split)
        print(
            f"test accuracy {report['test_accuracy']:.4f}  ({report['cluster_mapping']} mapping; "
            f"visible classes {_fmt(report['test_accuracy_visible'])}, hidden classes "
            f"{_fmt(report['test_accuracy_hidden'])})  ({args.checkpoint} checkpoint, epoch "
            f"{state['epoch']}, {len(split.x_test)} test rows)"
        )
        return 0
    probs = model.classify(split.x_test)
    print(
        f"test accuracy {accuracy(probs, split.y_test):.4f}  log loss {log_loss(probs, split.y_test):.4f}  "
        f"({args.checkpoint} checkpoint, epoch {state['epoch']}, {len(split.x_test)} test rows)"
    )
    return 0


COMMANDS = {"train": train, "evaluate": evaluate}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"ppl-ssvae: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"ppl-ssvae: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "ppl-ssvae: interrupted; continue with the same command plus --resume", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
