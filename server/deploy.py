"""Deployment on Flower's deployment engine: the processes of one federation.

`Federation` starts and stops the processes of a deployment on one machine (the integration tests
and `fedchurn deploy local` use it): a SuperLink with TLS and SuperNode authentication, SuperNodes
that each serve a folder of device stores, the key holder service and the transparency API
(`deploy_services`), and `flwr run` against that SuperLink, all from the folders
`deploy_secrets.make_secrets` wrote. Every process runs in its own process group and is stopped on
exit, also on SIGTERM. On several machines, run the same commands (`fedchurn deploy ...`) by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from fedchurn.client.pinned_app import CLIENTAPP as DEPLOY_CLIENTAPP
from fedchurn.client.pinned_app import shim_dir
from fedchurn.server import app_package
from fedchurn.server.app_package import flower_bin, free_port
from fedchurn.server.database_url import DATABASE_URL_ENV
from fedchurn.server.deploy_secrets import Secrets, make_secrets
from fedchurn.server.settings import SETTINGS_ENV, AggregatorSettings
from fedchurn.shared.run_config import RunConfig

STARTUP_TIMEOUT_S = 90.0
CLIENTAPP_BIN = ".clientapp-bin"  # in a node's store folder: the checked `flwr-clientapp` (client.pinned_app)


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
    if not 0 <= i < len(sec.node_keys):
        raise DeployError(f"node {i}: {sec.dir / 'nodes'} holds the keys of {len(sec.node_keys)} SuperNodes")
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


def supernode_env(store_dir: Path, base: dict[str, str]) -> dict[str, str]:
    """`base` with the checked `flwr-clientapp` first on PATH (then this interpreter's venv, where
    Flower's own commands are): the SuperNode starts every ClientApp through it, so it runs
    fedchurn's ClientApp or nothing (`client.pinned_app`)."""
    first = shim_dir(store_dir / CLIENTAPP_BIN)
    path = os.pathsep.join([str(first), str(Path(sys.executable).parent), base.get("PATH", "")])
    return {**base, "PATH": path}


def write_flwr_config(home: Path, superlink: str, ca_cert: Path) -> Path:
    """The `flwr` CLI's connection to the SuperLink (FLWR_HOME/config.toml), TLS with our CA (by its
    absolute path: `flwr` resolves none against the folder it was written from)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(  # TOML basic strings: JSON's escapes are TOML's
        '[superlink]\ndefault = "fedchurn"\n\n'
        f"[superlink.fedchurn]\naddress = {json.dumps(superlink)}\n"
        f"root-certificates = {json.dumps(str(ca_cert.resolve()))}\n"
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
    pending: dict[str, str] = field(default_factory=dict)  # service -> health URL not yet checked
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

    def wait_answering(self) -> None:
        """Wait until every service started since the last call answers its health check. The
        services start side by side (each takes ~2 s of Python start-up before it answers), and
        none needs another to start."""
        while self.pending:
            name, url = self.pending.popitem()
            self._wait_https(name, url)

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
        ServerApps read the aggregator settings named in its environment. Returns at once
        (`wait_answering`)."""
        write_flwr_config(self.home, self.superlink_address, self.secrets.ca_cert)
        env = {**self.env, SETTINGS_ENV: str(self.settings_file)}
        self._start("superlink", superlink_cmd(self.secrets, self.host, self.superlink_port, database), env)
        self.pending["superlink"] = f"https://{self.superlink_address}/health"

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
        self._start(f"supernode-{i}", cmd, supernode_env(store_dir, self.env))

    # -- fedchurn's services
    @property
    def keyholder_url(self) -> str:
        return f"https://{self.host}:{self.keyholder_port}"

    @property
    def api_url(self) -> str:
        return f"https://{self.host}:{self.api_port}"

    def start_keyholder(self, k_min: int = 10, min_noise_multiplier: float = 0.0) -> None:
        """The key holder, from its own folder only (`Secrets.keyholder`). Returns at once
        (`wait_answering`)."""
        self._start(
            "keyholder",
            [
                sys.executable,
                "-m",
                "fedchurn.server.deploy_services",
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
        self.pending["keyholder"] = f"{self.keyholder_url}/v1/health"

    def start_api(self) -> None:
        """The transparency API over the audit database, whose URL travels in its environment.
        Returns at once (`wait_answering`)."""
        self._start(
            "api",
            [
                sys.executable,
                "-m",
                "fedchurn.server.deploy_services",
                "api",
                "--host",
                self.host,
                "--port",
                str(self.api_port),
                "--dir",
                str(self.secrets.api.cert.parent),
                "--create",  # the run writes the audit database after the API has started
            ],
            env={**self.env, DATABASE_URL_ENV: self.audit_db},
        )
        self.pending["api"] = f"{self.api_url}/v1/health"

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
        fed.wait_answering()
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
