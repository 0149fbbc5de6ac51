"""The benchmark harness runs (briefly) and reports sane figures; full figures: docs/benchmarks.md."""

from __future__ import annotations

import pytest

from fedchurn.server.api_bench import bench_api, parse_wrk

# wrk pads the 99% line with a trailing space (kept below with an explicit \n).
WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8000/v1/categories
  2 threads and 100 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    40.12ms    5.01ms  90.00ms   80.00%
  Latency Distribution
     50%   39.00ms
     75%   42.00ms
     90%   45.00ms
     99%    1.20s \n  24800 requests in 10.00s, 500.00MB read
Requests/sec:   2480.00
Transfer/sec:     50.00MB
"""


def test_parse_wrk() -> None:
    r = parse_wrk(WRK_OUTPUT)
    assert r["requests"] == 24800 and r["requests_per_s"] == 2480.0
    assert r["p50_ms"] == 39.0 and r["p99_ms"] == 1200.0 and r["non_2xx"] == 0


def test_bench_api_runs() -> None:
    """The Python fallback end to end (wrk's side is its output, parsed above); one short run."""
    r = bench_api(connections=8, seconds=1, tool="httpx")
    assert r["tool"] == "httpx" and r["requests"] > 0 and r["requests_per_s"] > 0
    assert 0 < r["p50_ms"] <= r["p99_ms"] and r["non_2xx"] == 0


def test_bench_api_refuses_unknown_tools() -> None:
    with pytest.raises(ValueError, match="tool"):
        bench_api(tool="ab")
