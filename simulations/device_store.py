"""Where a simulation's devices keep their prepared data: memory-mapped files shared by the run's
worker processes.

A simulation node is a shard of the population, but Flower's simulation engine hands each message
to whichever Ray actor is idle, so the same node is played by different processes from round to
round. Keeping a node's devices in one process's memory would make every process prepare (and
hold) every device. Instead a run has one store on disk, like the phones' own storage: a device is
generated and prepared on first use (by whichever process plays its node) and written to its slot;
every process maps the same files, so the operating system keeps one copy in its page cache, and a
device untouched by the run costs nothing (the files are sparse).

Layout of `<root>/<identity>/` (little-endian, fixed slots of `capacity` rows per device):
`x.f32` (devices × capacity × F), `time.i32`, `event.u8` (devices × capacity), `rows.i32`,
`eval_x.f32` (devices × F), `eval.i32` (devices × 2: time, event), `ready.u8` (devices). A device's
slot is written before its `ready` byte; two processes preparing the same device write the same
bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fedchurn.client.device_data import DeviceData
from fedchurn.shared.feature_spec import N_FEATURES

__all__ = ["DeviceStore"]

Prepare = Callable[[list[int]], list[DeviceData]]


def _mapped(path: Path, dtype: str, shape: tuple[int, ...]) -> np.memmap:
    """A shared read-write mapping of `path`, created sparse (all zeros) if missing."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return np.memmap(path, dtype=dtype, mode="r+", shape=shape)


class DeviceStore:
    def __init__(self, root: Path, n_devices: int, capacity: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.n, self.capacity = n_devices, capacity
        self.x = _mapped(root / "x.f32", "<f4", (n_devices, capacity, N_FEATURES))
        self.time = _mapped(root / "time.i32", "<i4", (n_devices, capacity))
        self.event = _mapped(root / "event.u8", "u1", (n_devices, capacity))
        self.rows = _mapped(root / "rows.i32", "<i4", (n_devices,))
        self.eval_x = _mapped(root / "eval_x.f32", "<f4", (n_devices, N_FEATURES))
        self.eval = _mapped(root / "eval.i32", "<i4", (n_devices, 2))
        self.ready = _mapped(root / "ready.u8", "u1", (n_devices,))

    def get(self, devices: Sequence[int], prepare: Prepare) -> dict[int, DeviceData]:
        """The devices' data, preparing (with `prepare`) and storing those not stored yet."""
        missing = [d for d in devices if not self.ready[d]]
        if missing:
            for d, data in zip(missing, prepare(missing), strict=True):
                self._put(d, data)
        return {d: self._read(d) for d in devices}

    def _put(self, d: int, data: DeviceData) -> None:
        n = min(len(data.x), self.capacity)
        self.x[d, :n] = data.x[-n:] if n else data.x[:0]
        self.time[d, :n] = data.time[-n:] if n else data.time[:0]
        self.event[d, :n] = data.event[-n:] if n else data.event[:0]
        self.rows[d] = n
        if data.eval_x is None:
            self.eval[d] = (-1, 0)
        else:
            self.eval_x[d] = data.eval_x
            self.eval[d] = (data.eval_time, int(data.eval_event))
        self.ready[d] = 1  # last: a reader that sees it sees the whole slot

    def _read(self, d: int) -> DeviceData:
        n = int(self.rows[d])
        t, e = (int(v) for v in self.eval[d])
        return DeviceData(
            x=np.asarray(self.x[d, :n]),
            time=np.asarray(self.time[d, :n], dtype=np.int64),
            event=np.asarray(self.event[d, :n], dtype=bool),
            eval_x=None if t < 0 else np.asarray(self.eval_x[d]),
            eval_time=max(t, 0),
            eval_event=bool(e),
        )
