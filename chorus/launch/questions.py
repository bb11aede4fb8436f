"""The ranks' questions to whoever started them: a port the launcher (or the kernel) answers.

A rank cannot find out alone where every rank is: the others may be the
ones that hang, so it cannot ask them with a collective. Its supervisor can
(the launcher signals every rank, the kernel asks each on its control
channel), so :func:`chorus.debug.where` and a rank whose set-up timed out
ask it here.

The server listens on ``127.0.0.1`` of the supervisor's host. Ranks on other
hosts reach it through their ssh connection: a remote forward on that
host's loopback, one per connection (so it works behind NAT, and nothing
listens on a public address). ``CHORUS_SUPERVISOR`` gives each rank its
address, or ``unavailable: <why>`` when there is none.

Protocol: one JSON line each way. The rank sends ``{"token", "rank",
"question": "where"}``; the answer is ``{"ok": true, "answers":
WhereAnswers}`` or ``{"ok": false, "error": "..."}``. The job's token must
match: other users of the host can connect to a loopback port. Questions
that arrive while one is being asked share its answer (every rank whose
set-up timed out asks at about the same moment).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from chorus.where import SUPERVISOR_UNAVAILABLE, WhereAnswers

if TYPE_CHECKING:
    import asyncssh

__all__ = ["QuestionServer"]

LOCALHOST = "127.0.0.1"
# A question is one short line; a client that sends nothing is dropped.
REQUEST_TIMEOUT = 10.0
REQUEST_LIMIT = 4096


class QuestionServer:
    """Answers the ranks' questions on a loopback port.

    Parameters
    ----------
    token
        The job's ``CHORUS_TOKEN``; questions without it are refused.
    where
        Asks every rank where it is and returns the answers (the launcher's
        :class:`~chorus.launch.stall.WhereCollector`, the kernel's RankSet).
    """

    def __init__(self, token: str, where: Callable[[], Awaitable[WhereAnswers]]) -> None:
        self.token = token
        self._where = where
        self._server: asyncio.Server | None = None
        self._port = 0
        self._asking: asyncio.Task[WhereAnswers] | None = None
        self._forwards: dict[int, str] = {}  # id(ssh connection) -> the address there
        self._listeners: list[Any] = []
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        """``127.0.0.1:port`` for ranks on this host."""
        return f"{LOCALHOST}:{self._port}"

    async def start(self) -> str:
        """Listen; returns :attr:`address`."""
        self._server = await asyncio.start_server(self._serve, LOCALHOST, 0, limit=REQUEST_LIMIT)
        self._port = self._server.sockets[0].getsockname()[1]
        return self.address

    async def address_over(self, connection: asyncssh.SSHClientConnection, host: str) -> str:
        """The address ranks on ``connection``'s host use: a remote forward to this server.

        One forward per connection. When the ssh server refuses to forward
        (``AllowTcpForwarding no``) the value says so, and the ranks there
        raise that reason when they ask.
        """
        from chorus.sshlib import asyncssh

        key = id(connection)
        if key not in self._forwards:
            try:
                listener = await connection.forward_remote_port(LOCALHOST, 0, LOCALHOST, self._port)
            # ChannelListenError (the server refused) is not an asyncssh.Error.
            except (asyncssh.Error, asyncssh.ChannelListenError, OSError) as exc:
                listener = None
                why = str(exc) or type(exc).__name__
            else:
                why = "the ssh server refused"
            if listener is None:
                self._forwards[key] = (
                    f"{SUPERVISOR_UNAVAILABLE}the ssh server of {host} does not forward a port back to"
                    f" the launcher ({why}; its sshd_config needs AllowTcpForwarding yes)"
                )
            else:
                self._listeners.append(listener)
                self._forwards[key] = f"{LOCALHOST}:{listener.get_port()}"
        return self._forwards[key]

    def close(self) -> None:
        """Stop listening and drop every forward and open question."""
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        if self._server is not None:
            self._server.close()
            self._server = None
        for client in self._clients:
            client.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            answer = await self._answer(reader)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # the rank went away, or sent garbage: nothing to answer
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                line = await reader.readline()
        except TimeoutError:
            return {"ok": False, "error": "no question"}
        try:
            request = json.loads(line)
            token = str(request["token"])
            question = request["question"]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "not a question"}
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            return {"ok": False, "error": "wrong token (not a rank of this job)"}
        if question != "where":
            return {"ok": False, "error": f"unknown question {question!r}"}
        return {"ok": True, "answers": await self._shared_where()}

    async def _shared_where(self) -> WhereAnswers:
        if self._asking is None or self._asking.done():
            self._asking = asyncio.ensure_future(self._where())
        return await asyncio.shield(self._asking)
