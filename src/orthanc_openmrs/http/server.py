"""The HTTP surface: a stdlib threading HTTP server in a daemon thread, GET and HEAD only.

Three read-only routes need no framework; the stdlib keeps the image small and adds no
dependency or event loop to a service that is threads throughout.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from orthanc_openmrs.http import health
from orthanc_openmrs.http.metrics import CONTENT_TYPE, LedgerReader, Metrics
from orthanc_openmrs.monitor import Monitor

log = structlog.get_logger("orthanc_openmrs")

_JSON = "application/json"


class Routes:
    """What each path answers: (status, content type, body)."""

    def __init__(
        self,
        monitor: Monitor,
        ledger: LedgerReader,
        *,
        ready_window: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._monitor = monitor
        self._ledger = ledger
        self._window = ready_window
        self._clock = clock
        self._metrics = Metrics(monitor, ledger, clock)

    def answer(self, path: str) -> tuple[int, str, bytes]:
        route = path.split("?", 1)[0]
        if route == "/health":
            return _verdict(health.liveness(self._monitor.last_beat, self._clock()))
        if route == "/ready":
            verdict = health.readiness(
                self._monitor.servers(), self._ledger.check(), self._clock(), self._window
            )
            return _verdict(verdict)
        if route == "/metrics":
            return 200, CONTENT_TYPE, self._metrics.render()
        return 404, _JSON, _json({"error": "not found", "paths": ["/health", "/ready", "/metrics"]})


def _verdict(verdict: health.Verdict) -> tuple[int, str, bytes]:
    body = {"ok": verdict.ok, "checks": verdict.checks, "failing": verdict.failing}
    return (200 if verdict.ok else 503), _JSON, _json(body)


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=1).encode() + b"\n"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "orthanc-openmrs"
    sys_version = ""

    def do_GET(self) -> None:
        self._reply(body=True)

    def do_HEAD(self) -> None:
        self._reply(body=False)

    def _reply(self, *, body: bool) -> None:
        try:
            status, content_type, payload = self.server.routes.answer(self.path)
        except Exception:
            log.exception("http.failed", path=self.path.split("?", 1)[0])
            status, content_type, payload = 500, _JSON, _json({"error": "internal error"})
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a probe every few seconds is not news, and the log says what the loop does."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], routes: Routes) -> None:
        self.routes = routes
        super().__init__(address, _Handler)


class HttpSurface:
    """The server, listening from `start()` until `close()`."""

    def __init__(self, address: str, port: int, routes: Routes) -> None:
        self._address = (address, port)
        self._routes = routes
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server = _Server(self._address, self._routes)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="http-surface",
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
