"""Load benchmark of the transparency API, and the live-server helper the tests share.

`bench_api()` starts the real server (uvicorn in a subprocess, loopback only), drives N concurrent
connections at the categories endpoint for a bounded time and reports requests per second and
latency percentiles. It uses `wrk` when installed (a C load generator, so the client does not
steal the server's CPU the way a Python one does) and httpx's AsyncClient otherwise.

    python -m fedchurn.server.api_bench --connections 100 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from fedchurn.server.app_package import free_port

LOOPBACK = "127.0.0.1"


@contextmanager
def live_server(
    database_url: str, write_token: str | None = None, *, host: str = LOOPBACK, timeout: float = 30.0
) -> Iterator[str]:
    """Run `serve` in a subprocess on a free port; yields the base URL once /v1/health answers. A
    SQLite database that does not exist yet is created (`--create`): the callers write through it."""
    port = free_port(host)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FEDCHURN_WRITE_TOKEN", None)
    cmd = [
        sys.executable,
        "-m",
        "fedchurn.server.serve_cli",
        "--host",
        host,
        "--port",
        str(port),
        "--database-url",
        database_url,
        "--create",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    if write_token is not None:
        cmd.append("--writable")
        env["FEDCHURN_WRITE_TOKEN"] = write_token
    base = f"http://{host}:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    text = log.read().decode(errors="replace")
                    raise RuntimeError(f"server exited with {proc.returncode}:\n{text}")
                try:
                    if httpx.get(f"{base}/v1/health", timeout=1.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not answer on {base} within {timeout} s")
                time.sleep(0.05)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    """Requests/s, percentiles and errors from `wrk --latency` output."""
    res: dict[str, Any] = {}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    res["requests_per_s"] = float(rps.group(1)) if rps else 0.0
    res["requests"] = int(total.group(1)) if total else 0
    for pct, val in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", out, flags=re.M):
        res[f"p{pct}_ms"] = _ms(val)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in sock.groups()) if sock else 0
    return res


def _percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return 0.0
    return sorted_ms[min(len(sorted_ms) - 1, round(q / 100 * (len(sorted_ms) - 1)))]


async def _httpx_load(url: str, connections: int, seconds: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    r = await client.get(url)
                    if r.status_code != 200:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append((time.perf_counter() - t0) * 1e3)

        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - t_start
    latencies.sort()
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 50),
        "p90_ms": _percentile(latencies, 90),
        "p99_ms": _percentile(latencies, 99),
        "non_2xx": errors,
        "socket_errors": 0,
    }


def bench_api(
    connections: int = 100,
    seconds: float = 10,
    *,
    tool: str = "auto",
    path: str = "/v1/categories",
    database_url: str | None = None,
) -> dict[str, Any]:
    """Requests/s and latency percentiles of `path` under `connections` concurrent connections."""
    if tool not in ("auto", "wrk", "httpx"):
        raise ValueError("tool must be auto, wrk or httpx")
    wrk = shutil.which("wrk")
    use = "wrk" if tool == "wrk" or (tool == "auto" and wrk) else "httpx"
    if use == "wrk" and not wrk:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    seconds = max(1.0, float(seconds))
    with tempfile.TemporaryDirectory() as tmp:
        url_db = database_url or f"sqlite:///{Path(tmp) / 'bench-audit.sqlite'}"
        with live_server(url_db) as base:
            url = base + path
            httpx.get(url).raise_for_status()  # warm-up, and a wrong path fails loudly
            if use == "wrk":
                threads = max(1, min(os.cpu_count() or 1, connections))
                cmd = [
                    wrk or "wrk",
                    f"-t{threads}",
                    f"-c{connections}",
                    f"-d{int(seconds)}s",
                    "--latency",
                    url,
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30)
                res = parse_wrk(out.stdout)
                command = " ".join(cmd)
            else:
                res = asyncio.run(_httpx_load(url, connections, seconds))
                command = f"httpx.AsyncClient, {connections} concurrent connections, {seconds:g} s"
    return {
        "tool": use,
        "command": command,
        "path": path,
        "connections": connections,
        "seconds": seconds,
        **res,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "server": "uvicorn (asyncio loop), 1 worker, loopback",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Benchmark the categories endpoint on loopback.")
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--tool", choices=("auto", "wrk", "httpx"), default="auto")
    p.add_argument("--path", default="/v1/categories")
    a = p.parse_args(argv)
    print(json.dumps(bench_api(a.connections, a.seconds, tool=a.tool, path=a.path), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
