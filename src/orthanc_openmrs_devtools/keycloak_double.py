"""A stand-in for Keycloak's token endpoint (client-credentials grant) and its signing keys.

What it answers is Keycloak's (docs/openmrs-sso.md, its Keycloak part): the token response's
fields, RS256 JWTs whose `kid` names a key of the realm's JWKS, a service account's
`preferred_username` of `service-account-<client id>`, and the error bodies of a wrong secret
(401 `unauthorized_client`) and of another grant type (400 `unsupported_grant_type`).

Tests set `lifetime` (Keycloak's default is 300 s) and read `issued` (tokens handed out) and
`expiry_of(token)`, which the SSO double uses to record whether a request's token had expired.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qs, unquote

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

if TYPE_CHECKING:
    from types import TracebackType

DEFAULT_LIFETIME = 300  # Keycloak's "Access Token Lifespan"
_KID = "orthanc-openmrs-test-key"
_REFUSED_DESCRIPTION = "Invalid client or Invalid client credentials"


class KeycloakDouble:
    """One realm with confidential clients, served on loopback in a background thread."""

    def __init__(
        self,
        clients: dict[str, str] | None = None,
        *,
        realm: str = "ozone",
        lifetime: float = DEFAULT_LIFETIME,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`tls`: serve HTTPS with this server context (its certificate), as Keycloak behind a
        hospital's internal CA does."""
        self.realm = realm
        self._tls = tls
        self.clients = dict(clients or {"eip-openmrs-orthanc": "eip-secret"})
        # Seconds each new token lives; may be changed at any time.
        self.lifetime = lifetime
        # What a wrong secret gets: `unauthorized_client` in older Keycloak releases (as sites
        # report it), `invalid_client` in recent ones; the same 401 and description.
        self.refusal_error = "unauthorized_client"
        self.issued = 0
        self.refused = 0
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()
        self._host = host
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._server is not None:
            return
        self._server = _Server((self._host, 0), _Handler, self)
        if self._tls is not None:
            self._server.socket = self._tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="keycloak-double",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the Keycloak double is not started")
        host, port = self._server.server_address[:2]
        scheme = "http" if self._tls is None else "https"
        return f"{scheme}://{host!s}:{port}"

    @property
    def issuer(self) -> str:
        return f"{self.url}/realms/{self.realm}"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/token"

    @property
    def certs_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    # -- observation -----------------------------------------------------------------------
    def expiry_of(self, token: str) -> float | None:
        """The `exp` (epoch seconds) of a token this double issued; None for any other."""
        with self._lock:
            return self._expiry.get(token)

    def jwks(self) -> dict[str, Any]:
        key = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        return {"keys": [{**key, "kid": _KID, "alg": "RS256", "use": "sig"}]}

    # -- the endpoints ---------------------------------------------------------------------
    def _token(self, form: dict[str, str], authorization: str | None) -> tuple[int, Any]:
        client_id, secret = _client_of(form, authorization)
        if form.get("grant_type") != "client_credentials":
            return 400, {
                "error": "unsupported_grant_type",
                "error_description": "Unsupported grant_type",
            }
        with self._lock:
            if client_id is None or self.clients.get(client_id) != secret:
                self.refused += 1
                return 401, {"error": self.refusal_error, "error_description": _REFUSED_DESCRIPTION}
            self.issued += 1
            lifetime = self.lifetime
        now = time.time()
        exp = int(now + lifetime)
        claims = {
            "exp": exp,
            "iat": int(now),
            "jti": secrets.token_hex(16),
            "iss": self.issuer,
            "aud": "account",
            "sub": f"service-account-{client_id}",
            "typ": "Bearer",
            "azp": client_id,
            "scope": "profile email",
            "clientId": client_id,
            "preferred_username": f"service-account-{client_id}",
        }
        # exp is whole seconds, as Keycloak writes it; what a test compares is that value.
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": _KID})
        with self._lock:
            self._expiry[token] = float(exp)
        return 200, {
            "access_token": token,
            "expires_in": int(lifetime),
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": "profile email",
        }


def _client_of(form: dict[str, str], authorization: str | None) -> tuple[str | None, str | None]:
    """The client id and secret, from client_secret_basic or client_secret_post."""
    if authorization and authorization.startswith("Basic "):
        try:
            decoded = base64.b64decode(authorization[6:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        user, _, password = decoded.partition(":")
        return unquote(user), unquote(password)
    return form.get("client_id"), form.get("client_secret")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], handler: type[_Handler], double: KeycloakDouble
    ) -> None:
        self.double = double
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read the counters."""

    def do_GET(self) -> None:
        double = self.server.double
        if self.path == f"/realms/{double.realm}/protocol/openid-connect/certs":
            self._json(200, double.jwks())
        else:
            self._json(404, {"error": "Unable to find matching target resource method"})

    def do_POST(self) -> None:
        double = self.server.double
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        if self.path != f"/realms/{double.realm}/protocol/openid-connect/token":
            self._json(404, {"error": "Unable to find matching target resource method"})
            return
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        status, payload = double._token(form, self.headers.get("Authorization"))
        self._json(status, payload)

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
