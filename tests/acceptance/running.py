"""`orthanc-openmrs run` as a subprocess, with its HTTP surface, for the acceptance tests."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO

import httpx
from test_cli import _clean_environment, _command


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


class Run:
    """The service running until `stop()`; `stdout`/`stderr` hold its output afterwards."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.port = int(env["SYNC_HTTP_PORT"])
        self.process = subprocess.Popen(
            [*_command(), "run", *args],
            env={**_clean_environment(), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Read as it comes: a full pipe would block the service in the middle of a log line.
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=_drain, args=(self.process.stdout, self._out), daemon=True),
            threading.Thread(target=_drain, args=(self.process.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.stdout = self.stderr = ""

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def answers(self, path: str, status: int) -> bool:
        try:
            return self.get(path).status_code == status
        except httpx.TransportError:
            return False

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        for reader in self._readers:
            reader.join(timeout=10)
        self.stdout, self.stderr = "".join(self._out), "".join(self._err)
        return self.process.returncode

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _drain(stream: IO[str] | None, into: list[str]) -> None:
    if stream is not None:
        with stream:
            for line in stream:
                into.append(line)
