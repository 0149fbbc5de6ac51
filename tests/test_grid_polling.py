"""`PromptGrid` pulls replies soon after they arrive without keeping the SuperLink busy: the wait
between pulls grows with the time waited (decision 116). A fake grid and a fake clock stand in for
Flower's, so the test counts pulls and measures lateness exactly."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any, cast

import pytest
from flwr.app import Message
from flwr.serverapp import Grid

from fedchurn.server import grid_polling
from fedchurn.server.grid_polling import PromptGrid


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


class FakeGrid:
    """Replies to message i become available at `arrive[i]` seconds on the fake clock."""

    def __init__(self, clock: FakeClock, arrive: list[float]) -> None:
        self.clock, self.arrive, self.pulls = clock, arrive, 0
        self.seen: dict[str, float] = {}

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        return [str(i) for i, _ in enumerate(messages)]

    def pull_messages(self, ids: Iterable[str]) -> list[Any]:
        self.pulls += 1
        out = []
        for i in ids:
            if self.clock.now >= self.arrive[int(i)]:
                self.seen[i] = self.clock.now
                out.append(SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)))
        return out


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(grid_polling, "time", c)
    return c


@pytest.mark.parametrize("arrives_after", [0.01, 0.3, 5.0, 30.0])
def test_a_reply_is_seen_soon_after_it_arrives_with_few_pulls(clock: FakeClock, arrives_after: float) -> None:
    inner = FakeGrid(clock, [arrives_after])
    got = list(PromptGrid(cast(Grid, inner)).send_and_receive([cast(Message, object())], timeout=None))
    assert len(got) == 1
    late = inner.seen["0"] - arrives_after
    assert late <= max(grid_polling.FIRST_WAIT_S, grid_polling.LATE_SHARE * inner.seen["0"]) + 1e-9
    # A fixed 5 ms interval would pull arrives_after / 0.005 times (6,000 for a 30 s round).
    assert inner.pulls <= 140 + arrives_after / grid_polling.LONGEST_WAIT_S


def test_every_reply_is_collected_and_the_timeout_is_kept(clock: FakeClock) -> None:
    inner = FakeGrid(clock, [0.5, 2.0, 1e9])  # the third never answers
    messages = [cast(Message, object())] * 3
    got = list(PromptGrid(cast(Grid, inner)).send_and_receive(messages, timeout=10.0))
    assert sorted(m.metadata.reply_to_message_id for m in got) == ["0", "1"]
    assert clock.now == pytest.approx(10.0)  # gave up at the deadline, not after it
