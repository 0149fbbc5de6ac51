"""Writes a federated run into the audit database the transparency API serves.

One record per run (configuration, protection, DP settings, model) and one per round; a round
is recorded once (the store refuses a second write), and the run is closed with the final
evaluation and the model card.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from fedchurn.server.audit import AuditStore, RoundAlreadyRecordedError
from fedchurn.shared.catalogue import CATEGORY_IDS
from fedchurn.shared.feature_spec import FEATURES
from fedchurn.shared.model_format import DEFAULT_SPEC, HIGH_RISK, HORIZON_DAYS, ModelSpec
from fedchurn.shared.protection import MODE_LABELS, PARTY_VIEWS, ProtectionParams
from fedchurn.shared.run_config import RunConfig

if TYPE_CHECKING:
    from fedchurn.server.round_report import RoundReport

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

    def round(self, report: RoundReport) -> None:
        """Record a round; a round already in the log (a restarted aggregator's backfill) is kept."""
        if not self.store:
            return
        with contextlib.suppress(RoundAlreadyRecordedError):
            self.store.record_round(self.run_id, **report.audit_fields())

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
