"""The Flower ServerApp: federated rounds (Flower's strategy loop), evaluation, records.

A thin shell: the run configuration is read once from Flower's run config (public: every
SuperNode receives it), the aggregator's own settings (databases, key holder, output folder) from
its private settings file (`server.settings`), and the work is done by `server.strategy` (sampling,
aggregation), Flower's `Strategy.start` (the round loop) and `server.run_output` (files). With a
checkpoint database (`state_db`) every finished round is checkpointed (`server.checkpoint`) and a
restarted ServerApp resumes after the last finished round.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedchurn.server.audit import RunFinishedError
from fedchurn.server.checkpoint import Checkpoint, CheckpointStore
from fedchurn.server.grid_polling import PromptGrid
from fedchurn.server.round_report import RoundReport
from fedchurn.server.run_audit import RunAudit
from fedchurn.server.run_output import RunOutput
from fedchurn.server.secure_rounds import KeyHolderClient, connect_keyholder
from fedchurn.server.settings import AggregatorSettings, redact_url
from fedchurn.server.strategy import ChurnFedAvg, make_strategy
from fedchurn.shared.messages import PARAMS_KEY, MessageError, RosterReply, roster_query
from fedchurn.shared.model_format import init_params
from fedchurn.shared.run_config import RunConfig

app = ServerApp()
NODE_SETTLE_S = 1.0  # the node count must stay the same this long before the run starts


def run_identity(cfg: RunConfig) -> str:
    """The name a restarted run resumes under: `run-name`, else a hash of what defines the run.

    The timeout is left out, so the same run restarted with another timeout still resumes."""
    if cfg.run_name:
        return cfg.run_name
    skip = {"round_timeout", "run_name"}
    doc = json.dumps({k: v for k, v in asdict(cfg).items() if k not in skip}, sort_keys=True)
    return "cfg-" + hashlib.sha256(doc.encode()).hexdigest()[:24]


def node_ids(grid: Grid, timeout: float) -> list[int]:
    """The nodes of the federation: waits (up to `timeout`) until at least one has registered and
    the count has been steady for a moment (a simulation registers its nodes as the run starts)."""
    deadline = time.monotonic() + timeout
    seen: list[int] = []
    steady_since = time.monotonic()
    while time.monotonic() < deadline:
        now = sorted(grid.get_node_ids())
        if now != seen:
            seen, steady_since = now, time.monotonic()
        elif seen and time.monotonic() - steady_since > NODE_SETTLE_S:
            break
        time.sleep(0.05)
    return seen


def discover_devices(grid: Grid, nodes: list[int], timeout: float) -> list[tuple[int, int]]:
    """Ask every node which device indices it serves (one query message each): a simulation shard
    lists its share of the population, a SuperNode the pseudonyms of its stores."""
    roster: dict[int, int] = {}
    for reply in grid.send_and_receive([roster_query(n) for n in nodes], timeout=timeout):
        node = reply.metadata.src_node_id
        try:
            devices = RosterReply.from_message(reply).devices
        except MessageError as e:
            log(WARNING, "node %d did not list its devices: %s", node, e)
            continue
        for d in devices:
            if d in roster:
                log(WARNING, "device %d is served by nodes %d and %d; using the first", d, roster[d], node)
                continue
            roster[d] = node
    return sorted((n, d) for d, n in roster.items())


class Recovery:
    """Checkpoints of one run identity in the aggregator's database (`state-db`)."""

    def __init__(self, cfg: RunConfig, state_db: str) -> None:
        self.store = CheckpointStore(state_db)
        self.name = run_identity(cfg)
        self.last = self.store.load(self.name)
        if self.last is not None and self.last.status == "finished":
            raise RuntimeError(
                f"run {self.name!r} already finished (state-db {redact_url(state_db)}); "
                "set run-name to start another"
            )

    def attach(self, strategy: ChurnFedAvg) -> None:
        """Fresh round ids for every attempt; mark an attempt before it reaches the key holder."""
        strategy.attempts = lambda r, kind: self.store.begin_attempt(self.name, r, kind)
        strategy.on_contact = lambda: self.store.mark(strategy.round_id, "contacted")

    def resume(self, strategy: ChurnFedAvg) -> int:
        """Restore the strategy; charge the accountant every training attempt that reached the key
        holder (finished rounds and crashed ones). Returns the last finished round."""
        ck = self.last
        assert ck is not None
        strategy.done_rounds = ck.round
        strategy.restore(ck.rng_state, ck.optimizer)
        charged = self.store.charged_rounds(self.name)
        secure = strategy.secure
        if secure is not None and secure.accountant.enabled and charged:
            secure.accountant.step(charged)
        for a in self.store.aborted_attempts(self.name):
            log(
                WARNING,
                "attempt %d at round %d (%s) was interrupted: %s",
                a["id"],
                a["round"],
                a["kind"],
                a["status"],
            )
        log(
            INFO,
            "resuming run %s after round %d (%d training attempts charged)",
            self.name,
            ck.round,
            charged,
        )
        return ck.round

    def charge_before_first_checkpoint(self, strategy: ChurnFedAvg) -> int:
        """A process that crashed before its first checkpoint may have had its feature-mean round
        answered by the key holder: charge such attempts, as `resume` charges crashed rounds."""
        earlier = self.store.charged_rounds(self.name)
        secure = strategy.secure
        if secure is not None and secure.accountant.enabled and earlier:
            secure.accountant.step(earlier)
        return earlier

    def save(self, ck: Checkpoint, attempt: int | None) -> None:
        self.store.save(ck, attempt)


