from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from orthanc_openmrs.auth import BasicAuth, ClientCredentials, StaticKey, describe
from orthanc_openmrs.errors import CredentialsRefused, TokenEndpointError, TokenRefused
from orthanc_openmrs_devtools.keycloak_double import KeycloakDouble
from orthanc_openmrs_devtools.orthanc_server import free_tcp_port


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


_MADE: list[ClientCredentials] = []


@pytest.fixture
def keycloak() -> Iterator[KeycloakDouble]:
    with KeycloakDouble({"eip": "right"}) as double:
        yield double
    while _MADE:
        _MADE.pop().close()


def _auth(keycloak: KeycloakDouble, clock: Clock, *secret: str) -> ClientCredentials:
    made = ClientCredentials(keycloak.token_url, "eip", (*secret, "right")[0], clock=clock)
    _MADE.append(made)
    return made


def test_one_token_until_shortly_before_it_expires(keycloak: KeycloakDouble) -> None:
    """A 300 s token is reused for 269 s, and renewed 31 s before its end (margin plus the
    whole second Keycloak rounds exp down to)."""
    clock = Clock()
    auth = _auth(keycloak, clock)
    first = auth.headers()["Authorization"]
    assert first.startswith("Bearer ")
    clock.now += 268.9
    assert auth.headers()["Authorization"] == first
    clock.now += 0.2
    assert auth.headers()["Authorization"] != first
    assert keycloak.issued == auth.fetches == 2


def test_short_tokens_are_renewed_before_their_end(keycloak: KeycloakDouble) -> None:
    """A 5 s token is renewed after 3.5 s: before its end, not on every request."""
    keycloak.lifetime = 5
    clock = Clock()
    auth = _auth(keycloak, clock)
    first = auth.headers()
    clock.now += 3.4
    assert auth.headers() == first
    clock.now += 0.2
    assert auth.headers() != first


def test_workers_share_one_token(keycloak: KeycloakDouble) -> None:
    """Sixteen threads asking at once get one token from one request to the endpoint."""
    auth = _auth(keycloak, Clock())
    seen: set[str] = set()
    start = threading.Barrier(16)

    def ask() -> None:
        start.wait()
        seen.add(auth.headers()["Authorization"])

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 1
    assert keycloak.issued == 1


def test_renew_after_a_refusal_fetches_once(keycloak: KeycloakDouble) -> None:
    """A refused token is replaced once, however many workers report it refused."""
    auth = _auth(keycloak, Clock())
    sent = dict(auth.headers())
    assert auth.renew(sent)
    assert auth.renew(sent)
    fresh = auth.headers()
    assert fresh != sent
    assert auth.renew(sent)  # the old token again: the fresh one stays
    assert auth.headers() == fresh
    assert keycloak.issued == 2


def test_wrong_secret_is_refused_with_the_settings_to_check(keycloak: KeycloakDouble) -> None:
    """A wrong secret is refused credentials naming Keycloak's error and the OAUTH_ settings."""
    auth = _auth(keycloak, Clock(), "wrong")
    with pytest.raises(TokenRefused) as info:
        auth.headers()
    assert isinstance(info.value, CredentialsRefused)
    message = info.value.message
    assert "unauthorized_client" in message
    assert "Invalid client or Invalid client credentials" in message
    assert "OAUTH_CLIENT_ID" in message
    assert "OAUTH_CLIENT_SECRET" in message
    assert "wrong" not in message
    assert keycloak.refused == 1


def test_unreachable_endpoint_is_unavailable_not_refused() -> None:
    """A token endpoint that is down pauses the work like a server outage."""
    url = f"http://127.0.0.1:{free_tcp_port()}/realms/r/protocol/openid-connect/token"
    auth = ClientCredentials(url, "eip", "right", timeout=2)
    with pytest.raises(TokenEndpointError) as info:
        auth.headers()
    auth.close()
    assert info.value.unavailable
    assert not isinstance(info.value, CredentialsRefused)


def test_probe_and_describe_tell_no_secret(keycloak: KeycloakDouble) -> None:
    """The preflight helpers tell who we are and how long a token lives, never a secret."""
    auth = ClientCredentials(keycloak.token_url, "eip", "right", scope="openid")
    _MADE.append(auth)
    probe = auth.probe()
    assert (probe.client_id, probe.expires_in) == ("eip", 300)
    assert "right" not in describe(auth)
    assert "'eip'" in describe(auth)
    assert describe(BasicAuth("admin", "pw", settings="")) == "user 'admin'"
    assert "pw" not in describe(StaticKey("token", "pw", settings=""))
    assert StaticKey("Authorization", "k", settings="").headers() == {"Authorization": "Bearer k"}
    assert StaticKey("token", "k", settings="").headers() == {"token": "k"}
