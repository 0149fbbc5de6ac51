"""Writes a federated run into the audit database the transparency API serves.

One record per run (configuration, protection, DP settings, model) and one per round; a round
is recorded once (the store refuses a second write), and the run is closed with the final
evaluation and the model card.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from fedchurn.server.audit import AuditStore, RoundAlreadyRecordedError
from fedchurn.shared.catalogue import CATEGORY_IDS
from fedchurn.shared.feature_spec import FEATURES
from fedchurn.shared.model_format import DEFAULT_SPEC, HIGH_RISK, HORIZON_DAYS, ModelSpec
from fedchurn.shared.protection import MODE_LABELS, PARTY_VIEWS, ProtectionParams
from fedchurn.shared.run_config import RunConfig

if TYPE_CHECKING:
    from fedchurn.server.strategy import RoundStats

LOGIC = (
    "On the device, 127 features summarise the last 1-28 days of each behaviour category (counts, "
    "trends, days since last use), an activity index against the user's own baseline, segment signals "
    "(discounts, content, friends, carts) and static context. A small neural network turns them into "
    f"the probability that the user stops using the app on each of the next {HORIZON_DAYS} days; the "
    f"churn risk is the chance of stopping within {HORIZON_DAYS} days, shown as a 0-100 score, and "
    f"users at {HIGH_RISK:.2f} or above are in the high-risk tier. The score never leaves the device."
)


def _views(party: str) -> str:
    for v in PARTY_VIEWS:
        if v.party == party:
            return "; ".join((*v.learns,))
    return ""


_CLIENT_ERROR = re.compile(r"^client error: (?:<class '(?:[\w.]*\.)?(\w+)'>|(\w+)(?::|$))")


def public_reason(reason: str) -> str:
    """A refusal reason fit for the public audit log: a device's own error message may carry its
    index or other details, so only the error's class name is kept ("client error: AlreadyEvaluatedError")."""
    if not reason.startswith("client error"):
        return reason
    m = _CLIENT_ERROR.match(reason)
    name = (m.group(1) or m.group(2)) if m else None
    return f"client error: {name}" if name else "client error"


def protection_record(cfg: RunConfig, params: ProtectionParams | None) -> dict[str, Any]:
    if params is None:
        return {
            "mode": "plaintext",
            "params": {"label": MODE_LABELS["plaintext"]},
            "upload_bytes": 4 * cfg.model_spec().n_params,
            "aggregator_learns": "every device's new model parameters, in the clear (baseline mode)",
            "keyholder_learns": "nothing (no key holder in plaintext mode)",
        }
    upload = params.upload_bytes(cfg.model_spec().n_params) if params.scheme.ring else 0
    return {
        "mode": params.mode,
        "params": params.to_dict(),
        "upload_bytes": upload,
        "aggregator_learns": _views("aggregator"),
        "keyholder_learns": _views("key_holder"),
    }


def feature_group_importance(params_vector: Any, spec: ModelSpec = DEFAULT_SPEC) -> dict[str, float]:
    """Share of first-layer weight magnitude per source category: which data drive the score."""
    import numpy as np

    from fedchurn.shared.model_format import unflatten

    w1 = unflatten(np.asarray(params_vector), spec)[0]
    per_feature = np.abs(w1).sum(axis=0) / spec.input_scale
    out = dict.fromkeys(CATEGORY_IDS, 0.0)
    for f, v in zip(FEATURES[: spec.n_features], per_feature, strict=True):
        for c in f.categories:
            out[c] += float(v) / len(f.categories)
    total = sum(out.values()) or 1.0
    return {c: v / total for c, v in sorted(out.items(), key=lambda kv: -kv[1])}


class RunAudit:
    """The run's audit trail; every method is a no-op when no database is configured."""

    def __init__(
        self,
        cfg: RunConfig,
        audit_db: str,
        params: ProtectionParams | None,
        dp: dict[str, Any],
        run_id: str | None = None,
    ) -> None:
        """`audit_db`: the audit database's URL ("" = no audit trail, e.g. a simulation without one);
        `run_id`: continue that audit run (an aggregator restarted after a crash)."""
        self.store = AuditStore(audit_db) if audit_db else None
        self.protection = cfg.protection
        self.run_id = ""
        if self.store and run_id and self.store.get_run(run_id) is not None:
            self.run_id = run_id
        elif self.store:
            self.run_id = self.store.start_run(
                config=asdict(cfg),
                protection=protection_record(cfg, params),
                dp=dp,
                model={
                    "name": "fedchurn survival net",
                    "version": "0",
                    "n_params": cfg.model_spec().n_params,
                    "layers": cfg.model_spec().to_dict(),
                },
            )

    def round(
        self, record: dict[str, Any], started: float, finished: float, skip_reason: str | None = None
    ) -> None:
        """Record a round; a round already in the log (a restarted aggregator's backfill) is kept."""
        if not self.store:
            return
        with contextlib.suppress(RoundAlreadyRecordedError):
            self._record(record, started, finished, skip_reason)

    def feature_mean(self, stats: RoundStats, measured: bool) -> None:
        """Record the feature-mean round (centre-features) as round 0: who was asked, what was
        refused, the bytes and the epsilon it cost; never the mean itself."""
        record = {
            "round": 0,
            "sampled": stats.sampled,
            "received": stats.received,
            "refused": stats.refused,
            "bytes_received": stats.eval_bytes,
            "protection": self.protection,
            "dp_noise_std": stats.noise_std,
            "epsilon": stats.epsilon,
            "epsilon_aggregator": stats.epsilon_aggregator,
            "evaluation": {"feature_mean_round": 1.0},
        }
        skip = None if measured else "feature mean not measured: no cohort was unmasked; training uncentred"
        self.round(record, stats.started, time.time(), skip)

    def _record(
        self, record: dict[str, Any], started: float, finished: float, skip_reason: str | None
    ) -> None:
        from fedchurn.server.audit import refusal_counts

        assert self.store is not None
        self.store.record_round(
            self.run_id,
            record["round"],
            started_at=started,
            finished_at=finished,
            sampled=record["sampled"],
            received=record["received"],
            # The aggregator names refused devices; only how many per reason leaves this process.
            refused=refusal_counts([{"reason": public_reason(str(r["reason"]))} for r in record["refused"]]),
            bytes_received=record["bytes_received"],
            protection_mode=record["protection"],
            dp_noise_std=record.get("dp_noise_std"),
            epsilon_spent=record.get("epsilon"),
            epsilon_aggregator=record.get("epsilon_aggregator"),
            metrics={k: v for k, v in record.get("evaluation", {}).items() if not isinstance(v, list)},
            skipped=skip_reason is not None,
            skip_reason=skip_reason,
        )

    def finish(
        self, cfg: RunConfig, final: dict[str, Any], params_vector: Any, status: str = "completed"
    ) -> None:
        if not self.store:
            return
        metrics = {k: v for k, v in final.items() if not isinstance(v, list)}
        card = {
            "version": str(cfg.num_server_rounds),
            "training_rounds": cfg.num_server_rounds,
            "metrics": metrics,
            "logic": LOGIC,
            "feature_group_importance": feature_group_importance(params_vector, cfg.model_spec()),
        }
        self.store.finish_run(self.run_id, status, final_metrics=metrics, model_card=card)
