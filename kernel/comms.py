"""Comms between the frontend and the ranks: ipywidgets, ``tqdm.notebook``, ipympl.

A comm is opened by one rank's kernel (a widget model) or by the frontend.
The router remembers which rank owns each comm id (ids are uuids, unique
across ranks, so widget model ids need no renaming), forwards the frontend's
``comm_msg`` and ``comm_close`` to that rank only (a slider moved on rank 2's
widget reaches rank 2), and the ranks' comm messages to the frontend, with
their metadata (ipywidgets puts its protocol version there) and binary
buffers. A comm the frontend opens goes to every rank. A rank's
message caused by a frontend's message carries that message as its parent,
as it would from a single kernel.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

COMM_TYPES = ("comm_open", "comm_msg", "comm_close")
# How many forwarded requests' parents are remembered (the replies come fast).
_PARENTS_KEPT = 4096

Message = dict[str, Any]
# (rank, msg_type, content, metadata, buffers) -> the msg_id it was sent under.
SendToRank = Callable[[int, str, dict[str, Any], dict[str, Any], Sequence[Any]], str]


@dataclass
class CommMessage:
    """A rank's comm message on its way to the frontend."""

    msg_type: str
    content: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    buffers: Sequence[Any] = ()
    # The frontend's message that caused it; None: the running cell's request.
    parent: Message | None = None


Publish = Callable[[CommMessage], None]


class CommRouter:
    """Which rank owns which comm, and the messages between them and the frontend."""

    def __init__(self, size: int, send_to_rank: SendToRank, publish: Publish) -> None:
        self.size = size
        self.send_to_rank = send_to_rank
        self.publish = publish
        self.owners: dict[str, set[int]] = {}
        self.targets: dict[str, str] = {}
        self._parents: OrderedDict[str, Message] = OrderedDict()

    def from_rank(self, rank: int, message: Message) -> None:
        """A rank kernel's comm_open, comm_msg or comm_close: on to the frontend."""
        kind = message["header"]["msg_type"]
        content = message["content"]
        comm_id = str(content.get("comm_id", ""))
        if kind == "comm_open":
            self.owners.setdefault(comm_id, set()).add(rank)
            self.targets[comm_id] = str(content.get("target_name", ""))
        elif kind == "comm_close":
            self._forget(comm_id, rank)
        parent_id = message.get("parent_header", {}).get("msg_id", "")
        self.publish(
            CommMessage(
                kind,
                content,
                message.get("metadata") or {},
                message.get("buffers") or [],
                self._parents.get(parent_id),
            )
        )

    def from_frontend(self, parent: Message) -> None:
        """The frontend's comm_open, comm_msg or comm_close: to the rank(s) owning the comm."""
        kind = parent["header"]["msg_type"]
        content = parent["content"]
        comm_id = str(content.get("comm_id", ""))
        if kind == "comm_open":
            ranks = set(range(self.size))
            self.owners[comm_id] = set(ranks)
            self.targets[comm_id] = str(content.get("target_name", ""))
        else:
            ranks = set(self.owners.get(comm_id, ()))
        for rank in sorted(ranks):
            try:
                msg_id = self.send_to_rank(
                    rank, kind, content, parent.get("metadata") or {}, parent.get("buffers") or []
                )
            except RuntimeError:  # that rank is not running
                continue
            self._parents[msg_id] = parent["header"]
            while len(self._parents) > _PARENTS_KEPT:
                self._parents.popitem(last=False)
        if kind == "comm_close":
            self.owners.pop(comm_id, None)
            self.targets.pop(comm_id, None)

    def info(self, target_name: str | None = None) -> dict[str, Any]:
        """The content of a comm_info_reply: every open comm (of ``target_name``)."""
        comms = {
            comm_id: {"target_name": target}
            for comm_id, target in self.targets.items()
            if not target_name or target == target_name
        }
        return {"status": "ok", "comms": comms}

    def _forget(self, comm_id: str, rank: int) -> None:
        owners = self.owners.get(comm_id)
        if owners is None:
            return
        owners.discard(rank)
        if not owners:
            del self.owners[comm_id]
            self.targets.pop(comm_id, None)
