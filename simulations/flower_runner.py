"""Run the fedchurn Flower app on Flower's simulation engine via `flwr run`.

We start our own SuperLink (simulation mode, free loopback port, runtime dependency installation
disabled so nothing is pip/uv-installed behind our back), point an isolated FLWR_HOME at it,
run `flwr run` on a generated app folder, and always stop the SuperLink afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx

from fedchurn.server import app_package
from fedchurn.server.app_package import flower_bin, free_port
from fedchurn.shared.run_config import RunConfig

STARTUP_TIMEOUT_S = 60.0
MARK_ENV = "FEDCHURN_RUN_MARK"  # in the environment of every process a run starts
STOP_GRACE_S = 5.0
# (serverapp, clientapp) of the generated Flower app: fedchurn's own apps unless a caller names others.
FEDCHURN_COMPONENTS = ("fedchurn.server.app:app", "fedchurn.simulations.flower_client:app")


def app_pyproject(
    defaults: RunConfig | None = None, components: tuple[str, str] = FEDCHURN_COMPONENTS
) -> str:
    """The simulation app's pyproject.toml (see `server.app_package`)."""
    return app_package.app_pyproject(components[1], defaults, serverapp=components[0])


class FlowerRunError(RuntimeError):
    pass


def run_flower(
    cfg: RunConfig,
    work_dir: Path,
    num_supernodes: int,
    on_poll: Callable[[], None] | None = None,
    timeout_s: float = 4 * 3600,
    components: tuple[str, str] = FEDCHURN_COMPONENTS,
    env: dict[str, str] | None = None,
) -> None:
    """Run one federated simulation; returns when the ServerApp has finished.

    `components` lets a benchmark run other apps (Flower's quickstart FedAvg) on the same engine;
    `env` is added to the SuperLink's environment, which its ServerApp and simulated nodes inherit
    (the provisioning of `simulations.provision`)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    app_dir = work_dir / "flower-app"
    app_dir.mkdir(exist_ok=True)
    (app_dir / "pyproject.toml").write_text(app_pyproject(components=components))
    home = work_dir / "flwr-home"
    home.mkdir(exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "fedchurn"\n\n'
        f'[superlink.fedchurn]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    mark = uuid.uuid4().hex
    env = {
        **os.environ,
        **(env or {}),
        MARK_ENV: mark,  # every process of this run inherits it, Ray's agents included
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_DEDUP_LOGS": "0",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    log_path = work_dir / "flower.log"
    # A SIGTERM must still stop the SuperLink (Python skips `finally` blocks on SIGTERM by default).
    previous = (
        signal.signal(signal.SIGTERM, _raise_exit)
        if threading.current_thread() is threading.main_thread()
        else None
    )
    with log_path.open("w") as log:
        link = subprocess.Popen(
            [
                flower_bin("flower-superlink"),
                "--insecure",
                "--simulation",
                "--isolation",
                "subprocess",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        run: subprocess.Popen[bytes] | None = None
        try:
            _wait_healthy(link, port, log_path)
            run_config = app_package.write_run_config(cfg, work_dir / "run-config.toml")
            run = subprocess.Popen(
                [
                    flower_bin("flwr"),
                    "run",
                    str(app_dir),
                    "fedchurn",
                    "--stream",
                    "--federation-config",
                    engine_config(num_supernodes),
                    "--run-config",
                    str(run_config),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            deadline = time.monotonic() + timeout_s
            while run.poll() is None:
                if on_poll:
                    on_poll()
                if time.monotonic() > deadline:
                    run.kill()
                    raise FlowerRunError(f"flwr run exceeded {timeout_s:.0f} s; see {log_path}")
                time.sleep(0.5)
            if run.returncode != 0:
                raise FlowerRunError(f"flwr run exited with {run.returncode}; see {log_path}")
        finally:
            with _signals_held():
                stop_run(mark, (link, run) if run is not None else (link,))
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    if on_poll:
        on_poll()


def engine_config(num_supernodes: int, cores: int | None = None) -> str:
    """`flwr run --federation-config` for `num_supernodes` nodes, one CPU each. Ray starts one
    ClientApp actor per CPU it is given, and each actor imports the ClientApp (torch included,
    ~6 s of CPU): with fewer nodes than cores, the engine gets as many CPUs as there are nodes, so
    no actor starts only to stay idle."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    out = f"num-supernodes={num_supernodes} client-resources-num-cpus=1"
    if num_supernodes < cores:
        out += f" init-args-num-cpus={num_supernodes}"
    return out


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM ignored while a run's processes are stopped (at most two grace periods):
    a second Ctrl-C would otherwise abort the stop half-way and leave the processes that ignore
    SIGTERM running. Only the main thread can set signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FlowerRunError(f"flower-superlink exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise FlowerRunError(
        f"flower-superlink did not become healthy in {STARTUP_TIMEOUT_S:.0f} s; see {log_path}"
    )


