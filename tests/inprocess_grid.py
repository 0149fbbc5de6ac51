"""A Flower Grid that hands each message to a real ClientApp in this process (tests only).

It lets a test drive the real strategy and the real ClientApp end to end without the simulation
engine, and lets an attack test play a malicious aggregator: drop or rewrite messages and replies.
A device that raises answers with an error reply, as Flower's engines do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp


class InProcessGrid:
    def __init__(
        self,
        app: ClientApp,
        node_config: Callable[[int], dict[str, Any]],
        run_config: dict[str, Any],
        run_id: int = 1,
    ) -> None:
        self.app = app
        self.node_config = node_config
        self.run_config = run_config
        self.run_id = run_id
        self.contexts: dict[int, Context] = {}
        self.errors: list[str] = []
        # A malicious aggregator's hooks: rewrite a message before delivery, drop or rewrite a reply.
        self.on_message: Callable[[Message], Message] | None = None
        self.on_reply: Callable[[Message], Message | None] | None = None

    def context(self, node: int) -> Context:
        if node not in self.contexts:
            self.contexts[node] = Context(
                run_id=self.run_id,
                node_id=node,
                node_config=self.node_config(node),
                state=RecordDict(),
                run_config=dict(self.run_config),
            )
        return self.contexts[node]

    def deliver(self, msg: Message) -> Message:
        if self.on_message is not None:
            msg = self.on_message(msg)
        node = msg.metadata.dst_node_id
        try:
            return self.app(msg, self.context(node))
        except Exception as e:
            self.errors.append(f"{type(e).__name__}: {e}")
            return Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=msg)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        out = []
        for msg in messages:
            reply = self.deliver(msg)
            if self.on_reply is not None:
                reply = self.on_reply(reply)  # type: ignore[assignment]
                if reply is None:
                    continue
            out.append(reply)
        return out

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)
