"""The HTTP surface: one ASGI app served by uvicorn in a daemon thread. `/health`, `/ready` and
`/metrics` answer GET and HEAD only and change nothing; the review pages (web/), when given,
live under `/review/` on the same port, so that one port is published, proxied and given TLS.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from orthanc_openmrs.http import health
from orthanc_openmrs.http.metrics import CONTENT_TYPE, LedgerReader, Metrics
from orthanc_openmrs.monitor import Monitor

log = structlog.get_logger("orthanc_openmrs")

_JSON = "application/json"
_PROBES = ("/health", "/ready", "/metrics")
# Every method a client may send: those that are not GET or HEAD get 501, as before.
_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


class Routes:
    """What each probe path answers: (status, content type, body)."""

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
        return 404, _JSON, _json({"error": "not found", "paths": list(_PROBES)})


def _verdict(verdict: health.Verdict) -> tuple[int, str, bytes]:
    body = {"ok": verdict.ok, "checks": verdict.checks, "failing": verdict.failing}
    return (200 if verdict.ok else 503), _JSON, _json(body)


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=1).encode() + b"\n"


def surface_app(routes: Routes, review: ASGIApp | None = None) -> Starlette:
    """The probes, and the review pages under /review when given."""

    def probe(request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return _reply(501, _JSON, _json({"error": "only GET and HEAD"}))
        try:
            # Read in a worker thread (Starlette runs plain functions there): the ledger read
            # must not hold the event loop.
            status, content_type, payload = routes.answer(request.url.path)
        except Exception:
            log.exception("http.failed", path=request.url.path)
            status, content_type, payload = 500, _JSON, _json({"error": "internal error"})
        return _reply(status, content_type, payload)

    def not_found(request: Request) -> Response:
        status, content_type, payload = routes.answer(request.url.path)
        return _reply(status, content_type, payload)

    table: list[BaseRoute] = [Route(path, probe, methods=_METHODS) for path in _PROBES]
    if review is not None:
        table.append(Route("/review", lambda _r: RedirectResponse("/review/", 303)))
        table.append(Mount("/review", app=review))
    table.append(Route("/{path:path}", not_found, methods=_METHODS))
    return Starlette(routes=table)


def _reply(status: int, content_type: str, payload: bytes) -> Response:
    return Response(payload, status, headers={"Cache-Control": "no-store"}, media_type=content_type)


class HttpSurface:
    """The server, listening from `start()` until `close()`."""

    def __init__(self, address: str, port: int, app: ASGIApp) -> None:
        self._address = (address, port)
        self._app = app
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind now, so a port in use fails here (OSError) rather than in the thread."""
        family = socket.AF_INET6 if ":" in self._address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(self._address)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        config = uvicorn.Config(
            self._app,
            log_config=None,  # the service's own log says what happens; no access lines
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve(sock)), name="http-surface", daemon=True
        )
        self._thread.start()

    async def _serve(self, sock: socket.socket) -> None:
        assert self._server is not None
        await self._server.serve(sockets=[sock])

    @property
    def port(self) -> int:
        assert self._socket is not None
        return int(self._socket.getsockname()[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
