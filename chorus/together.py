"""N steps at once (ssh agents, rank processes, rank kernels, hosts to read): the first failure wins.

Unlike a TaskGroup, :func:`run_together` raises the failure itself, not an
ExceptionGroup, so the one message that names the host or rank reaches the
user as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

__all__ = ["run_together"]

T = TypeVar("T")
# How often a slow set of steps says how far it got.
PROGRESS_INTERVAL = 0.5


async def run_together(
    steps: Sequence[Awaitable[T]],
    *,
    progress: Callable[[int, int], None] | None = None,
    settle: bool = False,
) -> list[T]:
    """Run ``steps`` concurrently; their results in step order.

    Parameters
    ----------
    steps
        The coroutines (or futures) to run.
    progress
        Called with ``(done, total)`` every half second while steps are
        pending, and once when all are done.
    settle
        On a failure, let the other steps finish and then raise the failure
        of the first step (in step order) that failed: for steps that start
        processes, so that every process started is known and can be
        stopped. Otherwise the other steps are cancelled at the first
        failure, which is raised.

    Raises
    ------
    BaseException
        The failure of a step, as it was raised.
    """
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        pending: set[asyncio.Future[T]] = set(tasks)
        while pending:
            when = asyncio.ALL_COMPLETED if settle else asyncio.FIRST_EXCEPTION
            _, pending = await asyncio.wait(pending, timeout=PROGRESS_INTERVAL, return_when=when)
            if not settle:
                for task in tasks:
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
            if progress is not None:
                progress(len(tasks) - len(pending), len(tasks))
        for task in tasks:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
