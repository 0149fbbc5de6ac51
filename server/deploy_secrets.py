"""Deployment secrets: what `fedchurn deploy certs` writes, one folder per party.

`make_secrets` writes (with `cryptography` only) a CA, a TLS certificate of its own for each of
the SuperLink, the key holder and the transparency API, one EC P-384 key pair per SuperNode
(OpenSSH format, what `flower-supernode --auth-supernode-private-key` and `flwr supernode
register` read), the key holder's X25519 key and CKKS contexts and the public pin every SuperNode
is configured with, the aggregator's bearer token for the key holder (the key holder keeps only
its hash) and the API's write token. Private files are created 0600 and never printed; no secret
is ever put on a command line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedchurn.server.keyholder import KeyHolder
from fedchurn.shared.keyholder_pin import KeyHolderPin

SECRET_MODE = 0o600
KEYHOLDER_TOKEN_ENV = "FEDCHURN_KEYHOLDER_TOKEN"
CERT_DAYS = 365
# Every file `make_secrets` writes whatever its options (node keys and CKKS contexts vary): a folder
# holding any of them is a deployment's, and writing into it again would replace its keys.
PROVISIONED_FILES = (
    "ca/ca.pem",
    "superlink/tls.pem",
    "superlink/tls.key",
    "keyholder/tls.pem",
    "keyholder/tls.key",
    "keyholder/keyholder.key",
    "keyholder/aggregator-token.sha256",
    "api/tls.pem",
    "api/tls.key",
    "api/write.token",
    "aggregator/keyholder.token",
    "pins/keyholder.toml",
)


class SecretsFolderError(ValueError):
    """A folder is not a provisioned secrets folder where one is needed, or already is one where
    `make_secrets` would write a new deployment's."""


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_host(name: str) -> str:
    """`name` if it is an IP address or a DNS host name (RFC 1123: dot-separated labels of letters,
    digits and inner hyphens, at most 253 characters, not all-digit at the end), else ValueError."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(name)
        return name
    labels = name.split(".")
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise ValueError(
            f"{name!r} is neither an IP address nor a host name (letters, digits, hyphens and dots, "
            "e.g. superlink.example.org)"
        )
    return name


def existing_secrets(directory: Path) -> list[Path]:
    """The files of a deployment's secrets `directory` already holds (none for a new folder)."""
    found = [directory / name for name in PROVISIONED_FILES if (directory / name).exists()]
    nodes = directory / "nodes"
    return found + (sorted(nodes.glob("node-*")) if nodes.is_dir() else [])


def require_files(directory: Path, names: Iterable[str]) -> None:
    """Refuse (SecretsFolderError, naming the first missing file) a folder that lacks any of
    `names`: what `fedchurn deploy certs` writes and a command needs."""
    if not directory.is_dir():
        raise SecretsFolderError(f"{directory} is not a folder (`fedchurn deploy certs --out` writes it)")
    for name in names:
        if not (directory / name).is_file():
            raise SecretsFolderError(
                f"{directory / name} is missing: {directory} is not a folder `fedchurn deploy certs` wrote"
            )


