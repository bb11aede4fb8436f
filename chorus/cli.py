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
from typing import TYPE_CHECKING

from chorus.backends import LAUNCH_BACKENDS, NETWORK_BACKENDS, default_backend

if TYPE_CHECKING:
    from chorus.hostfile import Hostfile

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
        self.status("")
        _say(message)

    def status(self, line: str) -> None:
        # A live line on a terminal only; logs get the outcome, not every tick.
        if not sys.stderr.isatty():
            return
        width = 0 if not line else min(len(line) + 8, 200)
        sys.stderr.write("\r\x1b[K" + (f"chorus: {line}"[:width] if line else ""))
        sys.stderr.flush()


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


def _gpus(text: str) -> tuple[str, ...]:
    """``--gpus 4`` (devices 0-3) or ``--gpus 0,2,5`` (those ids)."""
    if text.isdigit():
        return tuple(str(i) for i in range(int(text)))
    ids = tuple(part.strip() for part in text.split(","))
    if not all(ids):
        msg = f"expected a count or a list of GPU ids such as 0,1,2, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return ids


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
        choices=LAUNCH_BACKENDS,
        default=None,
        help="CHORUS_BACKEND for the ranks (default: shm on one host, else the hostfile's or "
        "ring); mpi hands the job to mpirun",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--hosts",
        metavar="H1,H2,...",
        help="run over ssh, one rank per host (-n per host); names from ~/.ssh/config or IPs",
    )
    where.add_argument(
        "--hostfile",
        metavar="FILE",
        help='run over ssh as FILE says (MLX\'s JSON: [{"ssh": "h1", "ips": ["10.0.0.1"]}, ...])',
    )
    parser.add_argument(
        "--python",
        metavar="PATH",
        help="the interpreter on remote hosts (default: this one's path, " + sys.executable + ")",
    )
    parser.add_argument(
        "--accept-new-host-keys",
        action="store_true",
        help="record unknown ssh host keys in known_hosts instead of refusing them",
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
        "--gpus",
        type=_gpus,
        default=None,
        metavar="N|IDS",
        help="one GPU per rank of each host: CUDA_VISIBLE_DEVICES of the k-th rank on a host"
        " is the k-th id (N: ids 0 to N-1)",
    )
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
        "--stall-report",
        type=_seconds,
        default=None,
        metavar="S",
        help="when some ranks have waited S seconds in a call the others cannot join, print"
        " where every rank is (once per stall; Ctrl-\\ prints it any time)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=_seconds,
        default=None,
        metavar="S",
        help="the same, then stop the job and exit with 124 (default: off)",
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
    from chorus.hostfile import HostfileError, chorus_backend
    from chorus.launch.mpi_job import launch_mpirun
    from chorus.launch.run import launch
    from chorus.launch.spec import JobSpec, LaunchError, build_command

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
        hosts = _hosts(args)
        nprocs = args.nprocs if hosts is None else len(hosts.hosts)
        backend = default_backend(args.backend, remote=hosts is not None)
        if hosts is not None and not args.backend and hosts.backend:
            backend = chorus_backend(hosts.backend, "hostfile")
        spec = JobSpec(
            argv=argv,
            nprocs=nprocs,
            backend=backend,
            hosts=hosts,
            python=args.python,
            accept_new_host_keys=args.accept_new_host_keys,
            env=dict(args.env),
            cwd=cwd,
            timeout=args.timeout,
            verbose=args.verbose,
            prefix=args.prefix,
            grace=args.grace,
            stall_report=args.stall_report,
            stall_timeout=args.stall_timeout,
            gpus=args.gpus,
        )
        if backend == "mpi" and args.gpus is not None:
            msg = "--gpus needs chorus's own launcher: under --backend mpi, mpirun places the ranks"
            raise CliError(msg)
        if backend == "mpi":
            # Only mpirun can start MPI ranks: it places them, we watch it.
            return launch_mpirun(spec, _StderrReporter(args.verbose))
        return launch(spec, _StderrReporter(args.verbose)).exit_code
    except (LaunchError, HostfileError) as exc:
        raise CliError(str(exc)) from exc


