from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from orthanc_openmrs_devtools.keycloak_double import KeycloakDouble
from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble

REST = "/ws/rest/v1"


@pytest.fixture
def keycloak() -> Iterator[KeycloakDouble]:
    with KeycloakDouble({"eip": "right"}) as double:
        yield double


@pytest.fixture
def sso(keycloak: KeycloakDouble) -> Iterator[OpenMRSDouble]:
    with OpenMRSDouble(sso_keys_url=keycloak.certs_url) as double:
        yield double


def _token(keycloak: KeycloakDouble) -> str:
    answer = httpx.post(
        keycloak.token_url, data={"grant_type": "client_credentials"}, auth=("eip", "right")
    )
    return str(answer.json()["access_token"])


def test_basic_is_redirected_to_oauth2login(sso: OpenMRSDouble) -> None:
    """Under SSO, good Basic credentials are not a login: REST and FHIR answer 302 to
    /oauth2login."""
    for path in (f"{REST}/patient?identifier=1", "/ws/fhir2/R4/Patient?identifier=1"):
        answer = httpx.get(sso.url + path, auth=("admin", "Admin123"))
        assert answer.status_code == 302
        assert answer.headers["location"] == "/openmrs/oauth2login"


def test_session_resource_is_not_redirected(sso: OpenMRSDouble) -> None:
    """The session resource is exempt from the redirect, and says unauthenticated to Basic."""
    answer = httpx.get(sso.url + f"{REST}/session", auth=("admin", "Admin123"))
    assert answer.status_code == 200
    assert answer.json()["authenticated"] is False


def test_valid_bearer_logs_in_as_its_service_account(
    sso: OpenMRSDouble, keycloak: KeycloakDouble
) -> None:
    """A token signed by the realm logs in as its preferred_username; the log keeps its exp."""
    token = _token(keycloak)
    headers = {"Authorization": f"Bearer {token}"}
    answer = httpx.get(sso.url + f"{REST}/session", headers=headers)
    assert answer.json()["authenticated"] is True
    assert answer.json()["user"]["username"] == "service-account-eip"
    assert httpx.get(sso.url + f"{REST}/patient?identifier=1", headers=headers).status_code == 200
    assert sso.requests[-1].token_expires == keycloak.expiry_of(token)


def test_expired_or_foreign_token_is_ignored(sso: OpenMRSDouble, keycloak: KeycloakDouble) -> None:
    """An expired token, or one signed by another key, leaves the request unauthenticated."""
    keycloak.lifetime = 1
    expired = _token(keycloak)
    time.sleep(2.1)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"exp": int(time.time()) + 300, "preferred_username": "admin"}
    foreign = jwt.encode(claims, other, algorithm="RS256", headers={"kid": "x"})
    for token in (expired, foreign):
        answer = httpx.get(
            sso.url + f"{REST}/patient?identifier=1", headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 302
    assert sso.sso is not None
    assert sso.sso.ignored == 2
