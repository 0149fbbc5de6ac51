"""The Flower ServerApp: federated rounds (Flower's strategy loop), evaluation, records.

A thin shell: configuration is read once from Flower's run config, and the work is done by
`server.strategy` (sampling, aggregation), Flower's `Strategy.start` (the round loop) and
`server.run_output` (files).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedchurn.client.flower_app import PARAMS_KEY
from fedchurn.server.run_audit import RunAudit
from fedchurn.server.run_output import RunOutput
from fedchurn.server.strategy import ChurnFedAvg, make_strategy
from fedchurn.shared.model_format import DEFAULT_SPEC, init_params
from fedchurn.shared.run_config import RunConfig

TIMEOUT_S = 600.0

app = ServerApp()


def round_recorder(
    cfg: RunConfig, strategy: ChurnFedAvg, out: RunOutput | None, audit: RunAudit, t0: float
) -> Callable[[int, ArrayRecord], MetricRecord | None]:
    """Flower calls this after every round: write the round's record and checkpoint."""

    def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        s = strategy.stats
        record = {
            "round": server_round,
            "sampled": s.sampled,
            "received": s.received,
            "trained": s.trained,
            "refused": s.refused,
            "bytes_received": s.bytes_received,
            "bytes_per_device": s.bytes_received / max(s.received, 1),
            "upload_bytes_per_device": s.upload_bytes / max(s.received, 1) if s.upload_bytes else None,
            "dp_noise_std": s.noise_std,
            "epsilon": s.epsilon,
            "protection": cfg.protection,
            "seconds": time.time() - s.started,
            "elapsed": time.time() - t0,
            "evaluation": s.evaluation,
        }
        if out is not None:
            out.record_round(record, arrays[PARAMS_KEY].numpy())
        audit.round(record, s.started, time.time())
        return None

    return after_round


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flower(context.run_config)
    t0 = time.time()
    out = RunOutput(Path(cfg.out_dir)) if cfg.out_dir else None
    nodes = list(grid.get_node_ids())
    strategy = make_strategy(cfg, nodes, out.dir if out else None)
    secure = strategy.secure
    audit = RunAudit(
        cfg,
        secure.train_params if secure else None,
        secure.dp_record() if secure else {"accountant": "none", "delta": cfg.delta},
    )
    log(INFO, "%d SuperNodes, sampling mode %s, %d devices", len(nodes), cfg.sampling, cfg.devices)
    initial = ArrayRecord({PARAMS_KEY: Array(init_params(cfg.seed, DEFAULT_SPEC))})
    before = strategy.evaluate_all(grid, initial, 0, TIMEOUT_S)
    if out:
        out.write_json("federated.json", {"status": "running", "initial_evaluation": before})
    result = strategy.start(
        grid,
        initial,
        num_rounds=cfg.num_server_rounds,
        timeout=TIMEOUT_S,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=round_recorder(cfg, strategy, out, audit, t0),
    )
    final_arrays = result.arrays if result.arrays is not None else initial
    params = np.asarray(final_arrays[PARAMS_KEY].numpy(), dtype=np.float32)
    after = strategy.evaluate_all(grid, final_arrays, cfg.num_server_rounds + 1, TIMEOUT_S)
    log(INFO, "evaluation before: %s", {k: v for k, v in before.items() if not isinstance(v, list)})
    log(INFO, "evaluation after:  %s", {k: v for k, v in after.items() if not isinstance(v, list)})
    audit.finish(cfg, after, params)
    if out:
        out.write_model(params, version=cfg.num_server_rounds)
        out.write_json(
            "federated.json",
            {
                "status": "finished",
                "supernodes": len(nodes),
                "initial_evaluation": before,
                "final_evaluation": after,
                "rounds": out.rounds,
                "wall_seconds": time.time() - t0,
            },
        )
