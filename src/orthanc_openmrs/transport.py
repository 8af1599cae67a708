"""What the two REST clients share: httpx's transport errors, TLS, and request metering."""

from __future__ import annotations

import base64
import ssl
import threading
import time
from collections.abc import Callable
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import httpx

from orthanc_openmrs.errors import ConfigError

# Called after every request with the answer's status (None: no answer at all) and how long
# the server took to send its headers.
RequestObserver = Callable[[int | None, float], None]
Verify = ssl.SSLContext | bool

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


def tls_verification(ca_bundle: Path | None) -> Verify:
    """How server certificates are checked: always, against the CAs of `ca_bundle` when given
    (a hospital's internal CA), else against httpx's public ones. Made once and shared by every
    client, as loading a bundle costs milliseconds."""
    if ca_bundle is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"SYNC_CA_BUNDLE: {ca_bundle} holds no usable CA: {exc}") from exc


class MeteredTransport(httpx.BaseTransport):
    """Tells an observer the status and duration of every request sent through it."""

    def __init__(self, inner: httpx.BaseTransport, observe: RequestObserver) -> None:
        self._inner = inner
        self._observe = observe

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = self._inner.handle_request(request)
        except BaseException:
            self._observe(None, time.perf_counter() - started)
            raise
        self._observe(response.status_code, time.perf_counter() - started)
        return response

    def close(self) -> None:
        self._inner.close()


def client_transport(
    limits: httpx.Limits,
    verify: Verify,
    observe: RequestObserver | None,
    transport: httpx.BaseTransport | None = None,
) -> httpx.BaseTransport:
    """The transport of one client: its own pool (`limits`), certificates checked (`verify`),
    each request told to `observe`. `transport` replaces the network (tests)."""
    inner = transport or httpx.HTTPTransport(verify=verify, limits=limits)
    return MeteredTransport(inner, observe) if observe else inner
