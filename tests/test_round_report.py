"""One round record: the report a round ends with is what every record-keeper receives and what a
restarted aggregator reads back."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from fedchurn.server.round_report import Refusal, RoundReport, RoundStats

_floats = st.floats(min_value=0, max_value=1e9, allow_nan=False)
_counts = st.integers(min_value=0, max_value=10**6)
_reports = st.builds(
    RoundReport,
    round=st.integers(0, 10_000),
    protection=st.sampled_from(["secagg", "ckks", "plaintext"]),
    started=_floats,
    finished=_floats,
    elapsed=_floats,
    sampled=_counts,
    received=_counts,
    trained=_counts,
    refused=st.lists(st.builds(Refusal, st.text(max_size=20), st.text(max_size=40)), max_size=5).map(tuple),
    bytes_received=_counts,
    upload_bytes=_counts,
    dp_noise_std=st.none() | _floats,
    epsilon=st.none() | _floats,
    epsilon_aggregator=st.none() | _floats,
    evaluation=st.dictionaries(st.text(max_size=10), _floats, max_size=4),
    skip_reason=st.none() | st.text(max_size=30),
)


@given(_reports)
def test_a_report_survives_the_checkpoints_json(report: RoundReport) -> None:
    """What the checkpoint stores (`to_json` through JSON) reads back as the same report."""
    assert RoundReport.from_json(json.loads(json.dumps(report.to_json()))) == report


def test_a_checkpoint_entry_of_the_earlier_layout_reads_back() -> None:
    entry = {
        "record": {"round": 3, "sampled": 30, "received": 28, "trained": 27, "protection": "secagg",
                   "upload_bytes_per_device": 780.0,
                   "refused": [{"device": "1/7", "reason": "no upload"}], "bytes_received": 21840,
                   "elapsed": 12.5, "evaluation": {"roc_auc": 0.8}, "seconds": 4.0},
        "started": 100.0,
        "finished": 104.0,
        "skip_reason": None,
    }  # fmt: skip
    r = RoundReport.from_json(entry)
    assert (r.round, r.trained, r.started, r.finished, r.seconds) == (3, 27, 100.0, 104.0, 4.0)
    assert r.refused == (Refusal("1/7", "no upload"),)
    assert r.upload_bytes == 28 * 780 and r.to_json()["upload_bytes_per_device"] == 780.0  # kept


def test_the_audit_log_gets_reasons_counted_never_device_names() -> None:
    stats = RoundStats(sampled=5, received=4, started=10.0, bytes_received=3120, upload_bytes=3120)
    stats.refused += [
        Refusal("3/4711", "client error: <class 'fedchurn.x.AlreadyEvaluatedError'>:<'device 4711'>"),
        Refusal("2/17", "no upload (failed, refused or timed out)"),
        Refusal("2/18", "no upload (failed, refused or timed out)"),
    ]
    report = stats.report(2, "secagg", run_started=0.0)
    fields = report.audit_fields()
    assert "4711" not in json.dumps(fields) and "2/17" not in json.dumps(fields)
    assert sorted((r["reason"], r["count"]) for r in fields["refused"]) == [
        ("client error: AlreadyEvaluatedError", 1),
        ("no upload (failed, refused or timed out)", 2),
    ]
    assert fields["started_at"] == 10.0 and fields["finished_at"] == report.finished >= 10.0
    assert report.to_json()["upload_bytes_per_device"] == 780.0


def test_the_feature_mean_round_counts_its_statistics_uploads() -> None:
    stats = RoundStats(sampled=30, received=30, trained=30, eval_bytes=9000, bytes_received=0, started=1.0)
    report = stats.report(0, "secagg", run_started=0.0, feature_mean=True)
    assert report.bytes_received == 9000 and report.upload_bytes == 0
    assert report.evaluation == {"feature_mean_round": 1.0}
    assert math.isclose(report.elapsed, report.finished)
