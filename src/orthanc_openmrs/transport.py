"""What the two REST clients share about httpx's transport errors."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from http.cookiejar import CookieJar
from typing import Any

import httpx

# The request never reached the server: it is down or unreachable, not this request's fault.
_UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def basic_auth(username: str, password: str) -> dict[str, str]:
    """The Basic credentials as a fixed header: sent with every request, as httpx's own auth
    would, without running its auth flow per request."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


class NoCookies(CookieJar):
    """A jar for a server that sets no cookies (Orthanc): it skips the parsing httpx would do
    on every answer."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


def unreachable(exc: httpx.HTTPError) -> bool:
    return isinstance(exc, _UNREACHABLE)


def describe(server: str, method: str, path: str, exc: httpx.HTTPError) -> str:
    """A message naming the request by its path only: URLs may carry credentials."""
    detail = str(exc) or "no answer"
    return f"{server} {method} {path}: {type(exc).__name__}: {detail}"


class ThreadClients:
    """One httpx.Client per thread.

    A single client shared by the workers serialises them on its connection-pool lock and makes
    every request scan every pooled connection; a client of its own per worker does neither.
    Each thread keeps its own cookies too, so an OpenMRS session belongs to one worker.
    """

    def __init__(self, factory: Callable[[], httpx.Client]) -> None:
        self._factory = factory
        self._local = threading.local()
        self._all: list[httpx.Client] = []
        self._lock = threading.Lock()

    def get(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._factory()
            self._local.client = client
            with self._lock:
                self._all.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._all = self._all, []
        for client in clients:
            client.close()
