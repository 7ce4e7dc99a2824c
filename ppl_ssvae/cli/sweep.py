"""``ppl-ssvae sweep`` and ``ppl-ssvae report``: thin shells over ``ppl_ssvae.sweeps``.

``sweep --config FILE --out DIR`` checks the sweep file, makes the sweep directory and
its Optuna study, then works on it with ``--jobs N`` local worker processes (each one
``ppl-ssvae sweep --worker DIR``, with its share of the cores); ``sweep --worker DIR``
joins a sweep from any machine that reaches its storage. ``report`` prints (and with
``--out`` writes) the table of a sweep's or any runs' results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from ..errors import UserError
from ..sweeps.pruning import ReportToTrial  # noqa: F401 - a trial's run resumes by name

SWEEP_HELP = """\
A sweep file is a `ppl-ssvae train --config` file plus a [sweep] section:

  [sweep]
  objective = "val_accuracy"   # or "elbo" (validation ELBO), "iwae"
  pruner = "median"            # none, median, percentile, successive_halving, hyperband
  n_trials = 20                # a search's budget; a grid runs every point once

  [sweep.settings]             # any train option name, or a spec path (fit.lr)
  seed = [0, 1, 2]
  labels = [100, 1000]
  lr = { log_uniform = [1e-4, 3e-3] }   # uniform, log_uniform, int, log_int, choice

