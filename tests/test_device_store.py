"""The simulation's shared device store gives back exactly what a device prepared (issue 20)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedchurn.client.device_data import DeviceData
from fedchurn.shared.feature_spec import BASE_FEATURES
from fedchurn.simulations.device_store import DeviceStore, slot_bytes

CAPACITY = 9


def _device(rng: np.random.Generator, rows: int, evaluates: bool) -> DeviceData:
    return DeviceData(
        x=rng.normal(0, 50, (rows, BASE_FEATURES)).astype(np.float32),
        time=rng.integers(1, 15, rows),
        event=rng.random(rows) < 0.3,
        eval_x=rng.normal(0, 5, BASE_FEATURES).astype(np.float32) if evaluates else None,
        eval_time=int(rng.integers(1, 15)) if evaluates else 0,
        eval_event=bool(rng.random() < 0.5) if evaluates else False,
    )


def _same(a: DeviceData, b: DeviceData, keep: int) -> None:
    np.testing.assert_array_equal(a.x, b.x[len(b.x) - keep :])
    np.testing.assert_array_equal(a.time, b.time[len(b.time) - keep :])
    np.testing.assert_array_equal(a.event, b.event[len(b.event) - keep :])
    assert a.x.dtype == np.float32 and a.time.dtype == np.int64 and a.event.dtype == bool
    assert not a.x.flags.writeable  # a view of the bytes read, not a copy (decision 129)
    assert (a.eval_x is None) == (b.eval_x is None)
    if b.eval_x is not None:
        assert a.eval_x is not None
        np.testing.assert_array_equal(a.eval_x, b.eval_x)
        assert (a.eval_time, a.eval_event) == (b.eval_time, b.eval_event)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.lists(st.tuples(st.integers(0, 14), st.booleans()), min_size=1, max_size=8),
)
def test_a_stored_device_reads_back_as_prepared(
    tmp_path_factory: pytest.TempPathFactory, seed: int, shapes: list[tuple[int, bool]]
) -> None:
    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(seed)
    devices = {i * 3 + 1: _device(rng, rows, ev) for i, (rows, ev) in enumerate(shapes)}
    prepared: list[list[int]] = []

    def prepare(ds: list[int]) -> list[DeviceData]:
        prepared.append(ds)
        return [devices[d] for d in ds]

    store = DeviceStore(root, 40, CAPACITY)
    first = store.get(list(devices), prepare)
    again = DeviceStore(root, 40, CAPACITY).get(list(devices), prepare)  # another process: no re-prepare
    assert prepared == [list(devices)]
    for d, data in devices.items():
        keep = min(len(data.x), CAPACITY)  # a slot keeps the most recent `capacity` rows
        _same(first[d], data, keep)
        _same(again[d], data, keep)
    assert (root / "slots.bin").stat().st_size == 40 * slot_bytes(CAPACITY)
