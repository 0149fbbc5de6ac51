"""A small federated run through Flower's simulation engine (SuperLink, `flwr run`, Ray), end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import numpy as np
import pytest

from fedchurn.client.feature_mean import feature_summary, mean_from_sum
from fedchurn.server.api_bench import live_server
from fedchurn.server.run_output import load_model
from fedchurn.shared.evaluation import histogram_length
from fedchurn.shared.run_config import RunConfig, is_eval_device
from fedchurn.simulations.flower_client import SimulatedShard

pytestmark = pytest.mark.integration  # starts Flower: `-m "not integration"` skips it


def test_training_improves_on_the_untrained_model(small_run: tuple[Path, dict]) -> None:
    """Held-out devices evaluate once per run, so the untrained model is scored centrally (on every
    held-out device) and the trained one through the secure sum (on the final-evaluation half)."""
    _, summary = small_run
    before = summary["baselines"]["untrained"]
    after = summary["federated"]["final_evaluation"]
    assert after["devices"] > 25 and after["positives"] > 0
    assert after["roc_auc"] > before["roc_auc"] + 0.05
    assert after["calibration_error"] < before["calibration_error"]
    assert summary["federated"]["initial_evaluation"] == {}


def test_each_held_out_device_evaluates_once(small_run: tuple[Path, dict]) -> None:
    """Per-round evaluations and the final one never share a device (no release can be
    differenced against another)."""
    out, summary = small_run
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    per_round = sum(r["evaluation"].get("devices", 0) for r in rounds)
    assert per_round > 0
    final = summary["federated"]["final_evaluation"]["devices"]
    held_out = summary["baselines"]["untrained"]["devices"]
    assert per_round + final <= held_out


def test_the_run_leaves_its_records(small_run: tuple[Path, dict]) -> None:
    out, summary = small_run
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["sampled"] == 30 and r["trained"] > 0 and r["bytes_received"] > 0 for r in rounds)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "round_001.npy",
        "round_002.npy",
        "round_003.npy",
    ]
    params, meta = load_model(out)
    np.testing.assert_array_equal(params, np.load(out / "checkpoints" / "round_003.npy"))
    assert meta["model_version"] == 3
    for png in ("auc_by_round.png", "calibration.png", "survival_by_tier.png"):
        assert (out / png).stat().st_size > 5000
    assert {"logreg", "xgboost", "central_net"} <= set(summary["baselines"])


def test_federated_evaluation_equals_the_central_check(small_run: tuple[Path, dict]) -> None:
    """The server's metrics come only from securely summed histograms; they must equal scoring the
    same held-out devices directly (same features, same evaluation day, same labels). The run is
    centred, so this also checks the folded model: devices scored it on raw features."""
    _, summary = small_run
    fed = summary["federated"]["final_evaluation"]
    central = summary["baselines"]["federated_checked_centrally"]
    for key in ("devices", "positives", "roc_auc", "pr_auc", "concordance"):  # from counts: exact
        assert fed[key] == pytest.approx(central[key], abs=1e-6), key
    # Score sums are stochastically rounded to the upload's step inside the secure sum (unbiased,
    # at most step/2 standard deviation per device): the mean is within 4 of its standard
    # deviations, and calibration (per score bin) within 3 of the summed bins' deviations.
    cfg = RunConfig()
    step = 1 / cfg.eval_protection().scale(histogram_length(cfg.horizon))
    n = fed["devices"]
    assert fed["mean_predicted"] == pytest.approx(central["mean_predicted"], abs=4 * step / 2 / n**0.5)
    ece_bound = 3 * step / 2 * (len(fed["calib_count"]) / n) ** 0.5  # over the non-empty bins
    assert fed["calibration_error"] == pytest.approx(central["calibration_error"], abs=ece_bound)


def test_uploads_are_the_compact_protected_ones(small_run: tuple[Path, dict]) -> None:
    out, _ = small_run
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    for r in rounds:
        assert r["protection"] == "secagg" and r["upload_bytes_per_device"] == 780
        assert r["bytes_per_device"] < 900  # Flower's protobuf body around the 780-byte upload


def test_the_feature_mean_is_the_sampled_devices_mean_through_the_secure_sum(
    small_run: tuple[Path, dict],
) -> None:
    """The offset the server trained with is the mean of the feature summaries of the devices it
    sampled first, recomputed here from the devices' own code, up to the 1/32 quantisation step."""
    out, summary = small_run
    cfg = RunConfig(**json.loads((out / "config.json").read_text())["run"])
    assert cfg.sampling_source == "seeded"
    pool = [d for d in range(cfg.devices) if not is_eval_device(cfg.seed, d, cfg.eval_fraction)]
    sampled = random.Random(cfg.seed).sample(pool, cfg.per_round)  # the sampler's first draw
    summaries = [feature_summary(d.x) for d in SimulatedShard._prepare(cfg, sampled)]
    expected = mean_from_sum(np.sum(summaries, axis=0))
    measured = summary["federated"]["feature_mean"]
    assert measured["devices"] == sum(s[-1] for s in summaries) > 20
    assert expected is not None
    np.testing.assert_allclose(measured["offset"], expected, atol=1 / 32)
    assert np.abs(np.asarray(measured["offset"]) - expected).mean() < 0.005


def test_serve_shows_the_runs_rounds(small_run: tuple[Path, dict]) -> None:
    out, _ = small_run
    with live_server(f"sqlite:///{out / 'audit.sqlite'}") as base:
        rounds = httpx.get(f"{base}/v1/audit/rounds").json()
        budget = httpx.get(f"{base}/v1/privacy-budget").json()
        card = httpx.get(f"{base}/v1/model-card").json()
        upload = httpx.get(f"{base}/v1/upload-spec").json()
    # round 0 measured the feature mean (the run is centred), then three training rounds
    assert rounds["total"] == 4
    assert [r["round"] for r in rounds["items"]] == [0, 1, 2, 3]
    assert rounds["items"][0]["metrics"] == {"feature_mean_round": 1.0}
    assert all(r["protection_mode"] == "secagg" and r["bytes_received"] > 0 for r in rounds["items"])
    assert budget["available"] and budget["accountant"] == "none"
    assert card["available"] and card["training_rounds"] == 3
    assert upload["available"] and upload["upload_bytes"] == 780
