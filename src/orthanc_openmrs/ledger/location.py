"""Where the ledger lives: a SQLite file (a plain path) or a PostgreSQL database (a URL).

A URL may carry a password; it is kept apart from the URL as the ledger shows it, so that no
message, log line or `repr` can echo it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")


class LocationError(ValueError):
    """SYNC_DATABASE is neither a usable path nor a PostgreSQL URL (the message shows no
    password)."""


@dataclass(frozen=True)
class PostgresURL:
    """A PostgreSQL ledger: `shown` is the URL without its password; `password` stays out of
    every repr and message."""

    shown: str
    password: str = field(default="", repr=False)

    def __str__(self) -> str:
        return self.shown

    @property
    def conninfo(self) -> str:
        """The URL to connect with, password included: for the driver only."""
        if not self.password:
            return self.shown
        parts = urlsplit(self.shown)
        user, _, host = parts.netloc.rpartition("@")
        netloc = f"{user}:{quote(self.password, safe='')}@{host}"
        return urlunsplit(parts._replace(netloc=netloc))

    def with_password(self, password: str) -> PostgresURL:
        return PostgresURL(self.shown, password)


LedgerLocation = Path | PostgresURL


def is_url(text: str) -> bool:
    return "://" in text


def parse_location(value: object) -> LedgerLocation:
    """A PostgreSQL URL (postgresql:// or postgres://) or a SQLite path; anything else with a
    scheme is refused rather than taken for a file name."""
    if isinstance(value, Path | PostgresURL):
        return value
    text = str(value).strip()
    if not text:
        raise LocationError("must be a file path or a postgresql:// URL")
    if not is_url(text):
        return Path(text)
    scheme = text.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise LocationError(
            f"{scheme}:// is not a ledger this knows: give a file path (SQLite) or a "
            "postgresql:// URL"
        )
    parts = urlsplit(text)
    password = ""
    netloc = parts.netloc
    if "@" in netloc:
        credentials, _, host = netloc.rpartition("@")
        user, has_password, secret = credentials.partition(":")
        if has_password:
            password = unquote(secret)
        netloc = f"{user}@{host}"
    if "password" in parts.query.lower():
        raise LocationError("put the password in the URL's user part or in the password file")
    if not parts.path.strip("/"):
        raise LocationError(f"{_shown(parts._replace(netloc=netloc))}: name the database")
    return PostgresURL(_shown(parts._replace(netloc=netloc)), password)


def _shown(parts: object) -> str:
    return urlunsplit(parts)  # type: ignore[call-overload,no-any-return]


def describe(location: LedgerLocation) -> str:
    """How messages name the ledger: the path, or the URL without its password."""
    return str(location)
