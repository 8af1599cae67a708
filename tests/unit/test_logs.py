"""Log lines: the keys a log agent parses, and nothing that names a patient."""

from __future__ import annotations

import io
import json

import structlog

from orthanc_openmrs.config import LogFormat
from orthanc_openmrs.logs import configure, public_error, public_reason, safe_url
from orthanc_openmrs.models import Outcome, StudyResult


def _lines(log_format: LogFormat, *, verbose: bool = False, **fields) -> str:
    out = io.StringIO()
    configure(log_format, verbose=verbose, stream=out)
    structlog.get_logger("orthanc_openmrs").info("study.synced", **fields)
    return out.getvalue()


def test_json_lines_carry_timestamp_level_message() -> None:
    """JSON: one object a line with an ISO 8601 UTC timestamp, the level and the message."""
    (line,) = _lines(LogFormat.JSON, orthanc_id="abc").splitlines()
    event = json.loads(line)
    assert event["message"] == "study.synced"
    assert event["level"] == "info"
    assert event["timestamp"].endswith("Z")
    assert event["orthanc_id"] == "abc"


def test_auto_is_json_off_a_terminal() -> None:
    """`auto` writes JSON to a stream that is not a terminal (a container's stdout)."""
    assert json.loads(_lines(LogFormat.AUTO))["message"] == "study.synced"


def test_patient_fields_never_appear_and_uids_only_at_debug() -> None:
    """Fields that name a patient are dropped whatever the caller passes; a StudyInstanceUID
    shows only with -v."""
    fields = {
        "patient_id": "PID-1",
        "patient_name": "Doe^Jane",
        "birth_date": "19700101",
        "caption": "CT https://pacs/x?study=1.2.3",
        "password": "pw",
        "study_uid": "1.2.3.4",
    }
    quiet = _lines(LogFormat.JSON, **fields)
    for value in fields.values():
        assert value not in quiet
    assert "1.2.3.4" in _lines(LogFormat.JSON, verbose=True, **fields)
    assert "PID-1" not in _lines(LogFormat.JSON, verbose=True, **fields)


def test_control_characters_are_escaped() -> None:
    """An escape sequence or newline from a DICOM value can neither repaint a terminal nor
    forge a line, in either format."""
    for log_format in (LogFormat.CONSOLE, LogFormat.JSON):
        text = _lines(log_format, description="a\x1b[31mb\nc")
        assert "\x1b" not in text
        assert text.count("\n") == 1
    assert "a\\x1b[31mb\\nc" in _lines(LogFormat.CONSOLE, description="a\x1b[31mb\nc")


def test_reasons_passed_as_they_came_are_made_public() -> None:
    """A `reason` taken from an error keeps the request and status, never the server's text."""
    out = io.StringIO()
    configure(LogFormat.JSON, verbose=False, stream=out)
    structlog.get_logger("x").warning(
        "service.backoff", reason="OpenMRS GET /ws/rest/v1/patient: HTTP 500: no 'PID-9' here"
    )
    event = json.loads(out.getvalue())
    assert event["reason"] == "OpenMRS GET /ws/rest/v1/patient: HTTP 500"
    assert event["reason_code"] == "http_error"


def test_public_reason_of_each_problem() -> None:
    """Unmatched and ambiguous reasons name no identifier; failures keep only their kind."""
    unmatched = StudyResult("o", Outcome.UNMATCHED, "no OpenMRS patient has the identifier 'X9'")
    assert public_reason(unmatched) == (
        "unmatched",
        "no OpenMRS patient has one of the study's identifiers",
    )
    ambiguous = StudyResult(
        "o", Outcome.AMBIGUOUS, "2 OpenMRS patients match 'X9'", candidate_patients=("a", "b")
    )
    assert public_reason(ambiguous) == (
        "ambiguous",
        "2 OpenMRS patients match the study's identifiers",
    )
    bad_uid = StudyResult("o", Outcome.FAILED, "invalid StudyInstanceUID '1.2&x': a link ...")
    assert public_reason(bad_uid) == ("invalid_uid", "invalid StudyInstanceUID")
    assert public_error("OpenMRS POST /ws/rest/v1/attachment: ConnectError: refused X9") == (
        "transport_error",
        "OpenMRS POST /ws/rest/v1/attachment: ConnectError",
    )
    assert public_error("something with 'X9' in it")[0] == "failed"
    ledger = "state database postgresql://u@db/ledger: duplicate key (orthanc_id)=(X9)"
    assert public_error(ledger) == ("ledger_error", "the ledger (SYNC_DATABASE) failed")
    assert "X9" not in public_error("something with 'X9' in it")[1]


def test_safe_url_drops_credentials() -> None:
    """A base URL with user:password@ is logged without them."""
    assert (
        safe_url("https://u:p@openmrs.example.org/openmrs") == "https://openmrs.example.org/openmrs"
    )
    assert safe_url("http://orthanc:8042") == "http://orthanc:8042"
