"""A simulation shard's batch paths are the phone's paths with a batch axis (issue 20, item 3).

`generate_devices` (a shard generating its devices on first use) gives each device exactly
`generate_device`'s history, and `prepare_devices` (a shard or a SuperNode preparing many devices)
gives each device exactly `prepare_device`'s examples, for any set of devices, in any order,
including devices without a single usable day.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedchurn.client import device_data
from fedchurn.client.aggregates import daily_aggregates_batch
from fedchurn.client.device_data import SPAN_WASTE, DeviceData, prepare_device, prepare_devices, span_groups
from fedchurn.shared.feature_spec import N_FEATURES
from fedchurn.shared.protocol import Protocol
from fedchurn.simulations.population import generate_device, generate_devices
from fedchurn.simulations.scenario import load_scenario

SCENARIO = load_scenario("default")


def _same(a: DeviceData, b: DeviceData) -> None:
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.time, b.time)
    np.testing.assert_array_equal(a.event, b.event)
    assert (a.eval_x is None) == (b.eval_x is None)
    if a.eval_x is not None and b.eval_x is not None:
        np.testing.assert_array_equal(a.eval_x, b.eval_x)
        assert (a.eval_time, a.eval_event) == (b.eval_time, b.eval_event)


@settings(max_examples=8, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.lists(st.integers(0, 5_000), min_size=1, max_size=12, unique=True),
    st.sampled_from([20, 45, 120]),
    st.sampled_from([1, 3, 250]),
)
def test_a_batch_of_devices_is_each_device_alone(
    seed: int, devices: list[int], days: int, chunk: int
) -> None:
    events, rows, starts, todays = generate_devices(seed, np.asarray(devices), SCENARIO, days)
    batch = prepare_devices(events, rows, starts, todays, chunk=chunk)
    assert len(batch) == len(devices)
    for j, d in enumerate(devices):
        alone = generate_device(seed, d, SCENARIO, days)
        mine = events[rows == j]
        np.testing.assert_array_equal(mine, alone.events)
        assert (starts[j], todays[j]) == (alone.truth["start_day"], alone.truth["today"])
        _same(batch[j], prepare_device(alone.events, int(starts[j]), int(todays[j])))
    # 20 days cannot label a single day (horizon + silence = 28): every device has no example.
    if days == 20:
        assert all(len(b.x) == 0 and b.eval_x is None for b in batch)


@settings(max_examples=6, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.lists(st.integers(0, 5_000), min_size=1, max_size=8, unique=True),
    st.sampled_from([1, 3, 250]),
    st.sampled_from([None, 30]),
    st.integers(40, 100),
)
def test_the_cutoff_protocol_batch_is_each_device_alone(
    seed: int, devices: list[int], chunk: int, population: int | None, cutoff_at: int
) -> None:
    """Under the cutoff protocol with the extended features, a chunk of devices with different
    first days is each device prepared alone (its own first day and the shared today)."""
    events, rows, starts, todays = generate_devices(seed, np.asarray(devices), SCENARIO, 150)
    start = int(np.min(starts))
    proto = Protocol(
        horizon=28,
        activity=("sessions",),
        cutoff_day=start + cutoff_at,
        population_days=population,
        n_features=N_FEATURES,
    )
    batch = prepare_devices(events, rows, starts, todays, proto, chunk=chunk)
    for j in range(len(devices)):
        alone = prepare_device(events[rows == j], int(starts[j]), int(todays[j]), proto)
        _same(batch[j], alone)
        assert batch[j].x.shape[1] == N_FEATURES and set(np.unique(batch[j].time)) <= {1}


def test_a_device_whose_log_ends_long_before_the_cutoff_keeps_its_own_rows() -> None:
    """A device whose last day is more than a horizon before the cutoff (it left the log) is
    prepared from its own days: training rows up to its last labelled day, no evaluation row.
    Found by CI: such a device indexed past its own days (IndexError)."""
    events, _, starts, todays = generate_devices(7, np.asarray([11]), SCENARIO, 150)
    first, today = int(starts[0]), int(todays[0])
    cutoff = today + 40
    proto = Protocol(horizon=28, activity=("sessions",), cutoff_day=cutoff, n_features=N_FEATURES)
    data = prepare_device(events, first, today, proto)
    assert data.eval_x is None
    # Rows sit on the cutoff's 7-day grid within the device's own days; every grid day whose
    # 28-day outcome lies inside the log is one (a later one counts if activity settles it).
    grid = [d for d in range(cutoff - 28, first - 1, -7) if d <= today]
    settled = [d for d in grid if d <= today - 28]
    assert 0 < len(settled) <= len(data.x) <= len(grid)


def test_one_old_account_costs_its_own_days_not_every_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 12: features were built over one range of days for a whole batch, from its oldest
    account's first day, so one account (or a clock reset to 1970) made every listed device cost
    its age in time and memory, and a node's reply time showed that age. The batch's work now
    follows the days each device owns (`SPAN_WASTE`), and each device is still prepared exactly
    as alone."""
    events, rows, starts, todays = generate_devices(5, np.arange(40), SCENARIO, 120)
    starts = np.asarray(starts).copy()
    starts[17] -= 3_650  # one account ten years older than the others
    cells: list[int] = []
    real = daily_aggregates_batch

    def counted(ev: np.ndarray, dev: np.ndarray, n: int, start: int, n_days: int) -> np.ndarray:
        cells.append(n * n_days)
        return real(ev, dev, n, start, n_days)

    monkeypatch.setattr(device_data, "daily_aggregates_batch", counted)
    batch = prepare_devices(events, rows, starts, todays)
    owned = int(np.sum(np.asarray(todays) - starts + 1))
    assert sum(cells) <= device_data.SPAN_WASTE * owned, (sum(cells), owned)
    monkeypatch.setattr(device_data, "daily_aggregates_batch", real)
    for j in (0, 17, 39):
        _same(batch[j], prepare_device(events[rows == j], int(starts[j]), int(todays[j])))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(-5_000, 5_000), st.integers(0, 400)), min_size=1, max_size=60))
def test_span_groups_cover_every_device_once_within_the_bound(spans: list[tuple[int, int]]) -> None:
    first = np.array([f for f, _ in spans], dtype=np.int64)
    last = first + np.array([d for _, d in spans], dtype=np.int64)
    groups = span_groups(first, last)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(spans)))
    for g in groups:
        cost = len(g) * (int(last[g].max()) - int(first[g].min()) + 1)
        assert cost <= SPAN_WASTE * int(np.sum(last[g] - first[g] + 1))
