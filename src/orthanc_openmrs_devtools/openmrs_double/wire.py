"""Requests and responses as the double's handlers see them, and how values are written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias
from urllib.parse import quote

CONTEXT_PATH = "/openmrs"
REST = "/ws/rest/v1/"
FHIR = "/ws/fhir2/R4"
JSON = "application/json;charset=UTF-8"

Generation: TypeAlias = Literal["A", "B"]


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # relative to the context path
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    base: str  # scheme, host and context path as the client addressed them

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def url(self) -> str:
        return self.base + self.path


@dataclass(frozen=True)
class Call:
    """A REST request once the session filter has run."""

    req: Request
    user: str | None
    stale: bool  # the response is already a "Session timed out" 401
    generation: Generation
    privileges: frozenset[str] | None = None  # the user's; None: System Developer (all)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    # Close the connection without answering (the request's work is already done).
    drop: bool = False


def json_response(status: int, payload: Any, content_type: str = JSON) -> Response:
    # Jackson writes compact JSON and leaves non-ASCII characters as they are.
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(status, body, content_type)


def format_datetime(moment: datetime) -> str:
    """Java's yyyy-MM-dd'T'HH:mm:ss.SSSZ in a JVM running on UTC."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}+0000"


def int_param(req: Request, name: str) -> int | None:
    # The REST module ignores values it cannot parse as an integer.
    raw = req.param(name)
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


def query_string(req: Request) -> str:
    pairs = [f"{quote(k)}={quote(v)}" for k, values in req.query.items() for v in values]
    return "?" + "&".join(pairs) if pairs else ""


def cookie(header: str | None, name: str) -> str | None:
    for pair in (header or "").split(";"):
        key, sep, value = pair.strip().partition("=")
        if sep and key == name:
            return value.strip('"')
    return None
