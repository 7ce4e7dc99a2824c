"""``ppl-ssvae evaluate``, ``inspect`` and ``active``: thin shells over ``load_run``,
``ppl_ssvae.evaluation.inspect.write_inspection`` and ``ppl_ssvae.active.run_active``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..runs.directory import RunDir
from .options import TRUST_HELP, add_dataclass, add_trust_guide, number_text
from .options import given as options_given

# evaluate --iwae: an hour, then the user says how long they will wait.
IWAE_MAX_MINUTES = 60.0


def add_parsers(sub: Any) -> None:
    for add in (_add_evaluate, _add_active, _add_inspect, _add_compare):
        add(sub)


def _add_evaluate(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="test accuracy of a run's best checkpoint",
                       description="Print the test accuracy of the best-validation checkpoint of a run.")  # fmt: skip
    e.add_argument("run_dir", help="a run directory written by `ppl-ssvae train`")
    e.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="which checkpoint to evaluate")  # fmt: skip
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
    add_trust_guide(e)


def _add_active(sub: Any) -> None:
    from ..active import ActiveConfig

    a = sub.add_parser("active", help="cluster-then-label active labelling (Vengalil & Sinha)",
                       description="Label a dataset from nothing: cluster the latent space, ask an "
                       "oracle about decoded cluster centres, propagate the answers, retrain. "
                       "The options are ActiveConfig's fields.")  # fmt: skip
    add_dataclass(a.add_argument_group("active labelling"), ActiveConfig, "active", skip=set())
    a.add_argument("--out", required=True, help="run directory")
    a.add_argument("--resume", action="store_true",
                   help="continue the run in --out (only --iterations may change)")  # fmt: skip
    a.add_argument("--overwrite", action="store_true",
                   help="clear the run --out holds, its answers included, and start again")  # fmt: skip


def _add_inspect(sub: Any) -> None:
    i = sub.add_parser("inspect", help="pictures and an arviz posterior of a run",
                       description="Write a run's pictures (confusion matrix, latent map, samples, "
                       "analogies, training curves...) and its posterior as arviz netCDF.")  # fmt: skip
    i.add_argument("run_dir", help="a run directory written by `ppl-ssvae train`")
    i.add_argument("--out", required=True, help="directory for the pictures and posterior.nc")
    i.add_argument("--rows", type=int, default=16, help="test rows in the posterior [16]")
    i.add_argument("--num-samples", type=int, default=100, help="posterior draws per row [100]")
    i.add_argument("--trust-unverified", action="store_true", help=TRUST_HELP)
    add_trust_guide(i)


def _add_compare(sub: Any) -> None:
    c = sub.add_parser("compare", help="runs side by side: accuracy, ELBO, IWAE and its error",
                       description="One table of test accuracy, test ELBO, IWAE log p(x) with "
                       "its standard error (and the paired one against the first run), the "
                       "ELBO-IWAE gap, active units and CPU-seconds per epoch, from run "
                       "directories; scores are kept in each run and reused.")  # fmt: skip
    c.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    c.add_argument("--iwae", type=int, metavar="K", help="importance samples per image [none]")
    c.add_argument("--iwae-rows", type=int, metavar="N",
                   help="score a fixed seeded subset of N test images [all]")  # fmt: skip
    c.add_argument("--checkpoint", choices=["best", "last"], default="best")
    c.add_argument("--seed", type=int, default=0, help="subset, binarisation and draws [0]")
    c.add_argument("--data-dir", help="override the data directory recorded in the runs")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_trust_guide(c)


def evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.likelihood import MAX_ROWS
    from ..memory import check_evaluation_memory
    from ..runs import load_run

    if args.iwae is not None and args.iwae < 1:
        raise UserError(f"--iwae {args.iwae} must be >= 1 importance samples")
    if args.iwae_rows is not None and (args.iwae is None or args.iwae_rows < 1):
        raise UserError("--iwae-rows N needs --iwae K and N >= 1")
    if not args.iwae_max_minutes > 0 or args.iwae_max_minutes == float("inf"):
        raise UserError(f"--iwae-max-minutes {args.iwae_max_minutes} must be a finite number > 0")
    loaded = load_run(args.run_dir, data_dir=args.data_dir, trust_unverified=args.trust_unverified)
    model, split = loaded.model, loaded.data
    state = loaded.load_weights(args.checkpoint)
    check_evaluation_memory(model, model.config.input_dim, model.config.num_classes,
                            MAX_ROWS if args.iwae else 0, model.device)  # fmt: skip
    report = {"run": str(loaded.path), "checkpoint": args.checkpoint, "epoch": state["epoch"],
              "test_rows": len(split.x_test), **_test_report(model, split, args)}  # fmt: skip
    if args.json:
        print(json.dumps(report))
    else:
        print(_report_line(report))
    return 0


def _test_report(model: Any, split, args: argparse.Namespace) -> dict[str, Any]:
    """Test accuracy (cluster-and-label where the protocol says so; None for a model that
    cannot classify), log loss, ELBO and, with --iwae, the IWAE log-likelihood."""
    from ..evaluation.likelihood import evaluation_inputs, likelihood_report, seeded_elbo
    from ..evaluation.metrics import accuracy, log_loss
    from ..protocol import is_clustering

    report: dict[str, Any] = {"test_accuracy": None}
    if model.can_classify and is_clustering(model.config.num_classes, split):
        from ..evaluation.clustering import clustering_report

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
    parts = [f"test accuracy {number_text(report['test_accuracy'])}"]
    if "test_log_loss" in report:
        parts.append(f"log loss {number_text(report['test_log_loss'])}")
    if "cluster_mapping" in report:
        parts.append(
            f"({report['cluster_mapping']} mapping; visible classes "
            f"{number_text(report['test_accuracy_visible'])}, hidden classes "
            f"{number_text(report['test_accuracy_hidden'])})"
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
    from ..evaluation.inspect import write_inspection

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


def active(args: argparse.Namespace) -> int:
    from ..active import ActiveConfig, run_active

    given = options_given(args).get("active", {})
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


def compare(args: argparse.Namespace) -> int:
    from ..data import load_recipe
    from ..evaluation.compare import compare_runs, format_table
    from ..runs.load import recipe_of

    def data(config: dict[str, Any], run: RunDir) -> Any:
        recipe = recipe_of(config, run)
        return load_recipe({**recipe, "data_dir": args.data_dir} if args.data_dir else recipe)

    table = compare_runs(args.runs, args.iwae, args.iwae_rows, args.checkpoint, args.seed, data)
    print(json.dumps(table) if args.json else format_table(table))
    return 0
