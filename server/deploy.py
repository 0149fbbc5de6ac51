"""Deployment on Flower's deployment engine: secrets, and the processes of one federation.

`make_secrets` writes (with `cryptography` only), one folder per party: a CA, a TLS certificate of
its own for each of the SuperLink, the key holder and the transparency API, one EC P-384 key pair
per SuperNode (OpenSSH format, what `flower-supernode --auth-supernode-private-key` and
`flwr supernode register` read), the key holder's X25519 key and CKKS contexts and the public pin
every SuperNode is configured with, the aggregator's bearer token for the key holder (the key
holder keeps only its hash) and the API's write token. Private files are created 0600 and never
printed; no secret is ever put on a command line.

`Federation` starts and stops the processes of a deployment on one machine (the integration tests
and `fedchurn deploy local` use it): a SuperLink with TLS and SuperNode authentication, SuperNodes
that each serve a folder of device stores, the key holder service, the transparency API, and
`flwr run` against that SuperLink. Every process runs in its own process group and is stopped on
exit, also on SIGTERM. On several machines, run the same commands (`fedchurn deploy ...`) by hand.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedchurn.server import app_package
from fedchurn.server.app_package import flower_bin, free_port
from fedchurn.server.keyholder import KeyHolder
from fedchurn.server.settings import SETTINGS_ENV, AggregatorSettings
from fedchurn.shared.keyholder_pin import KeyHolderPin
from fedchurn.shared.run_config import RunConfig

SECRET_MODE = 0o600
KEYHOLDER_TOKEN_ENV = "FEDCHURN_KEYHOLDER_TOKEN"
STARTUP_TIMEOUT_S = 90.0
CERT_DAYS = 365
DEPLOY_CLIENTAPP = "fedchurn.client.deploy_client:app"


# --- secrets -------------------------------------------------------------------------------------


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
) -> Secrets:
    """Write a deployment's CA, each service's own TLS certificate, SuperNode keys, the key holder's
    keys and pin, and bearer tokens, one folder per party (see `Secrets`)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca()
    (directory / "ca").mkdir(exist_ok=True)
    ca_path = directory / "ca" / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    # The CA's private key is not kept: nothing else gets signed (re-run to rotate everything).
    _tls(directory / "superlink", ca_key, ca_cert, hosts)
    _tls(directory / "keyholder", ca_key, ca_cert, keyholder_hosts or hosts)
    _tls(directory / "api", ca_key, ca_cert, api_hosts or hosts)
    for i in range(n_nodes):
        make_node_key(directory / "nodes", f"node-{i}")
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
    pubs = sorted((directory / "nodes").glob("node-*.pub"), key=lambda p: int(p.stem.split("-")[1]))

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


# --- the services fedchurn adds (key holder, transparency API) -------------------------------------


def _serve_tls(app: Any, host: str, port: int, certfile: Path, keyfile: Path) -> None:
    """uvicorn over TLS, quiet: no access log, so no request line (or token) reaches a log."""
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
        log_level="warning",
        access_log=False,
    )


def serve_keyholder(
    host: str,
    port: int,
    directory: Path,
    state_path: Path,
    k_min: int = 10,
    min_noise_multiplier: float = 0.0,
    horizon: int = 14,
) -> None:
    """Run the key holder service over HTTPS from its own folder (`Secrets.keyholder`'s: TLS key
    and certificate, provisioned X25519 key and CKKS contexts, the SHA-256 of the aggregator's
    token); its once-only state persists across restarts in `state_path`.

    Evaluation histograms of runs with this `horizon` are answered below the noise floor (they are
    not model updates; see docs/privacy.md)."""

    from fedchurn.server.keyholder_service import create_app
    from fedchurn.shared.evaluation import histogram_length

    exempt = [
        (RunConfig(horizon=horizon, k_min=k_min, protection=m).eval_protection(), histogram_length(horizon))
        for m in ("secagg", "ckks")
    ]
    kh = KeyHolder.open(
        directory / "keyholder.key",
        state_path,
        k_min=k_min,
        min_noise_multiplier=min_noise_multiplier,
        noise_exempt=exempt,
    )
    token_sha256 = bytes.fromhex((directory / "aggregator-token.sha256").read_text().strip())
    app = create_app(kh, token_sha256=token_sha256)
    _serve_tls(app, host, port, directory / "tls.pem", directory / "tls.key")


def serve_api(
    host: str, port: int, database_url: str, certfile: Path, keyfile: Path, token_file: Path | None = None
) -> None:
    """Run the transparency API over HTTPS (read-only unless a write-token file is given)."""

    from fedchurn.server.api import create_app
    from fedchurn.server.serve_cli import resolve_write_token

    token = resolve_write_token(token_file is not None, token_file=token_file)
    _serve_tls(create_app(database_url, token), host, port, certfile, keyfile)


