"""An HTTP proxy in front of a real Orthanc that makes Orthanc crash on chosen instances.

Orthanc 1.10.1's decoders read out of bounds on some files and the process dies mid-request:
the client's connection closes without an answer, and a service manager starts Orthanc again.
The proxy plays that out deterministically: a request that renders a chosen instance (its
`/rendered`, `/preview`, `/frames/...`, `/image-...` or `/numpy`) SIGKILLs Orthanc, drops the
client's connection unanswered, and starts Orthanc again. While Orthanc is down the proxy
answers 502, as a front end would. Everything else is passed through unchanged.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import httpx

from orthanc_openmrs_devtools.orthanc_server import OrthancServer

__all__ = ["CrashProxy"]

_RENDERS = re.compile(r"^/instances/([^/?]+)/(rendered|preview|frames/|image-|numpy|matlab)")
_PASSED_HEADERS = ("authorization", "accept", "content-type")


class CrashProxy:
    def __init__(self, orthanc: OrthancServer, crash_on: set[str]) -> None:
        self.orthanc = orthanc
        self.crash_on = set(crash_on)
        self.crashes = 0
        self.renders: dict[str, int] = {}  # render requests seen, by instance
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def username(self) -> str:
        return self.orthanc.username

    @property
    def password(self) -> str:
        return self.orthanc.password

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _seen(self, path: str) -> bool:
        """Count a render request; whether it is one that crashes Orthanc."""
        match = _RENDERS.match(path)
        if not match:
            return False
        instance = match.group(1)
        with self._lock:
            self.renders[instance] = self.renders.get(instance, 0) + 1
            crash = instance in self.crash_on
            if crash:
                self.crashes += 1
        return crash

    def _crash(self) -> None:
        self.orthanc.crash()
        # Back shortly after, as systemd's Restart=always would bring it.
        threading.Thread(target=self.orthanc.start, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return  # quiet: tests read the counts, not a log

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy._seen(self.path):
                    proxy._crash()
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() in _PASSED_HEADERS}
                try:
                    answer = httpx.request(
                        self.command,
                        proxy.orthanc.url + self.path,
                        headers=headers,
                        content=body,
                        timeout=60,
                    )
                except httpx.HTTPError:
                    self._answer(502, b"", "text/plain")
                    return
                self._answer(
                    answer.status_code, answer.content, answer.headers.get("content-type", "")
                )

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        return Handler
