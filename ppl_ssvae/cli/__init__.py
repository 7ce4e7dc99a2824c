"""The ``ppl-ssvae`` command: ``train``, ``evaluate``, ``inspect`` and ``active``.

A thin shell over the Python API: ``train``'s options are generated from the run spec's
fields (``ppl_ssvae.runs.RunSpec``). User errors exit 2 with one line on stderr and no
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

from .. import __version__
from ..errors import NonFiniteLossError, UserError
from ..training.distributed import LAUNCHER_ENV, PEER_EXIT, PeerFailure
from . import commands
from . import sweep as sweep_command
from . import train as train_command


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports errors on a single line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="ppl-ssvae", description="Semi-supervised deep generative models in Pyro."
    )
    parser.add_argument("--version", action="version", version=f"ppl-ssvae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    train_command.add_parser(sub)
    commands.add_parsers(sub)
    sweep_command.add_parsers(sub)
    return parser


COMMANDS = {
    "train": train_command.train, "evaluate": commands.evaluate, "inspect": commands.inspect,
    "active": commands.active, "compare": commands.compare, "sweep": sweep_command.sweep,
    "report": sweep_command.report,
}  # fmt: skip


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"ppl-ssvae: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from ..models import load_plugins

    try:
        load_plugins()  # installed packages' models and callbacks become choices
    except UserError as e:
        _report(f"ppl-ssvae: error: {e}")
        return 2
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse said it in one line (or printed --help)
        return e.code if isinstance(e.code, int) else 2
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        with _trusted_guides(args):
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
        from ..training.distributed import shutdown

        shutdown()


def _trusted_guides(args: argparse.Namespace) -> Any:
    """Modules the user named on this command line: --trust-guide, and train's --guide."""
    from ..guides import is_import_path, trusted_guide_modules

    guide = getattr(args, "model.guide", None)
    named = [guide] if guide and is_import_path(guide) else []
    return trusted_guide_modules(*getattr(args, "trust_guide", []), *named)


def _report(line: str) -> None:
    """Print a one-line error once: under torchrun only rank 0 does (every rank raises
    the same refusal)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)


__all__ = ["build_parser", "main"]
