"""Where a simulation's devices keep their prepared data: one file of fixed slots, shared by the
run's worker processes.

A simulation node is a shard of the population, but Flower's simulation engine hands each message
to whichever Ray actor is idle, so the same node is played by different processes from round to
round. Keeping a node's devices in one process's memory would make every process prepare (and
hold) every device. Instead a run has one store on disk, like the phones' own storage: a device is
generated and prepared on first use (by whichever process plays its node) and written to its slot;
every process reads the same file. Slots are read and written with `os.pread` / `os.pwrite`, not
mapped: the operating system keeps the file in its page cache as memory allows, and no process's
memory grows with the devices it has touched (a 100,000-device run costs its processes what a
10,000-device run does). Slots of devices the run never touches cost nothing (the file is sparse).

Layout of `<root>/slots.bin`: one slot of `slot_bytes(capacity)` bytes per device, little-endian:
a 16-byte head (ready u8, 3 pad bytes, rows i32, evaluation time i32 (-1: no evaluation day),
evaluation event i32), the evaluation row (F f32), `capacity` times (i32), `capacity` events (u8,
padded to 4 bytes), then `capacity` feature rows (F f32 each). A slot's data is written before its
ready byte; two processes preparing the same device write the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fedchurn.client.device_data import DeviceData
from fedchurn.shared.feature_spec import BASE_FEATURES

__all__ = ["DeviceStore", "slot_bytes"]

Prepare = Callable[[list[int]], list[DeviceData]]
_HEAD = np.dtype(
    [("ready", "u1"), ("pad", "u1", 3), ("rows", "<i4"), ("eval_time", "<i4"), ("eval_event", "<i4")]
)


def _fixed_bytes(capacity: int, n_features: int) -> int:
    """Head, evaluation row, times and (padded) events: what every read fetches."""
    return _HEAD.itemsize + 4 * n_features + 4 * capacity + -(-capacity // 4) * 4


def slot_bytes(capacity: int, n_features: int = BASE_FEATURES) -> int:
    return _fixed_bytes(capacity, n_features) + capacity * 4 * n_features


class DeviceStore:
    def __init__(self, root: Path, n_devices: int, capacity: int, n_features: int = BASE_FEATURES) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.n, self.capacity, self.n_features = n_devices, capacity, n_features
        self.row = 4 * n_features
        self.slot, self.fixed = slot_bytes(capacity, n_features), _fixed_bytes(capacity, n_features)
        self.path = root / "slots.bin"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self.fd).st_size < n_devices * self.slot:
            os.ftruncate(self.fd, n_devices * self.slot)  # sparse: untouched slots take no disk

    def close(self) -> None:
        os.close(self.fd)

    def get(self, devices: Sequence[int], prepare: Prepare) -> dict[int, DeviceData]:
        """The devices' data, preparing (with `prepare`) and storing those not stored yet."""
        heads = {d: os.pread(self.fd, self.fixed, d * self.slot) for d in devices}
        missing = [d for d, h in heads.items() if h[0] != 1]
        out: dict[int, DeviceData] = {}
        if missing:
            for d, data in zip(missing, prepare(missing), strict=True):
                out[d] = self._put(d, data)
        for d in devices:
            if d not in out:
                out[d] = self._read(d, heads[d])
        return out

    def _put(self, d: int, data: DeviceData) -> DeviceData:
        """Write a device's slot (ready byte last); returns what a later read gives back."""
        cap, n = self.capacity, min(len(data.x), self.capacity)
        head = np.zeros(1, _HEAD)
        head["rows"] = n
        head["eval_time"] = -1 if data.eval_x is None else data.eval_time
        head["eval_event"] = int(data.eval_event)
        eval_x = np.zeros(self.n_features, "<f4") if data.eval_x is None else np.asarray(data.eval_x, "<f4")
        times = np.zeros(cap, "<i4")
        events = np.zeros(-(-cap // 4) * 4, "u1")
        times[:n], events[:n] = data.time[len(data.time) - n :], data.event[len(data.event) - n :]
        x = np.ascontiguousarray(data.x[len(data.x) - n :], dtype="<f4")
        base = d * self.slot
        os.pwrite(self.fd, x.tobytes(), base + self.fixed)
        os.pwrite(
            self.fd, head.tobytes()[1:] + eval_x.tobytes() + times.tobytes() + events.tobytes(), base + 1
        )
        os.pwrite(self.fd, b"\x01", base)  # last: a reader that sees it sees the whole slot
        return self._read(d, os.pread(self.fd, self.fixed, base))

    def _read(self, d: int, fixed: bytes) -> DeviceData:
        head = np.frombuffer(fixed, _HEAD, count=1)[0]
        n, t = int(head["rows"]), int(head["eval_time"])
        at = _HEAD.itemsize
        eval_x = np.frombuffer(fixed, "<f4", self.n_features, at).astype(np.float32)
        at += self.row
        times = np.frombuffer(fixed, "<i4", n, at).astype(np.int64)
        at += 4 * self.capacity
        events = np.frombuffer(fixed, "u1", n, at).astype(bool)
        raw = os.pread(self.fd, n * self.row, d * self.slot + self.fixed) if n else b""
        # a read-only view of the bytes just read, not a copy: copying the rows was about half
        # of a read's time (decision 129), and nothing writes to a device's rows
        x = np.frombuffer(raw, "<f4").reshape(n, self.n_features)
        return DeviceData(
            x=x,
            time=times,
            event=events,
            eval_x=None if t < 0 else eval_x,
            eval_time=max(t, 0),
            eval_event=bool(head["eval_event"]),
        )