def write_secret(path: Path, data: bytes) -> Path:
    """Create a file readable by its owner only (0600 from the first byte, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def read_token(path: str | Path | None, env: str = KEYHOLDER_TOKEN_ENV) -> str:
    """A bearer token from a file (preferred) or an environment variable; never from the run config."""
    token = Path(path).read_text(encoding="utf-8").strip() if path else os.environ.get(env, "").strip()
    if len(token) < 16:
        raise ValueError(f"no bearer token of >= 16 characters in {path or '$' + env}")
    return token


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedchurn"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(common: str = "fedchurn deployment CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA (P-384, ECDSA-SHA384) that signs the servers' certificates."""
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: Sequence[str]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for `hosts` (DNS names or IP addresses, all in the SAN)."""
    key = ec.generate_private_key(ec.SECP384R1())
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def make_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's authentication key pair (EC P-384, OpenSSH); the public half gets registered."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = write_secret(
        directory / name,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    public = directory / f"{name}.pub"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + f" {name}\n".encode()
    )
    return private, public


@dataclass(frozen=True)
class PartyTLS:
    cert: Path
    key: Path  # 0600


@dataclass(frozen=True)
class Secrets:
    """Paths of everything `make_secrets` wrote (files, never their contents), one folder per party.

    - `ca/ca.pem`: the CA certificate (public; its private key is not kept).
    - `superlink/`, `api/`: each service's own TLS key and certificate (the API's write token).
    - `keyholder/`: the key holder's TLS key and certificate, its X25519 key and CKKS contexts
      (`KeyHolder.provision`), and the SHA-256 of the token the aggregator presents (never the
      token itself). Give this folder to the key holder's operator only.
    - `aggregator/keyholder.token`: the bearer token the aggregator presents to the key holder.
    - `nodes/node-i`, `.pub`: SuperNode authentication keys.
    - `pins/keyholder.toml`: the key holder's public pin, which every SuperNode's node config
      carries (public: give it to every device operator).
    """

    dir: Path
    ca_cert: Path
    superlink: PartyTLS
    keyholder: PartyTLS
    api: PartyTLS
    node_keys: tuple[tuple[Path, Path], ...]
    aggregator_token: Path  # what the aggregator presents
    keyholder_token_sha256: Path  # what the key holder checks it against
    api_token: Path
    keyholder_key: Path  # X25519 (0600); CKKS contexts beside it
    pin: Path

    def private_files(self) -> list[Path]:
        """Files whose bytes must never appear in a log or an output (the tests grep for them)."""
        files = [
            self.superlink.key,
            self.keyholder.key,
            self.api.key,
            *(k for k, _ in self.node_keys),
            self.aggregator_token,
            self.api_token,
            self.keyholder_key,
        ]
        ckks = self.keyholder_key.with_name(self.keyholder_key.name + ".ckks")
        return [*files, ckks] if ckks.exists() else files

    def keyholder_pin(self) -> KeyHolderPin:
        with self.pin.open("rb") as f:
            return KeyHolderPin.from_node_config(tomllib.load(f), str(self.pin))


def _tls(
    directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: Sequence[str]
) -> PartyTLS:
    key, cert = make_server_cert(ca_key, ca_cert, hosts)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return PartyTLS(directory / "tls.pem", write_secret(directory / "tls.key", _pem_key(key)))


def make_secrets(
    directory: Path,
    n_nodes: int,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    keyholder_hosts: Sequence[str] | None = None,
    api_hosts: Sequence[str] | None = None,
    with_ckks: bool = True,
    on_node_key: Callable[[], None] | None = None,
) -> Secrets:
    """Write a deployment's CA, each service's own TLS certificate, SuperNode keys, the key holder's
    keys and pin, and bearer tokens, one folder per party (see `Secrets`); `on_node_key` is called
    after each SuperNode key pair (a progress bar).

    Every input is checked before anything is written, and a folder that already holds a
    deployment's secrets, or anything else, is refused (SecretsFolderError): writing again would
    replace every key (and the key holder's is created once), so rotating means a new folder."""
    if n_nodes < 0:
        raise ValueError(f"{n_nodes} SuperNodes: give 0 or more")
    if not hosts:
        raise ValueError("give at least one host name or IP address for the SuperLink")
    for h in (*hosts, *(keyholder_hosts or ()), *(api_hosts or ())):
        check_host(h)
    if directory.exists() and not directory.is_dir():
        raise SecretsFolderError(f"{directory} is a file, not a folder")
    if found := existing_secrets(directory):
        raise SecretsFolderError(
            f"{directory} already holds a deployment's secrets ({found[0]}, {len(found)} files in all): "
            "writing again would replace every key. Give a new folder (to rotate, then hand out the "
            "new one), or move this one away; nothing was changed"
        )
    first = min(directory.iterdir(), default=None) if directory.is_dir() else None
    if first is not None:
        # A sub-folder of an earlier deployment (its nodes/, say) would get a second one's keys.
        raise SecretsFolderError(
            f"{directory} is not empty ({first.name} is in it): give a new or empty folder; nothing was "
            "changed"
        )
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca()
    (directory / "ca").mkdir(exist_ok=True)
    ca_path = directory / "ca" / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    # The CA's private key is not kept: nothing else gets signed (run again into a new folder to
    # rotate everything).
    _tls(directory / "superlink", ca_key, ca_cert, hosts)
    _tls(directory / "keyholder", ca_key, ca_cert, keyholder_hosts or hosts)
    _tls(directory / "api", ca_key, ca_cert, api_hosts or hosts)
    for i in range(n_nodes):
        make_node_key(directory / "nodes", f"node-{i}")
        if on_node_key is not None:
            on_node_key()
    token = secrets.token_urlsafe(32)
    write_secret(directory / "aggregator" / "keyholder.token", token.encode())
    token_hash = directory / "keyholder" / "aggregator-token.sha256"
    token_hash.write_text(hashlib.sha256(token.encode()).hexdigest() + "\n")
    write_secret(directory / "api" / "write.token", secrets.token_urlsafe(32).encode())
    kh_key = directory / "keyholder" / "keyholder.key"
    pin = KeyHolder.provision(kh_key, with_ckks=with_ckks)
    (directory / "pins").mkdir(exist_ok=True)
    pin_path = directory / "pins" / "keyholder.toml"
    pin_path.write_text("".join(f'{k} = "{v}"\n' for k, v in pin.to_node_config().items()))
    return load_secrets(directory)


def load_secrets(directory: Path) -> Secrets:
    """The `Secrets` of a folder `make_secrets` filled earlier."""
    pubs = sorted(
        (p for p in (directory / "nodes").glob("node-*.pub") if p.stem.split("-", 1)[1].isdigit()),
        key=lambda p: int(p.stem.split("-", 1)[1]),
    )

    def tls(party: str) -> PartyTLS:
        return PartyTLS(directory / party / "tls.pem", directory / party / "tls.key")

    return Secrets(
        directory,
        directory / "ca" / "ca.pem",
        tls("superlink"),
        tls("keyholder"),
        tls("api"),
        tuple((p.with_suffix(""), p) for p in pubs),
        directory / "aggregator" / "keyholder.token",
        directory / "keyholder" / "aggregator-token.sha256",
        directory / "api" / "write.token",
        directory / "keyholder" / "keyholder.key",
        directory / "pins" / "keyholder.toml",
    )
