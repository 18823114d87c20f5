"""Run ``bentoml serve`` as a child process on 127.0.0.1 for tests that need a real server.

``bentoml.serve`` runs the arbiter inside the test process. A child process has its own process
tree and its own environment (an empty ``BENTOML_HOME``, for example), and its log file shows why
a start-up failed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


@dataclass
class ServiceProcess:
    """A started ``bentoml serve`` process and where to reach it."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def log_tail(self, characters: int = 4000) -> str:
        """The end of the server's combined stdout and stderr."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-characters:]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def start(target: str, log_path: Path, *, env: dict[str, str] | None = None,
          cwd: Path = ROOT) -> ServiceProcess:
    """Start ``bentoml serve TARGET`` on a free port; ``env`` replaces the environment."""
    port = free_port()
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", target, "--host", HOST, "--port", str(port)],
        cwd=cwd, env=env if env is not None else dict(os.environ),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    return ServiceProcess(process, f"http://{HOST}:{port}", log_path)


def wait_until_ready(service: ServiceProcess, timeout: float = 180.0) -> float:
    """Poll ``/readyz`` until it returns 200; return the seconds waited.

    Raises RuntimeError with the server log when the process exits first, and TimeoutError when
    ``timeout`` seconds pass.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if service.process.poll() is not None:
            raise RuntimeError(
                f"bentoml serve exited with {service.process.returncode} before it was ready:\n"
                f"{service.log_tail()}"
            )
        try:
            if httpx.get(service.url + "/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass  # the worker has not taken the socket yet
        time.sleep(0.25)
    raise TimeoutError(f"{service.url} was not ready after {timeout:.0f} s:\n{service.log_tail()}")


def stop(service: ServiceProcess, timeout: float = 30.0) -> None:
    """Stop the server and its workers: SIGTERM, then SIGKILL to its process group."""
    if service.process.poll() is None:
        service.process.terminate()
        try:
            service.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait()


@contextmanager
def serving(target: str, log_path: Path, *, env: dict[str, str] | None = None,
            cwd: Path = ROOT, timeout: float = 180.0) -> Iterator[ServiceProcess]:
    """Start a server, wait until it is ready, and stop it on exit."""
    service = start(target, log_path, env=env, cwd=cwd)
    try:
        wait_until_ready(service, timeout)
        yield service
    finally:
        stop(service)
