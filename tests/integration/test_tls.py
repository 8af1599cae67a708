"""TLS: certificates are checked by default, and SYNC_CA_BUNDLE trusts an internal CA."""

from __future__ import annotations

import ssl

import pytest
import trustme

from orthanc_openmrs.errors import OpenMRSError, TokenEndpointError
from orthanc_openmrs_devtools.dicom_factory import StudySpec
from orthanc_openmrs_devtools.keycloak_double import KeycloakDouble
from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble
from support import load, settings_for, sync_pass


@pytest.fixture
def hospital_ca() -> trustme.CA:
    return trustme.CA(organization_name="Hospital internal CA")


@pytest.fixture
def openmrs_tls(hospital_ca):
    """The OpenMRS double served over HTTPS with a certificate from the hospital's CA."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    hospital_ca.issue_cert("127.0.0.1").configure_cert(server_context)
    with OpenMRSDouble(tls=server_context) as double:
        yield double


def test_unknown_ca_is_refused_by_default(orthanc, openmrs_tls, database) -> None:
    """Without SYNC_CA_BUNDLE a certificate from an internal CA is not trusted: nothing is
    sent past the handshake, and the error says why."""
    assert openmrs_tls.url.startswith("https://")
    settings = settings_for(orthanc, openmrs_tls, database)
    with pytest.raises(OpenMRSError, match="CERTIFICATE_VERIFY_FAILED"):
        sync_pass(settings)
    assert openmrs_tls.requests == []


def test_ca_bundle_trusts_the_internal_ca(orthanc, openmrs_tls, database, hospital_ca, tmp_path):
    """With SYNC_CA_BUNDLE naming the hospital's CA, the service talks HTTPS and attaches."""
    bundle = tmp_path / "hospital-ca.pem"
    hospital_ca.cert_pem.write_to_path(str(bundle))
    openmrs_tls.add_patient(["P001"])
    load(orthanc, StudySpec("tls"))
    settings = settings_for(orthanc, openmrs_tls, database, sync_ca_bundle=bundle)
    summary = sync_pass(settings)
    assert summary.total == 1
    assert len(openmrs_tls.attachments()) == 1


@pytest.fixture
def keycloak_tls(hospital_ca):
    """The Keycloak token endpoint over HTTPS, its certificate from the same hospital CA."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    hospital_ca.issue_cert("127.0.0.1").configure_cert(server_context)
    with KeycloakDouble({"eip-openmrs-orthanc": "eip-secret"}, tls=server_context) as double:
        yield double


def _trusting(ca: trustme.CA) -> ssl.SSLContext:
    """How the double itself reaches Keycloak's keys: trusting the hospital CA."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def _sso(keycloak: KeycloakDouble) -> dict[str, object]:
    return {
        "oauth_enabled": True,
        "oauth_access_token_url": keycloak.token_url,
        "oauth_client_id": "eip-openmrs-orthanc",
        "oauth_client_secret": "eip-secret",
    }


def test_token_endpoint_of_an_unknown_ca_is_refused(
    orthanc, keycloak_tls, database, hospital_ca
) -> None:
    """The token request checks the endpoint's certificate as every other request does."""
    assert keycloak_tls.token_url.startswith("https://")
    trust = _trusting(hospital_ca)
    with OpenMRSDouble(sso_keys_url=keycloak_tls.certs_url, sso_trust=trust) as sso:
        settings = settings_for(orthanc, sso, database, **_sso(keycloak_tls))
        with pytest.raises(TokenEndpointError, match="CERTIFICATE_VERIFY_FAILED"):
            sync_pass(settings)
        assert sso.requests == []
    assert keycloak_tls.issued == 0


def test_ca_bundle_is_trusted_by_the_token_request_too(
    orthanc, keycloak_tls, database, hospital_ca, tmp_path
) -> None:
    """SYNC_CA_BUNDLE serves the token endpoint as it serves OpenMRS and Orthanc: a Keycloak
    behind the hospital's CA gives its token, and the study is attached under SSO."""
    bundle = tmp_path / "hospital-ca.pem"
    hospital_ca.cert_pem.write_to_path(str(bundle))
    trust = _trusting(hospital_ca)
    with OpenMRSDouble(sso_keys_url=keycloak_tls.certs_url, sso_trust=trust) as sso:
        sso.add_patient(["P001"])
        load(orthanc, StudySpec("tls-sso"))
        settings = settings_for(orthanc, sso, database, sync_ca_bundle=bundle, **_sso(keycloak_tls))
        assert sync_pass(settings).total == 1
        assert len(sso.attachments()) == 1
    assert keycloak_tls.issued == 1
