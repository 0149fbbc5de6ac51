"""One round's record: made once when the round ends, then handed to every record-keeper.

While a round runs, the strategy accumulates it in `RoundStats` (a mutable tally). When the round
ends, `RoundStats.report` freezes the tally into a `RoundReport`, and one `on_round` call gives
that same object to the run's outputs (`rounds.jsonl`, `federated.json`), the audit log and the
crash-recovery checkpoint. None of them rebuilds the round from another's copy: the checkpoint
stores `to_json()`, and a restarted aggregator reads the report back with `from_json` and hands it
to the audit log and the outputs exactly as the first run would have.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedchurn.server.audit import MALFORMED_REPLY, NO_UPLOAD, UNEXPECTED_DEVICE, public_reason, refusal_counts

__all__ = [
    "MALFORMED_REPLY",
    "NO_UPLOAD",
    "UNEXPECTED_DEVICE",
    "Refusal",
    "RoundReport",
    "RoundStats",
    "public_reason",
]


@dataclass(frozen=True)
class Refusal:
    """A device whose upload the round did not use. `device` ("node/device") stays in the
    aggregator's own records; the audit log keeps only reasons and counts (`audit_fields`)."""

    device: str
    reason: str


@dataclass(frozen=True)
class RoundReport:
    """What one round did, for every record of the run (never per-device values)."""

    round: int  # 0: the feature-mean round of centre-features
    protection: str
    started: float  # Unix times
    finished: float
    elapsed: float  # seconds from the run's start to the end of this round
    sampled: int
    received: int
    trained: int
    refused: tuple[Refusal, ...] = ()
    bytes_received: int = 0
    upload_bytes: int = 0  # protected uploads alone (the wire format's bytes)
    dp_noise_std: float | None = None
    epsilon: float | None = None  # against outsiders (amplified by secret sampling)
    epsilon_aggregator: float | None = None  # against the aggregator (no amplification)
    out_of_range: int = 0  # coordinates of unmasked sums beyond what honest devices can produce
    norm_clipped: int = 0  # cohorts whose unmasked sum's norm was cut to the honest bound
    wait_seconds: float = 0.0  # from sending the messages until every reply was in
    streamed_seconds: float = 0.0  # of the aggregation, done while other nodes were still working
    aggregate_seconds: float = 0.0  # the aggregator and the key holder on the replies
    evaluation: Mapping[str, Any] = field(default_factory=dict)
    skip_reason: str | None = None  # set when the round left the model unchanged

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def to_json(self) -> dict[str, Any]:
        """The round as `rounds.jsonl`, `federated.json` and the checkpoint hold it."""
        n = max(self.received, 1)
        return {
            "round": self.round,
            "sampled": self.sampled,
            "received": self.received,
            "trained": self.trained,
            "refused": [{"device": r.device, "reason": r.reason} for r in self.refused],
            "bytes_received": self.bytes_received,
            "bytes_per_device": self.bytes_received / n,
            "upload_bytes": self.upload_bytes,
            "upload_bytes_per_device": self.upload_bytes / n if self.upload_bytes else None,
            "dp_noise_std": self.dp_noise_std,
            "epsilon": self.epsilon,
            "epsilon_aggregator": self.epsilon_aggregator,
            "out_of_range": self.out_of_range,
            "norm_clipped": self.norm_clipped,
            "wait_seconds": self.wait_seconds,
            "streamed_seconds": self.streamed_seconds,
            "aggregate_seconds": self.aggregate_seconds,
            "protection": self.protection,
            "started": self.started,
            "finished": self.finished,
            "seconds": self.seconds,
            "elapsed": self.elapsed,
            "evaluation": dict(self.evaluation),
            "skip_reason": self.skip_reason,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RoundReport:
        """Read back `to_json`'s dict (a checkpoint); derived keys are recomputed, not trusted."""
        if "record" in doc:  # a checkpoint entry written before the one record (decision 107)
            doc = {**doc["record"], **{k: doc.get(k) for k in ("started", "finished", "skip_reason")}}
            per_device = doc.get("upload_bytes_per_device")
            if "upload_bytes" not in doc and per_device:  # that layout kept only the per-device figure
                doc["upload_bytes"] = round(per_device * max(int(doc.get("received", 0)), 1))
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in doc.items() if k in names}
        kw["refused"] = tuple(Refusal(str(r["device"]), str(r["reason"])) for r in doc.get("refused", ()))
        kw["evaluation"] = dict(doc.get("evaluation") or {})
        return cls(**kw)

    def audit_fields(self) -> dict[str, Any]:
        """`AuditStore.record_round`'s arguments: reasons counted, in their public wording; the
        devices' names and the aggregator's timings stay here."""
        return {
            "round": self.round,
            "started_at": self.started,
            "finished_at": self.finished,
            "sampled": self.sampled,
            "received": self.received,
            "refused": refusal_counts([{"reason": public_reason(r.reason)} for r in self.refused]),
            "bytes_received": self.bytes_received,
            "protection_mode": self.protection,
            "dp_noise_std": self.dp_noise_std,
            "epsilon_spent": self.epsilon,
            "epsilon_aggregator": self.epsilon_aggregator,
            "metrics": {k: v for k, v in self.evaluation.items() if not isinstance(v, list)},
            "skipped": self.skip_reason is not None,
            "skip_reason": self.skip_reason,
        }


@dataclass
class RoundStats:
    """The strategy's tally of the round in flight; `report` freezes it when the round ends."""

    sampled: int = 0
    received: int = 0
    trained: int = 0
    refused: list[Refusal] = field(default_factory=list)
    bytes_received: int = 0
    started: float = 0.0
    evaluation: dict[str, Any] = field(default_factory=dict)
    upload_bytes: int = 0
    eval_bytes: int = 0
    noise_std: float | None = None
    epsilon: float | None = None
    epsilon_aggregator: float | None = None
    out_of_range: int = 0
    norm_clipped: int = 0
    skip_reason: str | None = None
    sent: float = 0.0  # when the round's messages were handed to Flower
    wait_seconds: float = 0.0
    aggregate_seconds: float = 0.0
    streamed_seconds: float = 0.0

    def report(
        self, server_round: int, protection: str, run_started: float, *, feature_mean: bool = False
    ) -> RoundReport:
        """The round as it ended (now). The feature-mean round (`feature_mean`) counts the bytes of
        its statistics uploads and records that it was one, in place of an evaluation."""
        # Wall-clock times: a clock stepped back mid-round must not give a round that ends before
        # it starts, which the audit store refuses (api_models.RoundIn).
        finished = max(time.time(), self.started)
        return RoundReport(
            round=server_round,
            protection=protection,
            started=self.started,
            finished=finished,
            elapsed=finished - run_started,
            sampled=self.sampled,
            received=self.received,
            trained=self.trained,
            refused=tuple(self.refused),
            bytes_received=self.eval_bytes if feature_mean else self.bytes_received,
            upload_bytes=0 if feature_mean else self.upload_bytes,
            dp_noise_std=self.noise_std,
            epsilon=self.epsilon,
            epsilon_aggregator=self.epsilon_aggregator,
            out_of_range=self.out_of_range,
            norm_clipped=self.norm_clipped,
            wait_seconds=self.wait_seconds,
            streamed_seconds=self.streamed_seconds,
            aggregate_seconds=self.aggregate_seconds,
            evaluation={"feature_mean_round": 1.0} if feature_mean else dict(self.evaluation),
            skip_reason=self.skip_reason,
        )
