"""TLS: certificates are checked by default, and SYNC_CA_BUNDLE trusts an internal CA."""

from __future__ import annotations

import ssl

import pytest
import trustme

from orthanc_openmrs.errors import OpenMRSError
from orthanc_openmrs_devtools.dicom_factory import StudySpec
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
