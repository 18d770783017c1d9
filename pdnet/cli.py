"""Command line interface: ``pdnet <command> ...`` (also ``python -m pdnet``).

Each command lives in its own module exposing ``add_parser(subparsers)``, which
registers the sub-command and sets ``func`` to a callable taking the parsed
arguments and returning an exit code. Errors a user can fix (a bad path, a bad
value) are raised as :class:`UserError` and printed as one line, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

#: modules that contribute sub-commands, in help order
COMMAND_MODULES = [
    "pdnet.demo",
    "pdnet.inference.cli",
    "pdnet.data.synth",
    "pdnet.train.cli",
    "pdnet.evaluation.cli",
]


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="pdnet", description="PDNet: Part-Decoupling Network for video portrait segmentation"
    )
    parser.add_argument("--version", action="version", version=f"pdnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"pdnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pdnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
