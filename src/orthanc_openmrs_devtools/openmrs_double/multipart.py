"""multipart/form-data bodies split into parts, each part's bytes kept exactly."""

from __future__ import annotations

from dataclasses import dataclass
from email.parser import HeaderParser
from email.utils import collapse_rfc2231_value
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from email.message import Message


@dataclass(frozen=True)
class Part:
    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes


def _header_param(message: Message, name: str, header: str) -> str | None:
    value = message.get_param(name, header=header)
    if value is None:
        return None
    return collapse_rfc2231_value(value) if isinstance(value, tuple) else str(value)


def parse_multipart(content_type: str, body: bytes) -> list[Part]:
    """Split a multipart/form-data body into parts, keeping each part's bytes exact."""
    boundary = _header_param(
        HeaderParser().parsestr(f"Content-Type: {content_type}\n\n"), "boundary", "content-type"
    )
    if not boundary:
        return []
    # Every delimiter but the first is preceded by CRLF; prefixing one makes them uniform.
    chunks = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if sep:
            parts.append(_part_from(head, data))
    return parts


def _part_from(head: bytes, data: bytes) -> Part:
    # Browsers and httpx put raw UTF-8 in filename="..."; decode it as such.
    headers = HeaderParser().parsestr(head.decode("utf-8", "replace").strip() + "\n\n")
    return Part(
        name=_header_param(headers, "name", "content-disposition"),
        filename=_header_param(headers, "filename", "content-disposition"),
        content_type=headers.get("content-type"),
        data=data,
    )
