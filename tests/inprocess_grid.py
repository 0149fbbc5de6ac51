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

from fedchurn.server.keyholder import KeyHolder


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


def inprocess_keyholder(strategy: Any) -> KeyHolder:
    """The strategy's in-process key holder (tests build strategies without a deployed one)."""
    kh = strategy.secure.keyholder
    assert isinstance(kh, KeyHolder), "this strategy talks to a deployed key holder"
    return kh


def device_pins(strategy: Any) -> dict[str, str]:
    """What `fedchurn deploy` / a simulation's provisioning give a device: the key holder's pin."""
    return dict(inprocess_keyholder(strategy).pin().to_node_config())


def simulation_grid(
    strategy: Any, nodes: list[int], run_id: int = 1, in_given_order: bool = False
) -> InProcessGrid:
    """The real simulation ClientApp behind `nodes`: the i-th node in id order serves the devices
    d with d % len = i, or the i-th node as given with `in_given_order` (Flower's engine pairs
    partitions with node ids at random)."""
    from fedchurn.simulations.flower_client import app

    pins = device_pins(strategy) if strategy.cfg.protection != "plaintext" else {}
    ordered = list(nodes) if in_given_order else sorted(nodes)

    def node_config(node: int) -> dict[str, Any]:
        return {**pins, "partition-id": ordered.index(node), "num-partitions": len(ordered)}

    return InProcessGrid(app, node_config, strategy.cfg.to_flower(), run_id)