def run_processes(mark: str, sessions: frozenset[int] = frozenset()) -> list[tuple[int, int]]:
    """Processes of this run, as (pid, session) (Linux /proc; elsewhere none are found): those
    whose environment carries the run's mark, and those still in a session the run started. Both
    are needed: Ray's agents rewrite their command line over their environment (so the mark is
    gone from /proc/PID/environ) but keep the SuperLink's session when they are reparented."""
    needle = f"{MARK_ENV}={mark}".encode()
    seen: list[tuple[int, int, bool]] = []  # (pid, session, carries the mark)
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            session = int(stat[stat.rindex(")") + 2 :].split()[3])  # state ppid pgrp session
        except (OSError, ValueError, IndexError):
            continue  # gone
        try:
            marked = needle in (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            marked = False  # unreadable (a zombie, another user's): its session still counts
        seen.append((int(entry.name), session, marked))
    # A marked process may lead a session of its own (Flower starts the simulation process with
    # one, and Ray's agents inherit it): that session is the run's too, never the caller's.
    runs = set(sessions) | {sid for _, sid, marked in seen if marked}
    runs.discard(os.getsid(0))
    return [(pid, sid) for pid, sid, marked in seen if marked or sid in runs]


def stop_run(mark: str, children: Sequence[subprocess.Popen[bytes]] = ()) -> None:
    """Stop every process of the run (`run_processes`), wherever it was reparented (Ray's
    dashboard and runtime-env agents outlive their parents): SIGTERM to all of them at once, then
    SIGKILL what is left after one grace period. A SuperLink whose run is still going (Ctrl-C, a
    timeout) waits ~20 s on SIGTERM for its simulation, and Ray's agents ignore SIGTERM; nothing of
    the run is kept in either, so both get the same grace as the rest, side by side. `children`
    (the SuperLink, `flwr run`: each leads its own session) are reaped as they exit, so that no
    zombie of ours keeps its session in the scan. Every session seen is kept for the later scans:
    Ray's agents are found only by their session once the marked processes that shared it have
    exited. A process started while the others stop (Ray restarts an agent it sees die) is caught
    by the next scan."""
    sessions = frozenset(c.pid for c in children)
    signalled: set[int] = set()
    deadline = time.monotonic() + STOP_GRACE_S
    while True:
        for child in children:
            child.poll()  # reaps it once it has exited
        found = run_processes(mark, sessions)
        if not found:
            break
        sessions |= {sid for _, sid in found}
        pids = [pid for pid, _ in found]
        late = time.monotonic() >= deadline
        for pid in pids:
            if late or pid not in signalled:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL if late else signal.SIGTERM)
                signalled.add(pid)
        if late and time.monotonic() >= deadline + STOP_GRACE_S:
            break  # unkillable (another user's?): give up rather than hang
        time.sleep(0.1)
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=STOP_GRACE_S)
