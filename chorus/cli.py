"""The ``chorus`` command.

Each subcommand is a :class:`Subcommand`: a function that adds its arguments
and a function that runs it, listed once in :data:`SUBCOMMANDS`. This module
is the only place that prints errors and picks exit codes: library code
raises, and :func:`main` turns exceptions into a one-line message and a
status (2 for usage errors, as argparse does).

Imports of the subcommands' machinery happen inside the functions that run
them, so ``chorus --help`` and ``chorus launch`` stay fast (no numpy, no
compiled module).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SUBCOMMANDS", "CliError", "Subcommand", "build_parser", "main"]

USAGE_ERROR = 2
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class CliError(Exception):
    """A problem with what the user asked for; reported without a traceback."""


@dataclass(frozen=True)
class Subcommand:
    """One ``chorus <name>`` subcommand.

    Attributes
    ----------
    name
        The word after ``chorus``.
    help
        One line for ``chorus --help``.
    add_arguments
        Adds the subcommand's options to its parser.
    run
        Runs it and returns the exit status.
    description
        The longer text of ``chorus <name> --help``.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""


class _StderrReporter:
    """Shows the launcher's messages on stderr as ``chorus: ...``."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose

    def progress(self, message: str) -> None:
        if self.verbose:
            _say(message)

    def event(self, message: str) -> None:
        _say(message)


def _say(message: str) -> None:
    sys.stderr.write(f"chorus: {message}\n")
    sys.stderr.flush()


# -- chorus launch -------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        msg = f"expected a whole number, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        msg = f"expected a number of seconds, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not value >= 0:
        msg = f"must be a non-negative number of seconds, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        msg = f"expected NAME=VALUE, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    if not ENV_NAME.match(name):
        msg = f"{name!r} is not a valid environment variable name (in {text!r})"
        raise argparse.ArgumentTypeError(msg)
    return name, value


def _launch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--nprocs",
        type=_positive_int,
        default=1,
        metavar="N",
        help="number of ranks (default: 1)",
    )
    parser.add_argument(
        "--backend",
        choices=("shm", "ring", "any"),
        default="shm",
        help="CHORUS_BACKEND for the ranks (default: shm)",
    )
    parser.add_argument(
        "--env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a variable in every rank (repeatable; wins over chorus's own)",
    )
    parser.add_argument("--cwd", metavar="DIR", help="working directory of the ranks")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="CHORUS_TIMEOUT: seconds for set-up and for a peer to answer (default: 60)",
    )
    parser.add_argument(
        "--grace",
        type=_seconds,
        default=2.0,
        metavar="S",
        help="when a rank fails, seconds the others get before SIGTERM, then SIGKILL (default: 2)",
    )
    parser.add_argument(
        "--prefix",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="label each output line with [rank] (default: on)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print set-up steps to stderr")
    program = parser.add_mutually_exclusive_group()
    program.add_argument(
        "-m",
        dest="module",
        nargs=argparse.REMAINDER,
        metavar="MODULE",
        help="run a library module as a script, like python -m (the rest are its arguments)",
    )
    program.add_argument(
        "-c",
        dest="code",
        nargs=argparse.REMAINDER,
        metavar="CODE",
        help="run a program passed as a string, like python -c",
    )
    parser.add_argument(
        "program",
        nargs=argparse.REMAINDER,
        metavar="script.py [args ...]",
        help="the script (run with this Python if it ends in .py) and its arguments",
    )


def _launch(args: argparse.Namespace) -> int:
    # Imported here: the launcher's machinery (asyncio, sockets) is only
    # needed by this subcommand.
    from chorus.launch.run import JobSpec, LaunchError, build_command, launch

    cwd: str | None = args.cwd
    if cwd is not None and not Path(cwd).is_dir():
        msg = f"--cwd {cwd}: no such directory"
        raise CliError(msg)
    program: list[str] = list(args.program)
    if program and program[0] == "--":
        program = program[1:]
    try:
        if args.module is not None:
            if not args.module:
                msg = "argument -m: expected a module name"
                raise CliError(msg)
            argv = build_command(module=args.module[0], args=[*args.module[1:], *program], cwd=cwd)
        elif args.code is not None:
            if not args.code:
                msg = "argument -c: expected the code to run"
                raise CliError(msg)
            argv = build_command(code=args.code[0], args=[*args.code[1:], *program], cwd=cwd)
        else:
            if not program:
                msg = "nothing to run: give a script, -m MODULE or -c CODE"
                raise CliError(msg)
            argv = build_command(script=program[0], args=program[1:], cwd=cwd)
        spec = JobSpec(
            argv=argv,
            nprocs=args.nprocs,
            backend=args.backend,
            env=dict(args.env),
            cwd=cwd,
            timeout=args.timeout,
            verbose=args.verbose,
            prefix=args.prefix,
            grace=args.grace,
        )
        result = launch(spec, _StderrReporter(args.verbose))
    except LaunchError as exc:
        raise CliError(str(exc)) from exc
    return result.exit_code


LAUNCH_DESCRIPTION = """\
Start N ranks of a Python program on this machine. Every line typed on stdin
goes to every rank; every rank's stdout and stderr come back labelled [rank].
The exit status is 0 when every rank exits 0, else that of the first rank
that failed (128+N for signal N); the others are then stopped after --grace
seconds. Ctrl-C and SIGTERM reach every rank; a second Ctrl-C kills them.
"""

# -- the command ----------------------------------------------------------------

SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        name="launch",
        help="run a program as N local ranks",
        add_arguments=_launch_arguments,
        run=_launch,
        description=LAUNCH_DESCRIPTION,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The ``chorus`` parser with every subcommand of :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="chorus",
        description="chorus: an interactive distributed shell for Python.",
    )
    subparsers = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    for subcommand in SUBCOMMANDS:
        subparser = subparsers.add_parser(
            subcommand.name,
            help=subcommand.help,
            description=subcommand.description or subcommand.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        subcommand.add_arguments(subparser)
        subparser.set_defaults(run=subcommand.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``chorus`` command and return its exit status.

    Parameters
    ----------
    argv
        The arguments after ``chorus`` (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 for a usage error, otherwise what the subcommand
        returned (for ``launch``: the failing rank's status).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except CliError as exc:
        _say(f"error: {exc}")
        return USAGE_ERROR
    except KeyboardInterrupt:
        # Only before the launcher installs its own handler (or after it).
        return 128 + 2
