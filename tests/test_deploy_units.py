"""Fast checks of the deployment pieces: secrets (cryptography), checkpoints and round attempts."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_ssh_private_key,
    load_ssh_public_key,
)

from fedchurn.server.checkpoint import Checkpoint, CheckpointStore
from fedchurn.server.deploy_secrets import make_secrets
from fedchurn.server.keyholder import KeyHolder
from fedchurn.server.secure_rounds import connect_keyholder
from fedchurn.server.settings import AggregatorSettings


def test_secrets_are_private_files_one_folder_per_party_and_certificates_chain_to_the_ca(
    tmp_path: Path,
) -> None:
    sec = make_secrets(tmp_path / "s", 2, ("127.0.0.1", "localhost"), keyholder_hosts=("kh.example",))
    for f in sec.private_files():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    ca = x509.load_pem_x509_certificate(sec.ca_cert.read_bytes())
    certs = {}
    for party, tls in (("superlink", sec.superlink), ("keyholder", sec.keyholder), ("api", sec.api)):
        assert tls.cert.parent.name == tls.key.parent.name == party  # each party its own folder and key
        certs[party] = cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
        cert.verify_directly_issued_by(ca)
    assert (
        len(
            {
                c.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
                for c in certs.values()
            }
        )
        == 3
    )
    san = certs["keyholder"].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kh.example"]
    private, public = sec.node_keys[0]
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert isinstance(load_ssh_public_key(public.read_bytes()), ec.EllipticCurvePublicKey)
    # The aggregator holds the token; the key holder only its digest. Nothing of the key holder's
    # (its X25519 key, its CKKS secret context) lies in the aggregator's folder, and vice versa.
    token = sec.aggregator_token.read_text().strip()
    assert len(token) >= 32 and token not in sec.keyholder_token_sha256.read_text()
    assert (
        bytes.fromhex(sec.keyholder_token_sha256.read_text().strip())
        == hashlib.sha256(token.encode()).digest()
    )
    keyholder_files = {p.name for p in sec.keyholder_key.parent.iterdir()}
    assert keyholder_files == {
        "tls.pem",
        "tls.key",
        "keyholder.key",
        "keyholder.key.ckks",
        "keyholder.key.ckks.pub",
        "aggregator-token.sha256",
    }
    assert {p.name for p in sec.aggregator_token.parent.iterdir()} == {"keyholder.token"}
    # Devices are configured with the key holder's public pin, which matches its key.
    kh = KeyHolder.open(sec.keyholder_key, None)
    assert sec.keyholder_pin() == kh.pin() and kh.pin().ckks_context_sha256 is not None


def test_the_aggregator_reaches_the_key_holder_over_https_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="https"):
        AggregatorSettings(keyholder_url="http://kh.example:8443")
    with pytest.raises(ValueError, match="https"):
        connect_keyholder(AggregatorSettings.__new__(AggregatorSettings), 5.0)


def test_aggregator_settings_are_private_and_redacted(tmp_path: Path) -> None:
    s = AggregatorSettings(audit_db="postgresql://fedchurn:S3CRET@db/audit", state_db="sqlite:///x.sqlite")
    path = s.write(tmp_path / "aggregator.toml")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert AggregatorSettings.load(path) == s
    assert "S3CRET" not in str(s.public()) and "***" in s.public()["audit_db"]
    (tmp_path / "bad.toml").write_text('audit_db = "x"\nkeyholder_token = "abc"\n')
    with pytest.raises(ValueError, match="unknown keys"):
        AggregatorSettings.load(tmp_path / "bad.toml")
    drill = AggregatorSettings(crash_after_round="2")
    assert AggregatorSettings.load(drill.write(tmp_path / "drill.toml")) == drill
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match="crash_after_round"):
            AggregatorSettings(crash_after_round=bad)


def test_checkpoint_round_trip_and_attempt_accounting(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    store = CheckpointStore(url)
    import random

    rng = random.Random(3)
    rng.random()
    moments = {"m_t": {"params": np.arange(4.0)}, "v_t": {"params": np.ones(4)}}
    ck = Checkpoint("run", 1, np.arange(5, dtype=np.float32), "audit-1", rng.getstate(), moments, [{"r": 1}])
    ck.roster = [(2**63 + 5, 7)]  # Flower node ids are u64: they must survive JSON
    a1 = store.begin_attempt("run", 1, "train")
    store.mark(a1, "contacted")
    store.save(ck, a1)
    a2 = store.begin_attempt("run", 2, "train")
    store.mark(a2, "contacted")  # crashed after reaching the key holder: charged
    a3 = store.begin_attempt("run", 2, "train")  # crashed before: not charged
    assert a1 < a2 < a3 and a1 >= store.round_id_base
    again = CheckpointStore(url)  # a restarted aggregator
    assert again.round_id_base == store.round_id_base
    got = again.load("run")
    assert got is not None and got.round == 1 and got.audit_run_id == "audit-1"
    np.testing.assert_array_equal(got.model, ck.model)
    assert got.optimizer is not None
    np.testing.assert_array_equal(got.optimizer["v_t"]["params"], np.ones(4))
    assert got.roster == [(2**63 + 5, 7)]
    restored = random.Random()
    restored.setstate(got.rng_state)
    assert restored.random() == rng.random()
    assert again.charged_rounds("run") == 2
    assert {a["status"] for a in again.aborted_attempts("run")} == {"contacted", "started"}
    assert again.load("other") is None
    assert CheckpointStore(f"sqlite:///{tmp_path / 'other.sqlite'}").round_id_base != store.round_id_base
