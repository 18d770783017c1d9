"""Command line interface: ``pdnet <command> ...`` (also ``python -m pdnet``).

Each command lives in its own module exposing ``add_parser(subparsers)``, which
registers the sub-command and sets ``func`` to a callable taking the parsed
arguments and returning an exit code. Errors a user can fix (a bad path, a bad
value) are raised as :class:`UserError` and printed as one line, without a traceback.

Only the module of the command being run is imported (:data:`COMMANDS` holds the
one-line summaries that ``pdnet --help`` lists), and command modules import torch and
the model inside ``func``, not at import time: ``pdnet --help``, ``pdnet <command>
--help`` and argument errors answer in a fraction of a second.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: command -> (module that defines it with ``add_parser``, the summary ``pdnet --help``
#: lists and the command's own help shows: see :func:`add_command`), in help order
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pdnet.demo",
             "the whole pipeline on synthetic data: synth, train demo-cpu, evaluate, segment, report (CPU)"),
    "segment": ("pdnet.inference.cli",
                "segment a video or a folder of frames: mask PNGs, optional overlay / composite videos"),
    "synth": ("pdnet.data.synth.cli", "write a synthetic fake-motion portrait video dataset (DAVIS-2016 layout)"),
    "train": ("pdnet.train.cli", "train PDNet with the release recipe (resumable; multi-GPU via torchrun)"),
    "evaluate": ("pdnet.evaluation.cli", "DAVIS J&F of predicted mask PNGs against ground truth"),
    "export": ("pdnet.deploy.cli", "export a checkpoint to ONNX graphs and export.json, self-tested with ONNX Runtime"),
}

#: modules that contribute sub-commands, in help order
COMMAND_MODULES = list(dict.fromkeys(module for module, _ in COMMANDS.values()))


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit code 2."""


def add_command(subparsers, name: str, description: str) -> argparse.ArgumentParser:
    """Registers sub-command ``name`` (a key of :data:`COMMANDS`) with its summary as help;
    each command module's ``add_parser`` starts with this."""
    return subparsers.add_parser(name, help=COMMANDS[name][1], description=description)


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Makes ``parser`` report a bad command line (unknown option, missing or malformed
    value) as one line on stderr, ``<prog>: error: <message> (see <prog> --help)``, exit
    code 2, like every other error of a command, instead of argparse's usage block."""

    def error(message: str):
        sys.stderr.write(f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")
        raise SystemExit(2)

    parser.error = error  # type: ignore[method-assign]
    return parser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``pdnet`` parser. Sub-command ``command`` gets its full parser (its module
    is imported); the others are listed by name and summary only. ``"all"`` imports
    every command module and builds every full parser."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="pdnet", description="PDNet: Part-Decoupling Network for video portrait segmentation"
    )
    parser.add_argument("--version", action="version", version=f"pdnet {__version__}")
    one_line_errors(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, summary) in COMMANDS.items():
        if command in (name, "all"):
            importlib.import_module(module).add_parser(sub)
            if name not in sub.choices:
                raise RuntimeError(f"{module}.add_parser did not register the command {name!r}")
            one_line_errors(sub.choices[name])
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv``: its first word that is not an option (the
    top-level options take no value)."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--":  # what follows is positional: the command is the next word
            return args[i + 1] if i + 1 < len(args) else None
        if not arg.startswith("-"):
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(_command_of(argv))
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the command's own parser: "pdnet segment: error: ..."
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
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
