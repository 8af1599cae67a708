"""How we authenticate to OpenMRS and Orthanc: one interface, three ways.

- `BasicAuth`: a user and password, the same header on every request.
- `StaticKey`: a fixed API key in a header of the site's choosing (Orthanc's authorization
  plugin reads the header names of its `TokenHttpHeaders`).
- `ClientCredentials`: an OAuth2 client-credentials token (Keycloak, as Ozone's SSO uses),
  fetched by httpx-auth, shared by every worker thread and renewed before it expires.

A client asks `headers()` before each request; when the server refuses what was sent, it calls
`renew(sent)`, which says whether something fresher is worth one more try (a token: yes, once;
a password: never, since OpenMRS locks an account after 7 failed logins).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from httpx_auth import GrantNotProvided, InvalidGrantRequest, OAuth2ClientCredentials

from orthanc_openmrs.errors import TokenEndpointError, TokenRefused
from orthanc_openmrs.transport import Verify, basic_auth, unreachable

if TYPE_CHECKING:
    from orthanc_openmrs.config import Settings

# Keycloak's access tokens live 300 s by default: renew 30 s before the end, or a tenth of a
# shorter lifetime before, so that a token never reaches a server after it expired. Keycloak
# writes `exp` in whole seconds, so a token may end up to a second before `expires_in` says:
# one more second of margin.
REFRESH_MARGIN = 30.0
REFRESH_FRACTION = 0.1
WHOLE_SECONDS = 1.0
# Keycloak always says how long a token lives; an endpoint that does not gets this.
DEFAULT_LIFETIME = 60.0


class Auth(Protocol):
    """What a REST client needs from a way of authenticating."""

    def headers(self) -> Mapping[str, str]:
        """The headers to send with the next request."""
        ...

    def renew(self, sent: Mapping[str, str]) -> bool:
        """The server refused `sent`; whether fresh headers are worth one more try."""
        ...

    def describe(self) -> str:
        """Who we are to the server, without any secret: for messages and `check`."""
        ...

    @property
    def settings(self) -> str:
        """The settings a person should check when the server refuses us."""
        ...

    def close(self) -> None: ...


class BasicAuth:
    def __init__(self, username: str, password: str, *, settings: str) -> None:
        self._headers = basic_auth(username, password) if username else {}
        self._username = username
        self._settings = settings

    def headers(self) -> Mapping[str, str]:
        return self._headers

    def renew(self, sent: Mapping[str, str]) -> bool:
        return False

    def describe(self) -> str:
        return f"user {self._username!r}" if self._username else "no authentication"

    @property
    def settings(self) -> str:
        return self._settings

    def close(self) -> None:
        return None


class StaticKey:
    """A fixed key in one header; `Authorization` carries it as a Bearer token."""

    def __init__(self, header: str, key: str, *, settings: str) -> None:
        self._headers = {header: bearer(header, key)}
        self._header = header
        self._settings = settings

    def headers(self) -> Mapping[str, str]:
        return self._headers

    def renew(self, sent: Mapping[str, str]) -> bool:
        return False

    def describe(self) -> str:
        return f"an API key in the {self._header} header"

    @property
    def settings(self) -> str:
        return self._settings

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class TokenProbe:
    """What one token request told: for a preflight check, never the token itself."""

    token_url: str
    client_id: str
    expires_in: float


class ClientCredentials:
    """OAuth2 client credentials: one token for every thread, renewed before it expires.

    One lock guards the cache and the request: while one worker fetches, the others wait for
    its token instead of each asking the endpoint for one of their own.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str = "",
        header: str = "Authorization",
        settings_prefix: str = "OAUTH_",
        timeout: float = 30.0,
        verify: Verify = True,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._url = token_url
        self._client_id = client_id
        self._scope = scope
        self._header = header
        self._prefix = settings_prefix
        self._clock = clock
        self._statuses: list[int] = []
        # The token endpoint sits behind the same hospital CA as the servers (SYNC_CA_BUNDLE).
        self._client = httpx.Client(
            timeout=timeout,
            verify=verify,
            follow_redirects=False,
            transport=transport,
            event_hooks={"response": [lambda r: self._statuses.append(r.status_code)]},
        )
        self._grant = OAuth2ClientCredentials(
            token_url,
            client_id,
            client_secret,
            scope=scope or None,
            client=self._client,
            timeout=max(1, round(timeout)),
        )
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self.fetches = 0

    def headers(self) -> Mapping[str, str]:
        with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                self._fetch()
            assert self._token is not None
            return {self._header: bearer(self._header, self._token)}

    def renew(self, sent: Mapping[str, str]) -> bool:
        with self._lock:
            if self._token is not None and sent.get(self._header) == bearer(
                self._header, self._token
            ):
                self._token = None  # refused: the next request fetches another
            return True

    def probe(self) -> TokenProbe:
        """Fetch a token now (the cache keeps it); raises TokenRefused or TokenEndpointError."""
        with self._lock:
            lifetime = self._fetch()
        return TokenProbe(self._url, self._client_id, lifetime)

    def describe(self) -> str:
        scope = f", scope {self._scope!r}" if self._scope else ""
        return f"OAuth2 client {self._client_id!r} of {self._url}{scope}"

    @property
    def settings(self) -> str:
        p = self._prefix
        return f"{p}ACCESS_TOKEN_URL, {p}CLIENT_ID, {p}CLIENT_SECRET and {p}CLIENT_SCOPE"

    def close(self) -> None:
        self._client.close()

    def _fetch(self) -> float:
        asked = self._clock()
        self.fetches += 1
        token, lifetime = self._request()
        self._token = token
        margin = WHOLE_SECONDS + min(REFRESH_MARGIN, lifetime * REFRESH_FRACTION)
        self._renew_at = asked + max(lifetime - margin, lifetime / 2)
        return lifetime

    def _request(self) -> tuple[str, float]:
        what = f"token endpoint {self._url}"
        self._statuses.clear()
        try:
            answer = self._grant.request_new_token()
        except InvalidGrantRequest as exc:
            status = self._statuses[-1] if self._statuses else None
            if status is not None and (status >= 500 or status == 429):
                raise TokenEndpointError(
                    f"the {what} answered HTTP {status}", status=status
                ) from exc
            raise TokenRefused(
                f"the {what} refuses {self.describe()}: {exc} (check {self.settings}; "
                "nothing was retried)",
                status=status,
            ) from exc
        except GrantNotProvided as exc:
            raise TokenEndpointError(f"the {what} answered no access_token") from exc
        except httpx.HTTPError as exc:
            raise TokenEndpointError(
                f"the {what} cannot be reached: {type(exc).__name__}: {exc}",
                unavailable=unreachable(exc),
            ) from exc
        except ValueError as exc:  # an answer that is not JSON
            raise TokenEndpointError(f"the {what} answered no token: {exc}") from exc
        lifetime = answer[2] if len(answer) > 2 else None
        return str(answer[1]), _seconds(lifetime)


