"""Ranks started by a scheduler instead of ``chorus launch``: where rank 0 is.

Under Slurm (``srun``) or an MPI launcher (``mpirun``) there is no hostfile,
so the TCP backends meet through rank 0 (``CHORUS_COORDINATOR``, "ip:port"):
each rank tells rank 0 its address and gets everyone's back. When the
variable is not set, it is derived:

- Slurm: the first node of the step (``SLURM_STEP_NODELIST``, else
  ``SLURM_JOB_NODELIST``; Slurm's default distribution puts task 0 there),
  at port ``CHORUS_PORT`` or ``20000 + (job id * 16 + step id) % 20000``, so
  concurrent jobs and steps on one node do not collide.
- Open MPI / MPICH: nothing names rank 0's host, so set
  ``CHORUS_COORDINATOR`` (``mpirun -x CHORUS_COORDINATOR=node1:29500``) or use
  the ``mpi`` backend.

Every connection proves the job's secret ``CHORUS_TOKEN``; export one before
``srun``/``mpirun`` (``export CHORUS_TOKEN=$(openssl rand -hex 16)``, and
``-x CHORUS_TOKEN`` for mpirun). Without it the token is derived from the job
and step ids, which keeps concurrent jobs apart but is not a secret.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping

__all__ = ["SchedulerError", "derived_coordinator", "derived_token", "expand_nodelist"]

BASE_PORT = 20000
PORT_SPAN = 20000


class SchedulerError(ValueError):
    """A scheduler variable is malformed, or rank 0's host cannot be found."""


_GROUP = re.compile(r"([^,\[]*)(\[[^\]]*\])?([^,\[]*)")


def _expand_range(text: str, where: str) -> list[str]:
    values: list[str] = []
    for part in text.split(","):
        low, sep, high = part.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            msg = f"{where}: bad range {part!r}"
            raise SchedulerError(msg)
        if not sep:
            values.append(low)
            continue
        width = len(low)
        values += [str(n).zfill(width) for n in range(int(low), int(high) + 1)]
    return values


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed host list, expanded: ``"n[01-03,7],gpu"`` -> n01 n02 n03 n7 gpu.

    Raises
    ------
    SchedulerError
        If the list is malformed.
    """
    hosts: list[str] = []
    position = 0
    text = nodelist.strip()
    while position < len(text):
        match = _GROUP.match(text, position)
        if match is None or match.end() == position:
            msg = f"SLURM nodelist {nodelist!r}: cannot parse it at {text[position:]!r}"
            raise SchedulerError(msg)
        prefix, bracket, suffix = match.groups()
        if bracket:
            for value in _expand_range(bracket[1:-1], f"SLURM nodelist {nodelist!r}"):
                hosts.append(f"{prefix}{value}{suffix}")
        elif prefix:
            hosts.append(prefix + suffix)
        position = match.end()
        if position < len(text):
            if text[position] != ",":
                msg = f"SLURM nodelist {nodelist!r}: expected ',' at {text[position:]!r}"
                raise SchedulerError(msg)
            position += 1
    if not hosts:
        msg = f"SLURM nodelist {nodelist!r} is empty"
        raise SchedulerError(msg)
    return hosts


def _slurm_ids(env: Mapping[str, str]) -> tuple[int, int]:
    job = env.get("SLURM_JOB_ID", env.get("SLURM_JOBID", ""))
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", "0"))
    if not job.isdigit() or not step.isdigit():
        msg = f"SLURM_JOB_ID={job!r} / SLURM_STEP_ID={step!r} are not numbers"
        raise SchedulerError(msg)
    return int(job), int(step)


def derived_coordinator(env: Mapping[str, str]) -> str | None:
    """Rank 0's "ip:port" as derived from a scheduler's variables, or ``None``.

    Raises
    ------
    SchedulerError
        Slurm variables are present but malformed, or the first node's name
        does not resolve.
    """
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if not nodelist or "SLURM_PROCID" not in env:
        return None
    first = expand_nodelist(nodelist)[0]
    if env.get("CHORUS_PORT"):
        port_text = env["CHORUS_PORT"]
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            msg = f"CHORUS_PORT={port_text!r} is not a port number"
            raise SchedulerError(msg)
        port = int(port_text)
    else:
        job, step = _slurm_ids(env)
        port = BASE_PORT + (job * 16 + step) % PORT_SPAN
    try:
        ip = socket.gethostbyname(first)
    except OSError as err:
        msg = f"rank 0's node {first!r} (first of SLURM nodelist {nodelist!r}) does not resolve: {err}"
        raise SchedulerError(msg) from None
    return f"{ip}:{port}"


def derived_token(env: Mapping[str, str]) -> str:
    """A token every rank of this scheduler job computes alike (not a secret)."""
    parts = [
        env.get("SLURM_JOB_ID", ""),
        env.get("SLURM_STEP_ID", ""),
        env.get("OMPI_MCA_orte_hnp_uri", ""),
        env.get("PMIX_NAMESPACE", ""),
        env.get("CHORUS_COORDINATOR", ""),
    ]
    return "derived:" + "|".join(parts)
