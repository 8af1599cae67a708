"""The log: one processor chain, configured once at start, for a log stack or a person.

JSON (one object a line, with `timestamp`, `level` and `message`, the keys log agents parse) or
console lines. The log travels to central log stores, so it never carries what identifies a
patient: fields that could are dropped whatever the caller passes, StudyInstanceUIDs appear at
DEBUG only, and reasons are logged in their PHI-free form (`public_reason`). Both renderers
escape control characters from DICOM values (JSON as \u001b, console lines by repr), so no
value can repaint a terminal or forge a line. The ledger and `review` keep the full story.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from orthanc_openmrs.config import LogFormat
from orthanc_openmrs.models import Outcome, StudyResult

# Never logged, whoever passes them: they name a patient, or open a door.
_NEVER = frozenset(
    {
        "patient_id",
        "dicom_patient_id",
        "patient_name",
        "birth_date",
        "caption",
        "candidates",
        "candidate_patients",
        "password",
        "token",
        "authorization",
        "url",
    }
)
# Logged only when asked for every detail (-v): a UID can be looked up in any PACS.
_DEBUG_ONLY = frozenset({"study_uid"})
# "OpenMRS POST /ws/rest/v1/attachment: HTTP 500" or "...: ConnectError": what a server
# error says about the request, before any text the server sent (which may echo anything).
_SERVER_ERROR = re.compile(
    r"^(?P<what>(?:Orthanc|OpenMRS) [A-Z]+ /[^\s?:]*): "
    r"(?:(?P<http>HTTP \d{3})|(?P<exc>[A-Z]\w*(?:Error|Timeout|Exception)))"
)
_FIXED = {
    Outcome.UNMATCHED: "no OpenMRS patient has one of the study's identifiers",
    Outcome.MISMATCH: "the study's birth date or sex contradicts the patient its identifier names",
    Outcome.NOT_STABLE: "Orthanc is still receiving the study",
    Outcome.GONE: "the study is no longer in Orthanc",
    Outcome.SUPERSEDED: "a newer Orthanc study holds the same StudyInstanceUID",
    Outcome.SYNCED: "attached",
    Outcome.ALREADY_THERE: "OpenMRS already holds the study's attachment",
    Outcome.REPLACED: "the study's attachment was replaced",
}
# Failures whose text the service writes itself, without identifiers: (start, code).
_OWN_FAILURES = (
    ("invalid StudyInstanceUID", "invalid_uid"),
    ("no series holds an image", "nothing_to_show"),
    ("the viewer link alone is over", "link_too_long"),
)
# The ledger's own errors: the location they name is shown without its password, but the
# driver's text after it may quote a row's values.
_LEDGER_FAILURES = ("state database ", "SYNC_DATABASE: cannot open ")


def public_reason(result: StudyResult) -> tuple[str, str]:
    """Pure: a reason code and text for the log, without identifiers, names or links; the
    ledger keeps the full reason for the people who review it."""
    if result.outcome is Outcome.AMBIGUOUS:
        count = len(result.candidate_patients)
        return "ambiguous", f"{count or 'several'} OpenMRS patients match the study's identifiers"
    if result.outcome is not Outcome.FAILED:
        code = result.outcome.value.replace(" ", "_")
        return code, _FIXED.get(result.outcome, code)
    return public_error(result.reason)


def public_error(message: str) -> tuple[str, str]:
    """Pure: a server error or failure message reduced to what names no patient: the request
    (server, method, path) and its status or error type; other text is left out."""
    for start, code in _OWN_FAILURES:
        if message.startswith(start):
            return code, start
    if message.startswith(_LEDGER_FAILURES):
        return "ledger_error", "the ledger (SYNC_DATABASE) failed"
    match = _SERVER_ERROR.match(message)
    if match is None:
        return "failed", "the study could not be synced (details: orthanc-openmrs review)"
    if match["http"]:
        return "http_error", f"{match['what']}: {match['http']}"
    return "transport_error", f"{match['what']}: {match['exc']}"


def safe_url(url: str) -> str:
    """A server's base URL without credentials someone put in it."""
    scheme, sep, rest = url.partition("://")
    return scheme + sep + rest.rpartition("@")[2] if sep else url


def configure(log_format: LogFormat, *, verbose: bool, stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library's logging (libraries) once, at start.
    `stream`: where log lines go (stderr by default; `run` uses stdout)."""
    out = stream or sys.stderr
    as_json = log_format is LogFormat.JSON or (
        log_format is LogFormat.AUTO and not _is_terminal(out)
    )
    level = logging.DEBUG if verbose else logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _Redact(keep_uids=verbose),
    ]
    if as_json:
        renderer: Any = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.EventRenamer("message"))
    else:
        renderer = structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"])
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # httpx and httpcore log every request with its full URL, and the patient search's query
    # carries an identifier: they stay quiet even with -v.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Redact:
    def __init__(self, *, keep_uids: bool) -> None:
        self._dropped = _NEVER if keep_uids else _NEVER | _DEBUG_ONLY

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in self._dropped & event.keys():
            del event[key]
        if "reason" in event and "reason_code" not in event:
            # A reason passed as it came (an error's message) is logged in its public form.
            event["reason_code"], event["reason"] = public_error(str(event["reason"]))
        return event
