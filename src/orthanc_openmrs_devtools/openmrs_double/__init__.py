"""A stand-in for an OpenMRS server's REST and FHIR APIs, for tests and local trials.

It answers the calls the service makes (patient lookup, attachment upload, list, void and
purge, session) with the URLs, status codes, bodies and quirks of a real OpenMRS 2.6-2.8 with
the attachments module. The quirks are the point: a fuzzy patient search that returns
neighbours, captions measured in UTF-16 units, a "Session timed out" 401 after which the
upload was stored anyway, and error bodies shaped by the REST module. Two generations of the
server stack are modelled: "A" (REST 2.4x, attachments 3.x, platform 2.6/2.7) and "B"
(REST 3.x, attachments 4.0, platform 2.8).

Tests seed state and inject faults through methods; every request is recorded. One lock
guards all state, so the seeding methods are safe to call while the server is running.

The modules: ``model`` (seeded values and the store), ``server`` (the ``OpenMRSDouble``
class and its HTTP handler), ``rest`` and ``fhir`` (the two APIs), ``auth`` (logins,
sessions, lockout), ``patients`` and ``patient_views`` (patient search and how patients
are shown), ``attachments`` and ``multipart`` (the attachment resource and its uploads),
``representation`` (?v= and paging), ``errors`` and ``wire`` (response shapes).
"""

from orthanc_openmrs_devtools.openmrs_double.model import (
    ID_CARD_TYPE_UUID,
    OPENMRS_ID_TYPE_UUID,
    Identifier,
    RecordedRequest,
    StoredAttachment,
)
from orthanc_openmrs_devtools.openmrs_double.server import OpenMRSDouble

__all__ = [
    "ID_CARD_TYPE_UUID",
    "OPENMRS_ID_TYPE_UUID",
    "Identifier",
    "OpenMRSDouble",
    "RecordedRequest",
    "StoredAttachment",
]
