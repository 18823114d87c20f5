"""Load benchmark of the forecast service on 127.0.0.1.

Starts ``bentoml serve service:SpotForecast`` with the model in ``$BENTOML_HOME``, drives
``/forecast`` (one stored series per request, horizon 24) with an aiohttp client at 1, 16 and 64
concurrent clients, times one ``/forecast_many`` with 1,000 series, then restarts the service with
batching switched off (``SPOT_FORECAST_MAX_BATCH_SIZE=1``) and repeats the 64-client load.

    BENTOML_HOME=~/bentoml .venv/bin/python benchmarks/serve_benchmark.py

Prints one table row per load and exits with 1 when a target is missed. The load generator runs
on the same machine as the service, so it competes with it for the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"

# Targets on a 2-core machine, load generator included.
MAX_UNLOADED_P50_MS = 15.0
MIN_RPS_AT_64 = 150.0
MAX_P95_MS_AT_64 = 500.0
MAX_MANY_SECONDS = 0.5
MIN_BATCHING_SPEEDUP = 3.0


@dataclass
class LoadResult:
    clients: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    def row(self, label: str) -> str:
        return (f"| {label} | {self.clients} | {self.requests} | {self.errors} | {self.rps:.0f} | "
                f"{self.p50_ms:.1f} | {self.p95_ms:.1f} | {self.p99_ms:.1f} |")


def start_service(port: int, extra_env: dict[str, str]) -> subprocess.Popen:
    # As `make run` and the Bento do: no per-request tracing spans unless the caller asks.
    env = {"OTEL_SDK_DISABLED": "true", **os.environ, **extra_env}
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "service:SpotForecast", "--host", HOST,
         "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return process


async def wait_ready(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"the service at {url} was not ready after {timeout:.0f} s")


async def series_ids(url: str, count: int) -> list[str]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/series", json={}) as response:
            listed = await response.json()
    ids = [item["unique_id"] for item in listed]
    return (ids * (count // max(1, len(ids)) + 1))[:count]


async def drive(url: str, ids: list[str], clients: int, requests: int) -> LoadResult:
    """Send ``requests`` forecasts from ``clients`` concurrent connections."""
    latencies: list[float] = []
    statuses: collections.Counter = collections.Counter()
    numbers = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def client() -> None:
            for i in numbers:
                body = {"series_id": ids[i % len(ids)], "horizon": 24}
                started = time.perf_counter()
                try:
                    async with session.post("/forecast", json=body) as response:
                        await response.read()
                        statuses[response.status] += 1
                except aiohttp.ClientError as error:
                    statuses[type(error).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started

    latencies.sort()

    def percentile(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    errors = requests - statuses[200]
    return LoadResult(clients, requests, errors, requests / elapsed, percentile(0.5),
                      percentile(0.95), percentile(0.99))


async def time_many(url: str, ids: list[str]) -> tuple[float, int]:
    body = {"requests": [{"series_id": uid, "horizon": 24} for uid in ids]}
    async with aiohttp.ClientSession() as session:
        # One untimed call first, so the stored windows are built and cached.
        async with session.post(url + "/forecast_many", json=body) as response:
            await response.read()
        started = time.perf_counter()
        async with session.post(url + "/forecast_many", json=body) as response:
            payload = await response.json()
        elapsed = time.perf_counter() - started
    ok = sum(1 for item in payload["results"] if item["status"] == 200)
    return elapsed, ok


async def run_batched(url: str, scale: int) -> tuple[list[LoadResult], float, int]:
    await wait_ready(url)
    ids = await series_ids(url, 1000)
    await drive(url, ids, 8, 200)  # warm the connection pool and the window cache
    results = [
        await drive(url, ids, 1, 300 * scale),
        await drive(url, ids, 16, 1000 * scale),
        await drive(url, ids, 64, 6000 * scale),
    ]
    many_seconds, many_ok = await time_many(url, ids)
    return results, many_seconds, many_ok


async def run_unbatched(url: str, scale: int) -> LoadResult:
    await wait_ready(url)
    ids = await series_ids(url, 1000)
    await drive(url, ids, 8, 200)
    return await drive(url, ids, 64, 6000 * scale)


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=3931, help="port to serve on")
    parser.add_argument("--scale", type=int, default=1, help="multiply the request counts")
    args = parser.parse_args(argv)
    url = f"http://{HOST}:{args.port}"

    service = start_service(args.port, {})
    try:
        batched, many_seconds, many_ok = asyncio.run(run_batched(url, args.scale))
    finally:
        stop(service)
    service = start_service(args.port, {"SPOT_FORECAST_MAX_BATCH_SIZE": "1"})
    try:
        unbatched = asyncio.run(run_unbatched(url, args.scale))
    finally:
        stop(service)

    print("| load | clients | requests | errors | requests/s | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for result in batched:
        print(result.row("batching on"))
    print(unbatched.row("batching off"))
    speedup = batched[2].rps / unbatched.rps
    print(f"\n/forecast_many with 1,000 series: {many_seconds:.3f} s ({many_ok} answered 200)")
    print(f"batching on / off at 64 clients: {speedup:.2f}x")

    misses = []
    if batched[0].p50_ms > MAX_UNLOADED_P50_MS:
        misses.append(f"unloaded p50 {batched[0].p50_ms:.1f} ms > {MAX_UNLOADED_P50_MS} ms")
    if batched[2].rps < MIN_RPS_AT_64:
        misses.append(f"{batched[2].rps:.0f} requests/s at 64 clients < {MIN_RPS_AT_64}")
    if batched[2].p95_ms > MAX_P95_MS_AT_64:
        misses.append(f"p95 {batched[2].p95_ms:.0f} ms at 64 clients > {MAX_P95_MS_AT_64} ms")
    if any(result.errors for result in [*batched, unbatched]):
        misses.append("some requests failed")
    if many_seconds > MAX_MANY_SECONDS or many_ok != 1000:
        misses.append(f"/forecast_many took {many_seconds:.3f} s for {many_ok} answers")
    if speedup < MIN_BATCHING_SPEEDUP:
        misses.append(f"batching speedup {speedup:.2f}x < {MIN_BATCHING_SPEEDUP}x")
    for miss in misses:
        print(f"target missed: {miss}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