def round_recorder(
    cfg: RunConfig, strategy: ChurnFedAvg, on_round: Callable[[RoundReport, ArrayRecord], None], t0: float
) -> Callable[[int, ArrayRecord], MetricRecord | None]:
    """Flower calls this after every round: the strategy's tally becomes the round's one record,
    and `on_round` hands it to the checkpoint, the outputs and the audit log."""

    def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round <= strategy.done_rounds:
            return None
        on_round(strategy.stats.report(server_round, cfg.protection, t0), arrays)
        return None

    return after_round


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flower(context.run_config)
    cfg.check()  # a value no run can use stops the aggregator here, naming it, before any work
    settings = AggregatorSettings.from_env()
    t0 = time.time()
    timeout = cfg.round_timeout
    results = settings.results_dir(run_identity(cfg))
    out = RunOutput(results) if results is not None else None
    if out:
        (out.dir / "aggregator.pid").write_text(f"{os.getpid()}\n")
    grid = PromptGrid(grid)
    nodes = node_ids(grid, timeout)
    recovery = Recovery(cfg, settings.state_db) if settings.state_db else None
    last = recovery.last if recovery else None
    roster = last.roster if last and last.roster is not None else discover_devices(grid, nodes, timeout)
    log(INFO, "%d devices on %d nodes", len(roster), len(nodes))
    keyholder: KeyHolderClient | None = None
    if settings.keyholder_url:
        keyholder = connect_keyholder(settings, timeout)
    elif cfg.scheme.private and not settings.keyholder_key_file:
        raise RuntimeError(
            "no key holder: set keyholder_url (a key holder service) or keyholder_key_file (an in-process "
            "key holder provisioned with KeyHolder.provision) in the aggregator settings; devices trust "
            "only the key holder pinned in their own configuration"
        )
    strategy = make_strategy(
        cfg,
        roster,
        keyholder,
        Path(settings.keyholder_key_file) if settings.keyholder_key_file else None,
        Path(settings.keyholder_state) if settings.keyholder_state else None,
    )
    secure = strategy.secure
    audit = RunAudit(
        cfg,
        settings.audit_db,
        secure.train_params if secure.keyholder is not None else None,
        secure.dp_record() if secure.keyholder is not None else {"accountant": "none", "delta": cfg.delta},
        run_id=last.audit_run_id if last else None,
    )
    records: list[RoundReport] = []
    feature_mean: dict[str, Any] | None = None  # centre-features: what the first round measured
    if recovery is not None:
        recovery.attach(strategy)
    if out is not None:
        strategy.on_round_start = lambda r: out.progress(r, "training")
    if recovery is not None and last is not None:
        recovery.resume(strategy)
        if last.input_offset is not None:
            strategy.offset = np.asarray(last.input_offset, dtype=np.float64)
            feature_mean = {"devices": None, "offset": last.input_offset}
        initial = ArrayRecord({PARAMS_KEY: Array(last.model.astype(np.float32))})
        before = last.initial_evaluation or {}
        records = [RoundReport.from_json(r) for r in last.records]
        for report in records:  # rounds checkpointed but maybe not yet in the audit log
            audit.round(report)
        if out:
            out.rounds = [r.to_json() for r in records]
    else:
        initial = ArrayRecord({PARAMS_KEY: Array(init_params(cfg.seed, cfg.model_spec()))})
        if recovery is not None:
            recovery.charge_before_first_checkpoint(strategy)
        if cfg.centre_features:
            offset = strategy.measure_feature_mean(grid, timeout)
            if offset is None:
                log(WARNING, "no cohort of the feature-mean round was unmasked; training uncentred")
                strategy.stats.skip_reason = (
                    "feature mean not measured: no cohort was unmasked; training uncentred"
                )
            audit.round(strategy.stats.report(0, cfg.protection, t0, feature_mean=True))
            if recovery is not None:
                recovery.store.mark(strategy.round_id, "finished")
            feature_mean = {
                "devices": strategy.stats.trained,
                "offset": None if offset is None else [float(v) for v in offset],
            }
        # No evaluation before training: each held-out device evaluates once per run (so that no
        # two releases can be differenced), and the untrained model's score says nothing.
        before = {}
    if out:
        running = {"status": "running", "initial_evaluation": before, "feature_mean": feature_mean}
        out.write_json("federated.json", running)

    def snapshot(server_round: int, model: np.ndarray, recs: list[RoundReport]) -> Checkpoint:
        """The model as the strategy keeps it (centred with centre-features) and everything else."""
        assert recovery is not None
        rng, optimizer = strategy.state()
        offset = None if strategy.offset is None else [float(v) for v in strategy.offset]
        return Checkpoint(
            recovery.name,
            server_round,
            model,
            audit.run_id,
            rng,
            optimizer,
            [r.to_json() for r in recs],
            before,
            roster,
            input_offset=offset,
        )

    def on_round(report: RoundReport, arrays: ArrayRecord) -> None:
        """Every record of a finished round, from the one report: the checkpoint first (a crash
        after it replays the rest on restart), then the outputs, then the audit log."""
        records.append(report)
        if recovery is not None:
            # The model as the strategy keeps it (centred with centre-features).
            recovery.save(snapshot(report.round, arrays[PARAMS_KEY].numpy(), records), strategy.round_id)
        if out is not None:
            out.record_round(report, strategy.exported(arrays)[PARAMS_KEY].numpy())  # as published
        audit.round(report)
        if settings.crash_after_round and report.round == int(settings.crash_after_round):
            log(WARNING, "crash drill (crash_after_round): the aggregator dies after round %d", report.round)
            os.kill(os.getpid(), signal.SIGKILL)

    if recovery is not None and last is None:
        recovery.save(snapshot(0, initial[PARAMS_KEY].numpy(), []), None)
    result = strategy.start(
        grid,
        initial,
        num_rounds=cfg.num_server_rounds,
        timeout=timeout,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=round_recorder(cfg, strategy, on_round, t0),
    )
    # Every round skipped (no cohort reached k): Flower's result holds no arrays; the model is unchanged.
    final_arrays = result.arrays if result.arrays is not None and PARAMS_KEY in result.arrays else initial
    params = np.asarray(strategy.exported(final_arrays)[PARAMS_KEY].numpy(), dtype=np.float32)
    after = strategy.evaluate_all(grid, final_arrays, cfg.num_server_rounds + 1, timeout)
    if recovery is not None:
        recovery.store.mark(strategy.round_id, "finished")
    log(INFO, "evaluation after:  %s", {k: v for k, v in after.items() if not isinstance(v, list)})
    with contextlib.suppress(RunFinishedError):  # a restart after the audit was closed
        audit.finish(cfg, after, params)
    if recovery is not None:
        done = snapshot(cfg.num_server_rounds, final_arrays[PARAMS_KEY].numpy(), records)
        done.status = "finished"
        recovery.save(done, None)
    if out:
        out.write_model(params, version=cfg.num_server_rounds, spec=cfg.model_spec())
        out.write_json(
            "federated.json",
            {
                "status": "finished",
                "supernodes": len(nodes),
                "initial_evaluation": before,
                "final_evaluation": after,
                "feature_mean": feature_mean,
                "privacy": secure.privacy_report(cfg.num_server_rounds),
                "rounds": out.rounds,
                "wall_seconds": time.time() - t0,
            },
        )
