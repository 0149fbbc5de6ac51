"""The key holder's identity as a device pins it out of band, and as the key holder publishes it.

A device protects its upload with the key holder's X25519 public key (and, in CKKS mode, its
public TenSEAL context). If the device took that key from the aggregator, an aggregator that sent
its own key could open every seal and read every update. So the device takes the key from its own
configuration, written by whoever provisions it (a SuperNode's `--node-config`, written by
`fedchurn deploy`; in simulation the provisioning file the runner writes), and refuses any other.
The CKKS context is too large to pin (≈125 KB), so its SHA-256 is pinned and the context itself
may travel through the aggregator: the device checks the hash before using it.

Node-config keys (strings): `keyholder-x25519` = the raw 32-byte key, standard base64;
`keyholder-ckks-sha256` = 64 hex digits (only for CKKS runs).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "CKKS_PIN_KEY",
    "X25519_PIN_KEY",
    "KeyHolderPin",
    "KeyHolderPublic",
    "PinError",
    "UntrustedKeyHolderError",
]

X25519_PIN_KEY = "keyholder-x25519"
CKKS_PIN_KEY = "keyholder-ckks-sha256"
_X25519_LEN = 32


class PinError(ValueError):
    """A device's pinned key holder identity is missing or malformed."""


class UntrustedKeyHolderError(ValueError):
    """The aggregator asked a device to protect an upload for a key holder the device does not trust."""


@dataclass(frozen=True)
class KeyHolderPublic:
    """What a device protects an upload with: the X25519 key its mask seed is sealed to and, in
    CKKS mode, the public TenSEAL context it encrypts to (already checked against its pin)."""

    x25519: bytes
    ckks_context: bytes | None = None


@dataclass(frozen=True)
class KeyHolderPin:
    """The key holder identity a device trusts: its X25519 public key, and the SHA-256 of its
    public CKKS context (None: this device does not take part in CKKS runs)."""

    x25519: bytes
    ckks_context_sha256: bytes | None = None

    def __post_init__(self) -> None:
        if len(self.x25519) != _X25519_LEN:
            raise PinError(f"a pinned X25519 key is {_X25519_LEN} bytes, got {len(self.x25519)}")
        if self.ckks_context_sha256 is not None and len(self.ckks_context_sha256) != 32:
            raise PinError("a pinned CKKS context hash is 32 bytes (SHA-256)")

    @classmethod
    def of(cls, x25519: bytes, ckks_context: bytes | None = None) -> KeyHolderPin:
        """The pin of a key holder with this public key and (optionally) this public CKKS context."""
        digest = hashlib.sha256(ckks_context).digest() if ckks_context is not None else None
        return cls(x25519, digest)

    # -- node configuration ------------------------------------------------------------------
    def to_node_config(self) -> dict[str, str]:
        out = {X25519_PIN_KEY: base64.b64encode(self.x25519).decode("ascii")}
        if self.ckks_context_sha256 is not None:
            out[CKKS_PIN_KEY] = self.ckks_context_sha256.hex()
        return out

    def node_config_arg(self) -> str:
        """The pins as `flower-supernode --node-config` text (`key="value"` pairs)."""
        return " ".join(f'{k}="{v}"' for k, v in self.to_node_config().items())

    @classmethod
    def from_node_config(
        cls, config: Mapping[str, object], where: str = "the node configuration"
    ) -> KeyHolderPin:
        """The pin from node-config style keys; a clear error naming the key and `where` otherwise."""
        raw = config.get(X25519_PIN_KEY)
        if raw is None or raw == "":
            raise PinError(
                f"{where} has no {X25519_PIN_KEY!r}: a device needs the key holder's public key pinned "
                "out of band (fedchurn deploy writes it; docs/deploy.md) and never takes it from the "
                "aggregator"
            )
        try:
            key = base64.b64decode(str(raw), validate=True)
        except (binascii.Error, ValueError):
            raise PinError(f"{X25519_PIN_KEY!r} in {where} is not base64") from None
        if len(key) != _X25519_LEN:
            raise PinError(f"{X25519_PIN_KEY!r} in {where} holds {len(key)} bytes, not {_X25519_LEN}")
        ckks = config.get(CKKS_PIN_KEY)
        digest = None
        if ckks not in (None, ""):
            try:
                digest = bytes.fromhex(str(ckks))
            except ValueError:
                raise PinError(f"{CKKS_PIN_KEY!r} in {where} is not hex") from None
            if len(digest) != 32:
                raise PinError(f"{CKKS_PIN_KEY!r} in {where} must be 64 hex digits (SHA-256)")
        return cls(key, digest)

    # -- what a device accepts ---------------------------------------------------------------
    def check_x25519(self, offered: bytes | None) -> bytes:
        """The pinned key; refuses an offered key (from the aggregator's message) that differs."""
        if offered is not None and offered != self.x25519:
            raise UntrustedKeyHolderError(
                "the aggregator named a key holder key this device does not trust "
                f"({base64.b64encode(offered).decode()[:12]}… instead of the pinned "
                f"{base64.b64encode(self.x25519).decode()[:12]}…): refusing to protect an upload for it"
            )
        return self.x25519

    def check_ckks_context(self, offered: bytes | None) -> bytes:
        """The offered public CKKS context if its SHA-256 is the pinned one; refuses otherwise."""
        if self.ckks_context_sha256 is None:
            raise UntrustedKeyHolderError(
                f"this device has no {CKKS_PIN_KEY!r} pinned: it does not take part in CKKS runs"
            )
        if offered is None:
            raise UntrustedKeyHolderError("the aggregator sent no CKKS public context")
        if hashlib.sha256(offered).digest() != self.ckks_context_sha256:
            raise UntrustedKeyHolderError(
                "the CKKS public context the aggregator sent is not the pinned key holder's "
                "(SHA-256 differs): refusing to encrypt to it"
            )
        return offered

    def trusted(
        self, offered_x25519: bytes | None, ckks: bool, offered_context: bytes | None
    ) -> KeyHolderPublic:
        """Everything a device protects with, checked against the pin (CKKS: the context too)."""
        key = self.check_x25519(offered_x25519)
        return KeyHolderPublic(key, self.check_ckks_context(offered_context) if ckks else None)
