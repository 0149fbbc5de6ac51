"""A Flower Grid that collects replies as soon as they arrive.

Flower 1.41's grids wait a fixed interval between pulls of replies: 3 s for the deployment
engine's `HttpGrid`, 0.1 s for the simulation engine's `InMemoryGrid`. A fedchurn round is one
message per node and can finish in well under 0.1 s, so those sleeps would set its pace. This
wrapper pushes through the real grid and pulls again after a wait proportional to the time waited
so far (5 % of it, from 2 ms up to 0.25 s): a reply is seen at most ~5 % after it arrives, and a
round of seconds costs ~100 pulls, not thousands. On the deployment engine every pull is an HTTP
request the SuperLink answers, so a fixed 5 ms interval kept it busy (decision 116); every other
call goes to the wrapped grid.

`on_reply`, when set, is called with each reply as soon as it is pulled (the strategy sums a
cohort while other nodes still work); it applies to the next `send_and_receive` only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

__all__ = ["PromptGrid"]

FIRST_WAIT_S = 0.002
LONGEST_WAIT_S = 0.25
LATE_SHARE = 0.05  # the next pull comes after this share of the time waited so far


class PromptGrid(Grid):
    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        self.on_reply: Callable[[Message], None] | None = None

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then pull until every reply is in or `timeout` seconds have passed."""
        on_reply, self.on_reply = self.on_reply, None
        pending = set(self.push_messages(messages))
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        out: list[Message] = []
        while pending:
            got = list(self.pull_messages(pending))
            out.extend(got)
            if on_reply is not None:
                for msg in got:
                    on_reply(msg)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            now = time.monotonic()
            wait = min(LONGEST_WAIT_S, max(FIRST_WAIT_S, LATE_SHARE * (now - start)))
            time.sleep(wait if deadline is None else min(wait, max(0.0, deadline - now)))
        return out
