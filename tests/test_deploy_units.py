"""Fast checks of the deployment pieces: secrets (cryptography), checkpoints and round attempts."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedchurn.server.checkpoint import Checkpoint, CheckpointStore
from fedchurn.server.deploy import make_secrets


def test_secrets_are_private_files_and_the_certificate_chains_to_the_ca(tmp_path: Path) -> None:
    sec = make_secrets(tmp_path / "s", 2, ("127.0.0.1", "localhost"))
    for f in (sec.server_key, sec.keyholder_token, sec.api_token, *(k for k, _ in sec.node_keys)):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    ca = x509.load_pem_x509_certificate(sec.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(sec.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    private, public = sec.node_keys[0]
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert isinstance(load_ssh_public_key(public.read_bytes()), ec.EllipticCurvePublicKey)
    assert len(sec.keyholder_token.read_text().strip()) >= 32


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