def _hosts(args: argparse.Namespace) -> Hostfile | None:
    """The hosts of ``--hosts``/``--hostfile``; ``None`` for a local job."""
    from chorus.hostfile import resolve_hosts

    if args.hostfile and args.nprocs != 1:
        msg = "-n cannot be combined with --hostfile: list a host once per rank"
        raise CliError(msg)
    hosts = resolve_hosts(hosts=args.hosts, hostfile=args.hostfile, per_host=args.nprocs)
    if hosts is None and (args.python or args.accept_new_host_keys):
        msg = "--python and --accept-new-host-keys need --hosts or --hostfile"
        raise CliError(msg)
    return hosts


LAUNCH_DESCRIPTION = """\
Start N ranks of a Python program on this machine, or over ssh on the hosts of
--hosts (with -n ranks per host) or --hostfile. Every line typed on stdin
goes to every rank; every rank's stdout and stderr come back labelled [rank].
The exit status is 0 when every rank exits 0, else that of the first rank
that failed (128+N for signal N); the others are then stopped after --grace
seconds. Ctrl-C and SIGTERM reach every rank; a second Ctrl-C kills them.
"""

# -- chorus kernel -------------------------------------------------------------


def _kernel_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="kernel_action", metavar="ACTION", required=True)
    install = actions.add_parser("install", help="install a 'Chorus (N ranks)' kernelspec")
    install.add_argument(
        "--ranks", type=_positive_int, default=None, help="ranks (default 4; per host with --hosts)"
    )
    install.add_argument(
        "--backend",
        default=None,
        choices=[name for name in LAUNCH_BACKENDS if name != "mpi"],  # kernels are ours
        help="backend of the ranks",
    )
    install.add_argument("--timeout", type=_seconds, default=None, help="CHORUS_TIMEOUT")
    install.add_argument(
        "--name", default=None, help="kernelspec name (default chorus, or chorus-N for N != 4)"
    )
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user only")
    where.add_argument("--sys-prefix", action="store_true", help="install into sys.prefix")
    where.add_argument("--prefix", default=None, help="install under this prefix")
    hosts = install.add_mutually_exclusive_group()
    hosts.add_argument(
        "--hosts", default=None, help="ranks on these ssh hosts (--ranks per host, default 1)"
    )
    hosts.add_argument("--hostfile", default=None, help="ranks on the hosts of this hostfile")
    install.add_argument("--python", default=None, help="the interpreter on remote hosts")
    actions.add_parser("list", help="list the installed chorus kernelspecs")
    remove = actions.add_parser("remove", help="remove a chorus kernelspec")
    remove.add_argument("name", help="kernelspec name, as shown by chorus kernel list")


def _kernel(args: argparse.Namespace) -> int:
    from chorus.kernel import kernelspec

    if args.kernel_action == "list":
        specs = kernelspec.list_specs()
        if not specs:
            print("no chorus kernels installed (chorus kernel install --ranks 4)")
        for name, info in sorted(specs.items()):
            print(f"{name:<16} {info['spec']['display_name']:<22} {info['resource_dir']}")
        return 0
    if args.kernel_action == "remove":
        try:
            path = kernelspec.remove(args.name)
        except KeyError as exc:
            raise CliError(exc.args[0]) from None
        print(f"removed {path}")
        return 0
    from chorus.hostfile import HostfileError

    placement = kernelspec.Placement(args.hosts, args.hostfile, args.python)
    args.backend = default_backend(args.backend, remote=bool(args.hosts or args.hostfile))
    if args.ranks is None:
        args.ranks = 1 if args.hosts or args.hostfile else 4
    if args.hosts or args.hostfile:
        try:
            total = placement.total_ranks(args.ranks)
        except HostfileError as exc:
            raise CliError(str(exc)) from None
        name = args.name or f"chorus-{total}-remote"
    else:
        name = args.name or ("chorus" if args.ranks == 4 else f"chorus-{args.ranks}")
    prefix = sys.prefix if args.sys_prefix else args.prefix
    try:
        path = kernelspec.install(
            name=name,
            ranks=args.ranks,
            backend=args.backend,
            timeout=args.timeout,
            user=args.user,
            prefix=prefix,
            placement=placement,
        )
    except OSError as exc:
        msg = f"cannot write the kernelspec: {exc} (try --user or --sys-prefix)"
        raise CliError(msg) from None
    where = placement.where()
    print(
        f"installed kernelspec {name} ({args.ranks} ranks{where}, backend {args.backend}) in {path}"
    )
    return 0


