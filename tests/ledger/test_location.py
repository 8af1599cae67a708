"""SYNC_DATABASE: a path is SQLite, a postgresql:// URL is PostgreSQL, and a URL's password
stays out of everything that can be shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from orthanc_openmrs.errors import ConfigError
from orthanc_openmrs.ledger.location import LocationError, PostgresURL, parse_location
from orthanc_openmrs.ledger.postgres import translate
from support import default_settings_for

SECRET = "p@ss:w/rd"


def test_a_plain_path_is_a_sqlite_ledger() -> None:
    """A path, relative or absolute, stays a path."""
    assert parse_location("ledger.sqlite3") == Path("ledger.sqlite3")
    assert parse_location("/var/lib/x/ledger.sqlite3") == Path("/var/lib/x/ledger.sqlite3")


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "PostgreSQL"])
def test_a_url_is_a_postgresql_ledger_shown_without_its_password(scheme: str) -> None:
    """Both schemes; the password (percent-encoded in the URL) is kept apart, absent from str
    and repr, and given back, encoded, to the driver only."""
    url = parse_location(
        f"{scheme}://ledger:p%40ss%3Aw%2Frd@db.example.org:5433/orthanc?sslmode=require"
    )
    assert isinstance(url, PostgresURL)
    assert url.password == SECRET
    assert str(url) == f"{scheme.lower()}://ledger@db.example.org:5433/orthanc?sslmode=require"
    assert SECRET not in repr(url)
    assert "p%40ss%3Aw%2Frd" in url.conninfo


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mysql://u:secret-x@h/db", "mysql:// is not a ledger"),
        ("postgresql://u:secret-x@h", "name the database"),
        ("postgresql://u@h/db?password=secret-x", "password"),
    ],
)
def test_a_url_that_is_no_ledger_is_refused_without_its_password(text: str, message: str) -> None:
    """Another scheme, no database, a password as a query parameter: refused, never taken for a
    file name, and the message does not show the password."""
    with pytest.raises(LocationError) as refused:
        parse_location(text)
    assert message in str(refused.value)
    assert "secret-x" not in str(refused.value)


def test_the_password_file_completes_a_url(tmp_path: Path) -> None:
    """SYNC_DATABASE_PASSWORD_FILE gives the password (its final newline dropped); with a SQLite
    ledger, or a URL with a password already, it is refused by name."""
    secret = tmp_path / "pw"
    secret.write_text(SECRET + "\n", encoding="utf-8")
    server = _Server()
    settings = default_settings_for(
        server, server, "postgresql://ledger@db/orthanc", sync_database_password_file=secret
    )
    assert isinstance(settings.sync_database, PostgresURL)
    assert settings.sync_database.password == SECRET
    for database in ("ledger.sqlite3", "postgresql://ledger:other@db/orthanc"):
        with pytest.raises(ConfigError, match="SYNC_DATABASE_PASSWORD_FILE"):
            default_settings_for(server, server, database, sync_database_password_file=secret)


class _Server:
    """What default_settings_for reads of the two servers; nothing is asked of them."""

    url = "http://127.0.0.1:1"
    username = "orthanc"
    password = "orthanc"


def test_placeholders_are_translated_for_psycopg() -> None:
    """`?` and `:name` become psycopg's; a cast's `::` and a literal `%` are left meaning what
    they meant."""
    assert translate("a = ? AND b = :me AND c::text LIKE '5%'") == (
        "a = %s AND b = %(me)s AND c::text LIKE '5%%'"
    )
