"""Single sign-on as OpenMRS's oauth2login module does it (docs/openmrs-sso.md).

Two filters on every path, in this order:
- `OAuth2ServiceAccountFilter`: a JWT in `Authorization` (whatever its scheme: the module cuts
  `len("Bearer") + 1` characters) or `X-JWT-Assertion`, verified against the realm's JWKS
  (fetched once) with its expiry, logs the session in as the token's `preferred_username`;
  anything else, an expired or badly signed token included, is ignored silently;
- `OAuth2LoginRequestFilter`: an unauthenticated request is redirected (302) to
  `/oauth2login`, except `/ws/rest/v1/session` and the module's own pages.
Basic credentials are not used: SSO makes the REST module's Basic login inactive.
"""

from __future__ import annotations

import json
import ssl
import threading
import urllib.request
from typing import TYPE_CHECKING, Any

import jwt

from orthanc_openmrs_devtools.openmrs_double.wire import CONTEXT_PATH, Response

if TYPE_CHECKING:
    from collections.abc import Mapping

    from orthanc_openmrs_devtools.openmrs_double.auth import Session
    from orthanc_openmrs_devtools.openmrs_double.wire import Request

# OAuth2LoginRequestFilter's init-params in the module's config.xml.
_EXEMPT_URIS = frozenset({"/ws/rest/v1/session"})
_EXEMPT_SERVLETS = ("/oauth2login", "/oauth2logout")
# JwtUtils.SUPPORTED_ALGORITHMS
_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token as the service-account filter takes it from the request."""
    value = headers.get("authorization", "")
    if value.strip():
        return value[len("Bearer") + 1 :]
    return headers.get("x-jwt-assertion") or None


def token_expiry(headers: Mapping[str, str]) -> float | None:
    """The `exp` of the request's JWT, unverified: what the request log keeps."""
    token = bearer_token(headers)
    if token is None or token.count(".") != 2:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, int | float) else None


class SingleSignOn:
    def __init__(self, keys_url: str, trust: ssl.SSLContext | None = None) -> None:
        self._keys_url = keys_url
        self._trust = trust
        self._keys: jwt.PyJWKSet | None = None
        self._lock = threading.Lock()
        self.verified = 0
        self.ignored = 0

    def filter(self, req: Request, session: Session) -> Response | None:
        """Log the session in from a valid token; the redirect for an unauthenticated request."""
        token = bearer_token(req.headers)
        if token is not None and token.count(".") == 2:
            username = self._username(token)
            if username is not None:
                session.user = username
        if req.path in _EXEMPT_URIS or req.path.startswith(_EXEMPT_SERVLETS):
            return None
        if session.user is None:
            return Response(302, headers=[("Location", f"{CONTEXT_PATH}/oauth2login")])
        return None

    def _username(self, token: str) -> str | None:
        try:
            header = jwt.get_unverified_header(token)
            key = self._key_set()[str(header.get("kid", ""))]
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=_ALGORITHMS, options={"verify_aud": False}
            )
        except (jwt.InvalidTokenError, jwt.PyJWKError, KeyError, OSError, ValueError):
            with self._lock:
                self.ignored += 1
            return None
        with self._lock:
            self.verified += 1
        username = claims.get("preferred_username")
        return username if isinstance(username, str) and username else None

    def _key_set(self) -> jwt.PyJWKSet:
        # JwtUtils reads the keys once (keysInitialized) and keeps them.
        with self._lock:
            if self._keys is None:
                with urllib.request.urlopen(  # noqa: S310
                    self._keys_url, timeout=10, context=self._trust
                ) as answer:
                    self._keys = jwt.PyJWKSet.from_dict(json.loads(answer.read()))
            return self._keys
