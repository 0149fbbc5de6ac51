"""The key holder's HTTP service: same answers as in-process, bearer token, problem+json refusals."""

from __future__ import annotations

import base64
import os

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fedchurn.client.protect import protect_update, selected_clipped
from fedchurn.server.keyholder import KeyHolder, KeyHolderRefusedError
from fedchurn.server.keyholder_service import KeyHolderHttpClient, create_app
from fedchurn.server.problem_details import CHALLENGE, PROBLEM_JSON, UNAUTHORIZED, problem_type
from fedchurn.server.secure_sum import CohortAggregator, CohortRefusedError
from fedchurn.shared.keyholder_pin import KeyHolderPublic
from fedchurn.shared.protection import DEFAULT
from fedchurn.shared.wire import Reason

P, SEED = 2286, 5
TOKEN = "test-token-0123456789abcdef"


@pytest.fixture
def served() -> tuple[KeyHolder, TestClient]:
    kh = KeyHolder.generate(k_min=10)
    return kh, TestClient(create_app(kh, TOKEN))


def _cohort(pk: bytes, n: int, cohort: int = 1) -> tuple[CohortAggregator, list[np.ndarray]]:
    """A cohort sealed to the key holder whose raw X25519 key is `pk` (what the service publishes)."""
    rng = np.random.default_rng(2)
    agg = CohortAggregator(DEFAULT, 3, cohort, 1, SEED, P)
    ups = [rng.normal(size=P) * 0.01 for _ in range(n)]
    for i, u in enumerate(ups):
        assert agg.add(
            f"d{i}", protect_update(u, DEFAULT, KeyHolderPublic(pk), 3, cohort, 1, SEED, rng)
        ).accepted
    return agg, ups


def test_http_round_trip_matches_the_plaintext_sum(served: tuple[KeyHolder, TestClient]) -> None:
    kh, http = served
    client = KeyHolderHttpClient("http://testserver", TOKEN, client=http)
    assert client.public_key() == kh.public_key()
    agg, ups = _cohort(client.public_key(), 12)
    res = agg.finalize(client)
    ref = np.sum([selected_clipped(u, DEFAULT, SEED) for u in ups], axis=0)
    assert np.abs(res.sum[res.selected] - ref).max() <= 12 / DEFAULT.scale(P)
    agg2, _ = _cohort(client.public_key(), 12)
    with pytest.raises(CohortRefusedError) as e:
        agg2.finalize(client)
    assert e.value.reason is Reason.ALREADY_ANSWERED


def test_token_is_required(served: tuple[KeyHolder, TestClient]) -> None:
    kh, http = served
    agg, _ = _cohort(kh.public_key(), 10)
    for token in ("wrong-token-0123456789abcdef",):
        with pytest.raises(CohortRefusedError):
            agg.finalize(KeyHolderHttpClient("http://testserver", token, client=http))
    r = http.post("/v1/mask-sum", json={})
    assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM_JSON)
    assert r.headers["www-authenticate"] == CHALLENGE  # the transparency API's challenge too
    assert (r.json()["type"], r.json()["title"]) == UNAUTHORIZED
    assert not kh.answered(3, 1)


def test_refusals_are_problem_json_with_reason(served: tuple[KeyHolder, TestClient]) -> None:
    kh, http = served
    client = KeyHolderHttpClient("http://testserver", TOKEN, client=http)
    agg, _ = _cohort(kh.public_key(), 10)
    agg._uploads.pop("d0")  # a cohort of 9 reaches the key holder only if the aggregator cheats
    from fedchurn.server.keyholder import MaskSumRequest, SealedEntry

    entries = tuple(SealedEntry(d, u.sealed_seed) for d, u in agg._uploads.items())
    with pytest.raises(KeyHolderRefusedError) as e:
        client.mask_sum(MaskSumRequest(3, 1, 1, (SEED).to_bytes(32, "little"), P, DEFAULT, entries))
    assert e.value.reason is Reason.COHORT_TOO_SMALL
    r = http.post("/v1/mask-sum", json={"round_id": -1}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM_JSON)
    body = r.json()
    assert body["reason"] == "bad_request" and body["type"] == problem_type("bad_request")
    assert body["instance"] == "/v1/mask-sum" and body["status"] == 422


