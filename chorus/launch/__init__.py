"""The launcher: start N ranks, broadcast stdin, gather labelled output.

``chorus launch`` (see :mod:`chorus.cli`) is a thin layer over :func:`launch`.
Importing this package must stay cheap: it never imports numpy or the
compiled backend, so that launch-to-exit of a trivial job stays fast.
"""

from __future__ import annotations

from chorus.launch.process import LocalRank, RankProcess
from chorus.launch.run import Job, JobResult, RankExit, launch
from chorus.launch.spec import JobSpec, LaunchError, build_command
from chorus.reporter import Reporter

__all__ = [
    "Job",
    "JobResult",
    "JobSpec",
    "LaunchError",
    "LocalRank",
    "RankExit",
    "RankProcess",
    "Reporter",
    "build_command",
    "launch",
]
