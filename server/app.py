"""The Flower ServerApp: roll call, federated rounds (Flower's strategy loop), evaluation, records.

A thin shell: configuration is read once from Flower's run config, and the work is done by
`server.strategy` (sampling, aggregation), Flower's `Strategy.start` (the round loop) and
`server.run_output` (files).
"""

from __future__ import annotations

import time
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedchurn.client.flower_app import PARAMS_KEY
from fedchurn.server.run_output import RunOutput
from fedchurn.server.strategy import ChurnFedAvg, make_strategy
from fedchurn.shared.model_format import DEFAULT_SPEC, init_params
from fedchurn.shared.run_config import RunConfig, is_eval_device

TIMEOUT_S = 600.0

app = ServerApp()


def roll_call(grid: Grid, timeout: float = TIMEOUT_S) -> dict[int, int]:
    """Ask every node which device it holds: node id -> device index."""
    nodes = list(grid.get_node_ids())
    msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    roster: dict[int, int] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        if not reply.has_error():
            roster[reply.metadata.src_node_id] = int(reply.content.config_records["device"]["index"])  # type: ignore[arg-type]
    return roster


def _round_recorder(cfg: RunConfig, strategy: ChurnFedAvg, out: RunOutput | None, t0: float):  # type: ignore[no-untyped-def]
    def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0 or out is None:
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
            "protection": cfg.protection,
            "seconds": time.time() - s.started,
            "elapsed": time.time() - t0,
            "evaluation": s.evaluation,
        }
        out.record_round(record, arrays[PARAMS_KEY].numpy())
        return None

    return after_round


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flower(context.run_config)
    t0 = time.time()
    out = RunOutput(Path(cfg.out_dir)) if cfg.out_dir else None
    roster = roll_call(grid)
    train_nodes = [n for n, d in roster.items() if not is_eval_device(cfg.seed, d, cfg.eval_fraction)]
    eval_nodes = [n for n, d in roster.items() if is_eval_device(cfg.seed, d, cfg.eval_fraction)]
    log(INFO, "roll call: %d devices (%d training, %d held out)", len(roster), len(train_nodes), len(eval_nodes))
    strategy = make_strategy(cfg.strategy, server_lr=cfg.server_lr, train_nodes=train_nodes, eval_nodes=eval_nodes,
                             per_round=cfg.per_round, eval_per_round=cfg.eval_per_round, seed=cfg.seed,
                             horizon=cfg.horizon)
    initial = ArrayRecord({PARAMS_KEY: Array(init_params(cfg.seed, DEFAULT_SPEC))})
    before = strategy.evaluate_all(grid, initial, TIMEOUT_S)
    if out:
        out.write_json("federated.json", {"status": "running", "initial_evaluation": before,
                                          "devices": len(roster), "held_out": len(eval_nodes)})
    result = strategy.start(grid, initial, num_rounds=cfg.num_server_rounds, timeout=TIMEOUT_S,
                            train_config=ConfigRecord(), evaluate_config=ConfigRecord(),
                            evaluate_fn=_round_recorder(cfg, strategy, out, t0))
    final_arrays = result.arrays if result.arrays is not None else initial
    params = np.asarray(final_arrays[PARAMS_KEY].numpy(), dtype=np.float32)
    after = strategy.evaluate_all(grid, final_arrays, TIMEOUT_S)
    log(INFO, "evaluation before: %s", before)
    log(INFO, "evaluation after:  %s", after)
    if out:
        out.write_model(params, version=cfg.num_server_rounds)
        out.write_json("federated.json", {
            "status": "finished", "devices": len(roster), "held_out": len(eval_nodes),
            "initial_evaluation": before, "final_evaluation": after, "rounds": out.rounds,
            "wall_seconds": time.time() - t0,
        })