def test_every_route_declares_a_response_model(served: tuple[KeyHolder, TestClient]) -> None:
    _, http = served
    spec = http.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for op in ops.values():
            assert "$ref" in str(op["responses"]["200"]), path
    assert http.get("/v1/health").json()["status"] == "ok"


def test_short_tokens_are_refused() -> None:
    with pytest.raises(ValueError):
        create_app(KeyHolder.generate(), "short")


def _body(**changes: object) -> dict[str, object]:
    b64 = base64.b64encode
    body: dict[str, object] = {
        "round_id": 1,
        "cohort_id": 0,
        "model_version": 1,
        "round_seed": b64(os.urandom(32)).decode(),
        "n_params": 2286,
        "params": DEFAULT.to_dict(),
        "entries": [{"device_id": "a", "sealed_seed": b64(os.urandom(80)).decode()}],
    }
    return {**body, **changes}


@pytest.mark.parametrize(
    "changes",
    [
        {"n_params": 2**32},
        {"n_params": 2**70},
        {"params": {**DEFAULT.to_dict(), "ckks_coeff_mod_bits": [999]}},
        {"params": {**DEFAULT.to_dict(), "ckks_scale_bits": 0}},
        {"params": {**DEFAULT.to_dict(), "noise_multiplier": 10**400}},  # review 22: a float overflows
        {"params": {**DEFAULT.to_dict(), "clip_norm": 10**400}},
    ],
    ids=[
        "n-params-over-32-bits",
        "n-params-huge",
        "modulus-bits-over-a-byte",
        "no-scale",
        "noise-huge",
        "clip-huge",
    ],
)
def test_out_of_range_numbers_are_refused_as_problem_json_not_a_server_error(
    served: tuple[KeyHolder, TestClient], changes: dict[str, object]
) -> None:
    """Found by review 3: these reached `struct.pack` and answered a bare 500."""
    _, http = served
    r = http.post("/v1/mask-sum", json=_body(**changes), headers={"Authorization": f"Bearer {TOKEN}"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/problem+json")


def test_a_key_holder_without_ckks_makes_no_ckks_context_for_whoever_asks(
    served: tuple[KeyHolder, TestClient],
) -> None:
    """Review 3: an unauthenticated GET of the CKKS context made a key holder provisioned without
    CKKS create a secret CKKS context on the spot."""
    kh, http = served
    assert not kh.has_ckks
    r = http.get("/v1/ckks/public-context")
    assert r.status_code == 422 and r.json()["reason"] == "mode_disabled", r.text[:300]
    assert not kh.has_ckks


@pytest.mark.parametrize("field", ["k_min", "ring_bits", "ckks_scale_bits", "coords_per_round"])
def test_a_fraction_where_a_whole_number_belongs_is_refused_as_problem_json(
    served: tuple[KeyHolder, TestClient], field: str
) -> None:
    """Review 4: 1.5 in a count reached `struct.pack` and answered a bare 500."""
    _, http = served
    body = _body(params={**DEFAULT.to_dict(), field: 20.5})
    r = http.post("/v1/mask-sum", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json"), r.text


def test_a_malformed_request_is_named_without_echoing_it_or_the_servers_source(
    served: tuple[KeyHolder, TestClient],
) -> None:
    """Review 22: a 422's detail carried what the client sent and the server's file and line."""
    _, http = served
    body = _body(entries=[{"device_id": "a", "sealed_seed": 12345, "secret_marker": "zz-echo-zz"}])
    r = http.post("/v1/mask-sum", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    detail = r.json()["detail"]
    assert "entries" in detail and "zz-echo-zz" not in r.text and "12345" not in r.text
    assert ".py" not in r.text and "line" not in detail
