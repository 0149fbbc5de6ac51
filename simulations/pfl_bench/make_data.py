"""Synthetic DATA_DIR for testing run_pfl.py without fedchurn (fedchurn's bench writes the real one).

Usage: python make_data.py DATA_DIR [--devices 10000] [--rounds 20] [--per-round 300 1000]
Writes devices.npz (x, time, event, offsets, input_scale, init_params) and config.json.
Rows per device: 0..93, mean ~67; features >= 0; labels random. Needs only numpy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

N_FEATURES, HIDDEN, HORIZON = 127, 16, 14


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--per-round", type=int, nargs="+", default=[300, 1000])
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=120)
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)

    # ~5% of devices without rows, the rest up to 93 rows skewed high (mean ~67 overall).
    rows = np.rint(93 * rng.beta(3.0, 1.0, a.devices)).astype(np.int64)
    rows[rng.random(a.devices) < 0.05] = 0
    offsets = np.zeros(a.devices + 1, dtype=np.int64)
    np.cumsum(rows, out=offsets[1:])
    n = int(offsets[-1])

    scale = np.ones(N_FEATURES, dtype=np.float32)
    scale[:20] = 28.0
    scale[20:30] = 100.0
    x = (rng.random((n, N_FEATURES), dtype=np.float32) * scale * 1.5).astype(np.float32)
    x[:, 60:] = (x[:, 60:] > 0.7 * scale[60:]).astype(np.float32)  # some 0/1 flags
    time = rng.integers(1, HORIZON + 1, n).astype(np.int64)
    event = rng.random(n) < 0.3

    w1 = rng.normal(0, np.sqrt(2.0 / N_FEATURES), (HIDDEN, N_FEATURES))
    w2 = rng.normal(0, np.sqrt(1.0 / HIDDEN), (HORIZON, HIDDEN))
    init = np.concatenate([w1.ravel(), np.zeros(HIDDEN), w2.ravel(), np.full(HORIZON, -4.0)]).astype(
        np.float32
    )

    a.data_dir.mkdir(parents=True, exist_ok=True)
    np.savez(
        a.data_dir / "devices.npz",
        x=x,
        time=time,
        event=event,
        offsets=offsets,
        input_scale=scale,
        init_params=init,
    )
    cfg = {
        "rounds": a.rounds,
        "per_round": a.per_round,
        "local_epochs": a.local_epochs,
        "batch_size": a.batch_size,
        "lr": a.lr,
        "seed": a.seed,
    }
    (a.data_dir / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    print(
        f"{a.devices} devices, {n} rows (mean {rows.mean():.1f}, max {rows.max()}, "
        f"{int((rows == 0).sum())} empty) -> {a.data_dir}"
    )


if __name__ == "__main__":
    main()