KERNEL_DESCRIPTION = """\
Manage Jupyter kernelspecs for the chorus kernel: every cell of a notebook
runs on N ranks, output comes back labelled [0-3], one prompt answers input()
and pdb on every rank, and the interrupt button reaches every rank.

  chorus kernel install --ranks 4 [--backend shm] [--name NAME] [--user|--sys-prefix|--prefix P]
  chorus kernel list
  chorus kernel remove NAME
"""

# -- chorus config -------------------------------------------------------------


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hosts",
        required=True,
        metavar="H1,H2,...",
        help="the hosts to check, each once (names from ~/.ssh/config or addresses)",
    )
    parser.add_argument(
        "--over",
        choices=("thunderbolt", "ethernet"),
        default=None,
        help="thunderbolt: the point-to-point cables; ethernet: the subnet all hosts share "
        "(default: the cables when there are any, else the switch)",
    )
    parser.add_argument(
        "--backend",
        choices=NETWORK_BACKENDS,
        default="ring",
        help="the backend the hostfile is for (default: ring)",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the hostfile to FILE (default: print it on stdout)",
    )
    parser.add_argument(
        "--dot",
        nargs="?",
        const="-",
        metavar="FILE",
        help="draw the wiring: the graphviz source on stdout, or a picture in FILE "
        "(.svg, .png, .pdf need Graphviz's dot; .dot/.gv get the source)",
    )
    parser.add_argument(
        "--auto-setup",
        action="store_true",
        help="give unaddressed cables /30 addresses (and a mesh its host routes) on the hosts, "
        "as root or with passwordless sudo (default: print the commands)",
    )
    parser.add_argument(
        "--python",
        metavar="PATH",
        default="",
        help="the interpreter the hosts run probes with (default: this one's path, "
        "else python3 on their PATH)",
    )
    parser.add_argument(
        "--accept-new-host-keys",
        action="store_true",
        help="record unknown ssh host keys in known_hosts instead of refusing them",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show each command run on each host"
    )


def _config(args: argparse.Namespace) -> int:
    from chorus.config.command import ConfigOptions, run_config
    from chorus.config.errors import ConfigError
    from chorus.hostfile import HostfileError, parse_host_list
    from chorus.ssh import SshError

    try:
        hosts = tuple(entry.ssh for entry in parse_host_list(args.hosts).hosts)
        options = ConfigOptions(
            hosts=hosts,
            backend=args.backend,
            over=args.over,
            output=args.output,
            dot=args.dot,
            auto_setup=args.auto_setup,
            python=args.python,
            accept_new_host_keys=args.accept_new_host_keys,
            verbose=args.verbose,
        )
        return run_config(options, _StderrReporter(args.verbose))
    except (ConfigError, SshError, HostfileError) as exc:
        raise CliError(str(exc)) from exc


CONFIG_DESCRIPTION = """\
Discover how the hosts are wired, check the wiring, and propose a hostfile.

chorus config connects to every host over ssh, reads its interfaces (Linux: ip -j
addr/link; macOS: ifconfig, networksetup and system_profiler's Thunderbolt ports),
pairs up interfaces that share a point-to-point subnet, confirms each pair with a
TCP probe from one host to the other, and traces unaddressed cables through their
IPv6 link-local addresses. It then checks that the cables form a ring (--backend
ring) or a full mesh (--backend mesh) and names any missing or miswired cable.

A summary goes to stderr; the hostfile JSON goes to stdout or --output FILE, ready
for `chorus launch --hostfile FILE`. With --dot the graphviz source goes to stdout
instead (pipe it to `dot -Tsvg`), or --dot wiring.svg draws it. Exit status 0 means
the hostfile is usable as is.

  chorus config --hosts a,b,c,d --dot wiring.svg --output hosts.json
  chorus launch --hostfile hosts.json train.py
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
    Subcommand(
        name="config",
        help="discover how hosts are wired, check the ring/mesh, write the hostfile",
        add_arguments=_config_arguments,
        run=_config,
        description=CONFIG_DESCRIPTION,
    ),
    Subcommand(
        name="kernel",
        help="install, list or remove Jupyter kernelspecs for the chorus kernel",
        add_arguments=_kernel_arguments,
        run=_kernel,
        description=KERNEL_DESCRIPTION,
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