# --- processes -----------------------------------------------------------------------------------


class DeployError(RuntimeError):
    pass


def app_pyproject(clientapp: str = DEPLOY_CLIENTAPP) -> str:
    """The Flower app `flwr run` ships to the SuperLink (a FAB): components from the installed package."""
    return app_package.app_pyproject(clientapp)


def superlink_cmd(sec: Secrets, host: str, port: int, database: Path | None = None) -> list[str]:
    """`flower-superlink` with TLS on every API, SuperNode authentication, no `uv sync` of the app."""
    cmd = [
        flower_bin("flower-superlink"),
        "--ssl-ca-certfile",
        str(sec.ca_cert),
        "--ssl-certfile",
        str(sec.superlink.cert),
        "--ssl-keyfile",
        str(sec.superlink.key),
        "--enable-supernode-auth",
        "--isolation",
        "subprocess",
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    return cmd + (["--database", str(database)] if database is not None else [])


def supernode_cmd(
    sec: Secrets, i: int, superlink: str, store_dir: Path, extra_config: str = "", runtime_port: int = 9094
) -> list[str]:
    """`flower-supernode` number i: verifies the SuperLink's certificate, signs in with its key, and
    pins the key holder (public values only: the pin is what makes the node trust nothing else)."""
    private, _ = sec.node_keys[i]
    node_config = f'store-dir="{store_dir}" {sec.keyholder_pin().node_config_arg()}'
    node_config += f" {extra_config}" if extra_config else ""
    return [
        flower_bin("flower-supernode"),
        "--superlink",
        superlink,
        "--root-certificates",
        str(sec.ca_cert),
        "--auth-supernode-private-key",
        str(private),
        "--node-config",
        node_config,
        "--isolation",
        "subprocess",
        "--host",
        "127.0.0.1",
        "--port",
        str(runtime_port),
    ]


def write_flwr_config(home: Path, superlink: str, ca_cert: Path) -> Path:
    """The `flwr` CLI's connection to the SuperLink (FLWR_HOME/config.toml), TLS with our CA."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(
        '[superlink]\ndefault = "fedchurn"\n\n'
        f'[superlink.fedchurn]\naddress = "{superlink}"\nroot-certificates = "{ca_cert}"\n'
    )
    return path


def register_node(public_key: Path, env: dict[str, str]) -> int:
    """`flwr supernode register` a SuperNode's public key (FLWR_HOME in `env`); its Flower node id."""
    out = subprocess.run(
        [flower_bin("flwr"), "supernode", "register", str(public_key), "fedchurn", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        return int(json.loads(out.stdout[out.stdout.index("{") :])["node-id"])
    except (ValueError, KeyError) as e:
        detail = f"{out.stdout[-2000:]} {out.stderr[-2000:]}"
        raise DeployError(f"registering {public_key} failed: {detail}") from e


def stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 20.0) -> None:
    """Stop a process we started and everything it started (its own process group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=wait)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@dataclass
class Federation:
    """The processes of one deployment on this machine; use as a context manager (stops them all).

    Ports are picked free on loopback unless given. `logs/` holds one log per process; each run's
    results land in `runs/<run name>/` (the aggregator settings' `out_root`).
    """

    work: Path
    secrets: Secrets
    audit_db: str = ""
    host: str = "127.0.0.1"
    superlink_port: int = 0
    keyholder_port: int = 0
    api_port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    node_ids: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "logs").mkdir(exist_ok=True)
        self.superlink_port = self.superlink_port or free_port()
        self.keyholder_port = self.keyholder_port or free_port()
        self.api_port = self.api_port or free_port()
        self.home = self.work / "flwr-home"
        self.home.mkdir(exist_ok=True)
        self._previous: Any = None
        # The aggregator's private settings: read by every ServerApp the SuperLink starts.
        self.settings = AggregatorSettings(
            out_root=str(self.work / "runs"),
            audit_db=self.audit_db,
            state_db=f"sqlite:///{self.work / 'state.sqlite'}",
            keyholder_url=self.keyholder_url,
            keyholder_ca=str(self.secrets.ca_cert),
            keyholder_token_file=str(self.secrets.aggregator_token),
        )
        self.settings_file = self.settings.write(self.secrets.dir / "aggregator" / "aggregator.toml")

    # -- lifecycle
    def __enter__(self) -> Federation:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _raise_exit)
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            stop_group(self.procs.pop(name))

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop one process (SIGKILL simulates a crash)."""
        stop_group(self.procs.pop(name), sig)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }

    def log_path(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    def run_dir(self, run_name: str) -> Path:
        """Where the ServerApp writes the results of the run named `run_name`."""
        out = self.settings.results_dir(run_name)
        assert out is not None
        return out

    def _start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with self.log_path(name).open("ab") as log:
            proc = subprocess.Popen(
                cmd, env=env or self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[name] = proc
        return proc

    def _wait_https(self, name: str, url: str) -> None:
        proc = self.procs[name]
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        ctx = ssl.create_default_context(cafile=str(self.secrets.ca_cert))
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DeployError(f"{name} exited with {proc.returncode}; see {self.log_path(name)}")
            try:
                if httpx.get(url, timeout=2.0, verify=ctx).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise DeployError(f"{name} did not answer {url} in {STARTUP_TIMEOUT_S:.0f} s")

    # -- the SuperLink, its CLI connection and SuperNode registration
    @property
    def superlink_address(self) -> str:
        return f"{self.host}:{self.superlink_port}"

    def start_superlink(self, database: Path | None = None) -> None:
        """TLS on every API, SuperNode authentication on, no runtime dependency installation; its
        ServerApps read the aggregator settings named in its environment."""
        write_flwr_config(self.home, self.superlink_address, self.secrets.ca_cert)
        env = {**self.env, SETTINGS_ENV: str(self.settings_file)}
        self._start("superlink", superlink_cmd(self.secrets, self.host, self.superlink_port, database), env)
        self._wait_https("superlink", f"https://{self.superlink_address}/health")

    def register_nodes(self) -> dict[int, int]:
        """`flwr supernode register` every node's public key; returns {node index: Flower node id}."""
        for i, (_, pub) in enumerate(self.secrets.node_keys):
            self.node_ids[i] = register_node(pub, self.env)
        return self.node_ids

    def online_nodes(self) -> set[int]:
        """Flower node ids the SuperLink sees online (`flwr supernode ls`)."""
        out = subprocess.run(
            [flower_bin("flwr"), "supernode", "ls", "fedchurn", "--format", "json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        try:
            doc = json.loads(out.stdout[out.stdout.index("{") :])
        except ValueError:
            return set()
        return {int(n["node-id"]) for n in doc.get("nodes", []) if n.get("status") == "online"}

    def wait_nodes_online(self, n: int, timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while len(self.online_nodes()) < n:
            if time.monotonic() > deadline:
                raise DeployError(f"fewer than {n} SuperNodes online after {timeout:.0f} s")
            time.sleep(1.0)

    def start_supernode(self, i: int, store_dir: Path, extra_config: str = "") -> None:
        """A SuperNode serving the device stores in `store_dir`, authenticated by its private key,
        trusting only the pinned key holder."""
        cmd = supernode_cmd(self.secrets, i, self.superlink_address, store_dir, extra_config, free_port())
        self._start(f"supernode-{i}", cmd)

    # -- fedchurn's services
    @property
    def keyholder_url(self) -> str:
        return f"https://{self.host}:{self.keyholder_port}"

    @property
    def api_url(self) -> str:
        return f"https://{self.host}:{self.api_port}"

    def start_keyholder(self, k_min: int = 10, min_noise_multiplier: float = 0.0) -> None:
        """The key holder, from its own folder only (`Secrets.keyholder`)."""
        self._start(
            "keyholder",
            [
                sys.executable,
                "-m",
                "fedchurn.server.deploy",
                "keyholder",
                "--host",
                self.host,
                "--port",
                str(self.keyholder_port),
                "--dir",
                str(self.secrets.keyholder_key.parent),
                "--state",
                str(self.work / "keyholder-state.sqlite"),
                "--k-min",
                str(k_min),
                "--min-noise-multiplier",
                str(min_noise_multiplier),
            ],
        )
        self._wait_https("keyholder", f"{self.keyholder_url}/v1/health")

    def start_api(self) -> None:
        """The transparency API over the audit database, whose URL travels in its environment."""
        self._start(
            "api",
            [
                sys.executable,
                "-m",
                "fedchurn.server.deploy",
                "api",
                "--host",
                self.host,
                "--port",
                str(self.api_port),
                "--dir",
                str(self.secrets.api.cert.parent),
            ],
            env={**self.env, DATABASE_URL_ENV: self.audit_db},
        )
        self._wait_https("api", f"{self.api_url}/v1/health")

    # -- the run
    def start_run(self, cfg: RunConfig, name: str = "run") -> subprocess.Popen[bytes]:
        """`flwr run` the fedchurn app on this SuperLink; its output goes to logs/<name>.log. The run
        config travels in a file; nothing of the aggregator's settings is in it."""
        app_dir = self.work / "flower-app"
        app_dir.mkdir(exist_ok=True)
        (app_dir / "pyproject.toml").write_text(app_pyproject())
        run_config = app_package.write_run_config(cfg, self.work / "run-configs" / f"{name}.toml")
        return self._start(
            name,
            [
                flower_bin("flwr"),
                "run",
                str(app_dir),
                "fedchurn",
                "--stream",
                "--run-config",
                str(run_config),
            ],
        )

    def wait(self, name: str, timeout: float) -> int:
        proc = self.procs[name]
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(name)
            raise DeployError(
                f"{name} did not finish in {timeout:.0f} s; see {self.log_path(name)}"
            ) from None


@contextlib.contextmanager
def local_federation(
    work: Path,
    store_dirs: Sequence[Path],
    audit_db: str,
    k_min: int,
    min_noise_multiplier: float = 0.0,
    extra_config: str = "",
) -> Iterator[Federation]:
    """Everything on loopback with TLS: SuperLink, one SuperNode per store folder, key holder, API,
    each party with its own secrets (`make_secrets`)."""
    sec = make_secrets(work / "secrets", len(store_dirs))
    with Federation(work, sec, audit_db) as fed:
        fed.start_keyholder(k_min=k_min, min_noise_multiplier=min_noise_multiplier)
        fed.start_api()
        fed.start_superlink()
        fed.register_nodes()
        for i, d in enumerate(store_dirs):
            fed.start_supernode(i, d, extra_config)
        fed.wait_nodes_online(len(store_dirs))
        yield fed


def population_stores(
    root: Path, n_nodes: int, per_node: int, seed: int = 0, scenario: str = "default", days: int = 120
) -> tuple[list[Path], int]:
    """Device stores for a demo or test federation: synthetic devices written into per-node folders
    exactly as `fedchurn import` writes real ones. Returns the folders and the population's today."""
    from fedchurn.client.store import EventStore
    from fedchurn.simulations.population import generate_device
    from fedchurn.simulations.scenario import load_scenario

    sc = load_scenario(scenario)
    dirs, today = [], 0
    for n in range(n_nodes):
        d = root / f"node-{n}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_node):
            i = n * per_node + j
            dev = generate_device(seed, i, sc, days)
            today = int(dev.truth["today"])
            with EventStore(d / f"user-{i:05d}.sqlite") as store:
                store.append(dev.events)
        dirs.append(d)
    return dirs, today


# --- `python -m fedchurn.server.deploy keyholder|api` (what the Federation starts) -----------------


DATABASE_URL_ENV = "FEDCHURN_DATABASE_URL"


def database_url_from(argument: str | None, where: str = "--database-url") -> str:
    """A database URL from the command line (no password allowed there: every local user can read
    a command line) or else from $FEDCHURN_DATABASE_URL."""
    if argument:
        from sqlalchemy.engine import make_url

        if make_url(argument).password:
            raise SystemExit(
                f"{where} holds a password, which any local user could read on the command line: "
                f"pass the URL in ${DATABASE_URL_ENV} instead"
            )
        return argument
    url = os.environ.get(DATABASE_URL_ENV, "")
    if not url:
        raise SystemExit(f"no database: give {where} or set ${DATABASE_URL_ENV}")
    return url


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m fedchurn.server.deploy", description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    k = sub.add_parser("keyholder", help="the key holder service (HTTPS)")
    k.add_argument("--host", default="127.0.0.1")
    k.add_argument("--port", type=int, default=8443)
    k.add_argument(
        "--dir", type=Path, required=True, help="the key holder's folder from `fedchurn deploy certs`"
    )
    k.add_argument("--state", type=Path, required=True, help="once-only state (SQLite)")
    k.add_argument("--k-min", type=int, default=10)
    k.add_argument("--min-noise-multiplier", type=float, default=0.0)
    k.add_argument("--horizon", type=int, default=14, help="runs' horizon (evaluation histograms)")
    a = sub.add_parser("api", help="the transparency API (HTTPS, read-only)")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8444)
    a.add_argument("--database-url", default=None, help=f"no password here; else ${DATABASE_URL_ENV}")
    a.add_argument("--dir", type=Path, required=True, help="the API's folder from `fedchurn deploy certs`")
    a.add_argument("--writable", action="store_true", help="accept the aggregator's writes (write.token)")
    args = p.parse_args(argv)
    if args.what == "keyholder":
        serve_keyholder(
            args.host, args.port, args.dir, args.state, args.k_min, args.min_noise_multiplier, args.horizon
        )
    else:
        serve_api(
            args.host,
            args.port,
            database_url_from(args.database_url),
            args.dir / "tls.pem",
            args.dir / "tls.key",
            args.dir / "write.token" if args.writable else None,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