Every trial is a run directory under the sweep directory, named from its settings.
Run the same command again, or `ppl-ssvae sweep --worker DIR`, to continue a sweep.
`--only labels=100` runs one row of a grid (the grid points with that value).
"""


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("sweep", help="a grid or search of runs, on Optuna",
                       description="Run a grid or a search over training settings; every "
                       "trial is an ordinary run directory.", epilog=SWEEP_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    s.add_argument("--config", metavar="FILE", help="the sweep file (TOML, YAML or JSON)")
    s.add_argument("--out", metavar="DIR", help="the sweep directory (with --config)")
    s.add_argument("--worker", metavar="DIR", help="work on the sweep in DIR (started, e.g., on "
                   "each machine of a cluster)")  # fmt: skip
    s.add_argument("--storage", metavar="URL", help="a database the workers share "
                   "(postgresql://USER@HOST/DB) [Optuna's journal file in the sweep directory]")  # fmt: skip
    s.add_argument("--study", metavar="NAME", help="with --worker and --storage on a machine "
                   "without the sweep directory: the study's name [DIR's name]")  # fmt: skip
    s.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="worker processes on this machine, each with its share of the cores [1]")  # fmt: skip
    s.add_argument("--threads", type=int, metavar="T",
                   help="CPU threads of each worker [cores / jobs]")  # fmt: skip
    s.add_argument("--gone-host", action="append", default=[], metavar="HOST",
                   help="a machine that worked on this sweep and is gone (e.g. the sweep "
                   "directory was carried to a new machine): its running trials run again, "
                   "from their checkpoints; repeat for several")  # fmt: skip
    s.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)  # --jobs' workers
    s.add_argument("--only", action="append", default=[], metavar="NAME=VALUE",
                   help="with --config: run only the grid points where setting NAME has this "
                   "value (one row of a table out of the file that holds them all); repeat "
                   "for several settings, or for several values of one")  # fmt: skip
    s.add_argument("--dry-run", action="store_true",
                   help="check the sweep file, print its trials and exit; nothing is written")  # fmt: skip

    r = sub.add_parser("report", help="one table of runs, grouped by the settings that vary",
                       description="Group runs by the settings that vary between them (a sweep "
                       "directory's complete trials, or run directories) and print mean ± sd "
                       "over seeds; with --out, also write it as markdown, CSV, JSON and figures.")  # fmt: skip
    r.add_argument("paths", nargs="+", metavar="DIR", help="sweep or run directories")
    r.add_argument("--out", metavar="DIR", help="write NAME.md, .csv, .json and the figures here "
                   "(without it, nothing is written)")  # fmt: skip
    r.add_argument("--name", default="report", help="the files' name, not a path [report]")
    r.add_argument("--against", metavar="SETTING", help="the setting the figure draws the metric "
                   "against [the first numeric setting that varies]")  # fmt: skip
    r.add_argument("--metric", default="test_accuracy", help="the number drawn against it: "
                   "test_accuracy, last_test_accuracy, lowest_loss_test_accuracy, test_elbo, test_iwae, ... "
                   "[test_accuracy]")  # fmt: skip
    r.add_argument("--curve", metavar="KEY", help="the epoch record's key of the learning "
                   "curves [val_accuracy, else elbo]")  # fmt: skip
    r.add_argument("--no-figures", action="store_true", help="tables only")
    r.add_argument("--json", action="store_true", help="print JSON instead of the table")


def sweep(args: argparse.Namespace) -> int:
    from ..sweeps.worker import describe

    if (args.config is None) == (args.worker is None):
        raise UserError(
            "give --config FILE --out DIR to start a sweep, or --worker DIR to work on one"
        )
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        raise UserError("--jobs and --threads must be >= 1")
    from ..sweeps.engine import check_gone_hosts

    check_gone_hosts(args.gone_host)  # before _start writes the sweep directory
    sweep = _start(args) if args.config else _join(args)
    if sweep is None:  # --dry-run
        return 0
    threads = args.threads or (_cores() // args.jobs if args.jobs > 1 else None)
    try:
        if args.jobs == 1:
            from ..sweeps import run_worker

            run_worker(sweep, threads=threads, gone_hosts=tuple(args.gone_host), say=_say)
            code = 0
        else:
            code = _local_workers(sweep.path, args, max(1, threads or 1))
    except KeyboardInterrupt:
        print(f"ppl-ssvae: interrupted; continue the sweep with: ppl-ssvae sweep --worker "
              f"{sweep.path}", file=sys.stderr)  # fmt: skip
        return 130
    if not args.no_summary:
        said = describe(sweep.counts())
        print(f"sweep {sweep.path}: {said}; its table: ppl-ssvae report {sweep.path}")
    return code


def _start(args: argparse.Namespace) -> Any:
    """The sweep the file describes, made (or taken up again); None for a dry run."""
    from ..runs import read_spec_file
    from ..sweeps import SweepSpec, create_sweep

    if args.out is None:
        raise UserError("sweep --config needs --out DIR, the sweep directory")
    if args.study is not None:
        raise UserError("--study joins a sweep kept in a database (with --worker); a new "
                        "sweep's study is named by [sweep] name")  # fmt: skip
    spec = SweepSpec.from_dict(read_spec_file(args.config))
    if args.only:
        spec = spec.only(args.only)
    if args.dry_run:
        _print_plan(spec)
        return None
    return create_sweep(spec, args.out, args.storage)


def _join(args: argparse.Namespace) -> Any:
    from ..sweeps import open_sweep

    if args.out is not None or args.dry_run or args.only:
        raise UserError("--worker DIR works on the sweep in DIR; --out, --only and --dry-run "
                        "go with --config")  # fmt: skip
    return open_sweep(args.worker, args.storage, args.study)


def _print_plan(spec: Any) -> None:
    from ..sweeps.params import run_name

    if spec.sampler == "grid":
        print(f"a grid of {spec.grid_size()} trials, each a run directory:")
        for point in spec.grid():
            print(f"  {run_name(point)}")
        return
    print(
        f"a {spec.sampler} search of {spec.n_trials} trials ({spec.objective}, {spec.direction}):"
    )
    for param in spec.params:
        print(f"  {param.name}: {json.dumps(param.file_value())}")


def _local_workers(path: Any, args: argparse.Namespace, threads: int) -> int:
    """``--jobs N``: N worker processes, each `ppl-ssvae sweep --worker` with ``threads``
    threads; one line for each that did not end well."""
    command = [sys.executable, "-m", "ppl_ssvae", "sweep", "--worker", str(path), "--threads",
               str(threads), "--no-summary", *(["--storage", args.storage] if args.storage else []),
               *(f"--gone-host={host}" for host in args.gone_host)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    workers = [subprocess.Popen(command, env=env) for _ in range(args.jobs)]
    try:
        codes = [w.wait() for w in workers]
    except KeyboardInterrupt:  # each worker got the Ctrl-C too, and queues its trial again
        for w in workers:
            w.wait()
        raise
    for index, (worker, code) in enumerate(zip(workers, codes, strict=True), 1):
        if code:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            print(f"ppl-ssvae: error: worker {index} (pid {worker.pid}) {how}; its trial runs "
                  f"again, from its checkpoint, when a worker starts: ppl-ssvae sweep --worker "
                  f"{path}", file=sys.stderr)  # fmt: skip
    return 1 if any(codes) else 0


def report(args: argparse.Namespace) -> int:
    from ..sweeps.report import METRICS, check_name, report_runs, write_report

    if args.out is not None:
        check_name(args.name)
    if args.metric not in METRICS:
        raise UserError(f"--metric {args.metric!r}: choose one of {', '.join(METRICS)}")
    table = report_runs(args.paths)
    print(json.dumps(table.to_json(), indent=2) if args.json else table.markdown(), end="")
    if args.json:
        print()
    if args.out is not None:
        written = write_report(table, args.out, args.name, args.against, args.metric, args.curve,
                               figures=not args.no_figures)  # fmt: skip
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
