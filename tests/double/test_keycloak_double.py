from __future__ import annotations

from collections.abc import Iterator

import httpx
import jwt
import pytest

from orthanc_openmrs_devtools.keycloak_double import KeycloakDouble


@pytest.fixture
def keycloak() -> Iterator[KeycloakDouble]:
    with KeycloakDouble({"eip": "right"}, realm="ozone") as double:
        yield double


def test_client_credentials_answer_has_keycloaks_fields(keycloak: KeycloakDouble) -> None:
    """A client-credentials grant answers Keycloak's fields and an RS256 JWT the JWKS verifies."""
    answer = httpx.post(
        keycloak.token_url,
        data={"grant_type": "client_credentials"},
        auth=("eip", "right"),
    )
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {
        "access_token",
        "expires_in",
        "refresh_expires_in",
        "token_type",
        "not-before-policy",
        "scope",
    }
    assert (body["expires_in"], body["token_type"], body["refresh_expires_in"]) == (
        300,
        "Bearer",
        0,
    )
    keys = jwt.PyJWKSet.from_dict(httpx.get(keycloak.certs_url).json())
    kid = jwt.get_unverified_header(body["access_token"])["kid"]
    claims = jwt.decode(
        body["access_token"], keys[kid].key, algorithms=["RS256"], options={"verify_aud": False}
    )
    assert claims["preferred_username"] == "service-account-eip"
    assert claims["iss"] == keycloak.issuer
    assert keycloak.expiry_of(body["access_token"]) == claims["exp"]
    assert keycloak.issued == 1


def test_wrong_secret_gets_keycloaks_401(keycloak: KeycloakDouble) -> None:
    """A wrong secret (sent in the form, too) gets 401 unauthorized_client and no token."""
    answer = httpx.post(
        keycloak.token_url,
        data={"grant_type": "client_credentials", "client_id": "eip", "client_secret": "wrong"},
    )
    assert answer.status_code == 401
    assert answer.json() == {
        "error": "unauthorized_client",
        "error_description": "Invalid client or Invalid client credentials",
    }
    assert (keycloak.issued, keycloak.refused) == (0, 1)


def test_lifetime_is_a_control(keycloak: KeycloakDouble) -> None:
    """A test may shorten the lifetime of the tokens issued from then on."""
    keycloak.lifetime = 5
    answer = httpx.post(
        keycloak.token_url, data={"grant_type": "client_credentials"}, auth=("eip", "right")
    )
    token = answer.json()["access_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert answer.json()["expires_in"] == 5
    assert claims["exp"] - claims["iat"] in (4, 5)