def bearer(header: str, token: str) -> str:
    """The header's value: `Authorization` takes the Bearer scheme, any other header the token."""
    return f"Bearer {token}" if header.lower() == "authorization" else token


def _seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return DEFAULT_LIFETIME
    return seconds if seconds > 0 else DEFAULT_LIFETIME


def openmrs_auth(settings: Settings, *, timeout: float = 30.0, verify: Verify = True) -> Auth:
    """OpenMRS's way in: Ozone's OAUTH_* client credentials when OAUTH_ENABLED, else Basic."""
    if settings.oauth_enabled:
        return ClientCredentials(
            settings.oauth_access_token_url,
            settings.oauth_client_id,
            settings.oauth_client_secret.get_secret_value(),
            scope=settings.oauth_client_scope,
            settings_prefix="OAUTH_",
            timeout=timeout,
            verify=verify,
        )
    return BasicAuth(
        settings.openmrs_user,
        settings.openmrs_password.get_secret_value(),
        settings="OPENMRS_USER and OPENMRS_PASSWORD; the account locks after 7 failed logins",
    )


def orthanc_auth(settings: Settings, *, timeout: float = 30.0, verify: Verify = True) -> Auth:
    """Orthanc's way in: a token in ORTHANC_TOKEN_HEADER (a static key, or a client-credentials
    token of Orthanc's own client), else Basic (or nothing without ORTHANC_USER)."""
    header = settings.orthanc_token_header.strip()
    if header and settings.orthanc_oauth_access_token_url:
        return ClientCredentials(
            settings.orthanc_oauth_access_token_url,
            settings.orthanc_oauth_client_id,
            settings.orthanc_oauth_client_secret.get_secret_value(),
            scope=settings.orthanc_oauth_client_scope,
            header=header,
            settings_prefix="ORTHANC_OAUTH_",
            timeout=timeout,
            verify=verify,
        )
    if header:
        key = settings.orthanc_api_key.get_secret_value()
        return StaticKey(header, key, settings="ORTHANC_API_KEY")
    return BasicAuth(
        settings.orthanc_user,
        settings.orthanc_password.get_secret_value(),
        settings="ORTHANC_USER and ORTHANC_PASSWORD",
    )


def describe(auth: Auth) -> str:
    """One line on how we authenticate, for a preflight check: never a secret."""
    return auth.describe()
