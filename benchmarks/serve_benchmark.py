"""Load benchmark of the forecast service on 127.0.0.1.

Starts ``bentoml serve service:SpotForecast`` twice with the model in ``$BENTOML_HOME``: once as
configured and once with batching switched off (``SPOT_FORECAST_MAX_BATCH_SIZE=1``). Drives
``/forecast`` (one stored series per request, horizon 24) with an aiohttp client at 1 and 16
concurrent clients, times one ``/forecast_many`` with 1,000 series, then sends 64-client loads to
the two services in turn, ``--repeats`` times, so that both meet the same background load. The
batching speed-up is the median of the per-pair throughput ratios.

    BENTOML_HOME=~/bentoml .venv/bin/python benchmarks/serve_benchmark.py

Prints one table row per load and exits with 1 when a target is missed. The load generator runs
on the same machine as the service, so it competes with it for the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
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
    # Serve as `make run` and the Bento do: no per-request tracing spans unless the caller's
    # environment sets OTEL_SDK_DISABLED itself.
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
    # Bodies are encoded before the clock starts: the load generator shares the cores with the
    # service, and every microsecond it spends is one the service cannot.
    bodies = [json.dumps({"series_id": uid, "horizon": 24}).encode() for uid in ids]
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def client() -> None:
            for i in numbers:
                body = bodies[i % len(bodies)]
                started = time.perf_counter()
                try:
                    async with session.post("/forecast", data=body, headers=headers) as response:
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


async def run_loads(on_url: str, off_url: str, scale: int, repeats: int
                    ) -> tuple[list[LoadResult], list[tuple[LoadResult, LoadResult]], float, int]:
    """Drive both services: 1 and 16 clients and /forecast_many on the batching one, then
    ``repeats`` alternating pairs of 64-client loads on each, so both see the same machine."""
    await wait_ready(on_url)
    await wait_ready(off_url)
    ids = await series_ids(on_url, 1000)
    for url in (on_url, off_url):
        await drive(url, ids, 8, 200)  # warm the connection pool and the window cache
    light = [await drive(on_url, ids, 1, 300 * scale), await drive(on_url, ids, 16, 1000 * scale)]
    many_seconds, many_ok = await time_many(on_url, ids)
    pairs = []
    for _ in range(repeats):
        pairs.append((await drive(on_url, ids, 64, 6000 * scale),
                      await drive(off_url, ids, 64, 6000 * scale)))
    return light, pairs, many_seconds, many_ok


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
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating pairs of 64-client loads with batching on and off")
    args = parser.parse_args(argv)
    url = f"http://{HOST}:{args.port}"

    # Batching off: the batcher passes every request to the network alone.
    on = start_service(args.port, {})
    off = start_service(args.port + 1, {"SPOT_FORECAST_MAX_BATCH_SIZE": "1"})
    try:
        light, pairs, many_seconds, many_ok = asyncio.run(
            run_loads(url, f"http://{HOST}:{args.port + 1}", args.scale, args.repeats))
    finally:
        stop(on)
        stop(off)

    print("| load | clients | requests | errors | requests/s | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for result in light:
        print(result.row("batching on"))
    for batched, unbatched in pairs:
        print(batched.row("batching on"))
        print(unbatched.row("batching off"))
    ratios = sorted(batched.rps / unbatched.rps for batched, unbatched in pairs)
    speedup = ratios[len(ratios) // 2]
    median_on = sorted(pairs, key=lambda pair: pair[0].rps)[len(pairs) // 2][0]
    print(f"\n/forecast_many with 1,000 series: {many_seconds:.3f} s ({many_ok} answered 200)")
    print(f"batching on / off at 64 clients, by pair: "
          f"{', '.join(f'{r:.2f}x' for r in ratios)}; median {speedup:.2f}x")

    misses = []
    if light[0].p50_ms > MAX_UNLOADED_P50_MS:
        misses.append(f"unloaded p50 {light[0].p50_ms:.1f} ms > {MAX_UNLOADED_P50_MS} ms")
    if median_on.rps < MIN_RPS_AT_64:
        misses.append(f"{median_on.rps:.0f} requests/s at 64 clients < {MIN_RPS_AT_64}")
    if median_on.p95_ms > MAX_P95_MS_AT_64:
        misses.append(f"p95 {median_on.p95_ms:.0f} ms at 64 clients > {MAX_P95_MS_AT_64} ms")
    if any(result.errors for result in [*light, *(r for pair in pairs for r in pair)]):
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
