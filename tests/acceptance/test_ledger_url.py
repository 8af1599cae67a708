"""A PostgreSQL ledger from the command line: the password in its URL is never shown, and a
SQLite ledger is moved into PostgreSQL without the site syncing again."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_cli import _clean_environment, _command, _run

from orthanc_openmrs.store import Store
from orthanc_openmrs_devtools.dicom_factory import StudySpec
from orthanc_openmrs_devtools.postgres_server import PostgresServer
from support import env_for, load

SECRET = "Ledger-S3cret-pw"


@pytest.fixture
def secret_role(postgres: PostgresServer) -> str:
    """A role of its own with SECRET as its password, owning a new database: its name."""
    name = f"site_{int(time.monotonic() * 1e6) % 10**9}"
    postgres.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{SECRET}'")
    postgres.execute(f"CREATE DATABASE {name} OWNER {name}")
    return name


def _url(postgres: PostgresServer, role: str, *, password: str = SECRET, port: int = 0) -> str:
    return f"postgresql://{role}:{password}@127.0.0.1:{port or postgres.port}/{role}"


@pytest.mark.parametrize("command", ["status", "sync", "audit", "check"])
@pytest.mark.parametrize("wrong", ["host", "password", "database"])
def test_a_ledger_url_password_is_never_shown(
    orthanc, openmrs, postgres, secret_role, tmp_path, command, wrong
) -> None:
    """Whatever is wrong with a PostgreSQL ledger (no server at the port, a refused password, a
    database that does not exist), no command's output shows the URL's password; the ledger is
    named without it."""
    url = {
        "host": _url(postgres, secret_role, port=1),
        "password": _url(postgres, secret_role, password=SECRET + "-wrong"),
        "database": _url(postgres, secret_role).rsplit("/", 1)[0] + "/no_such_ledger",
    }[wrong]
    env = {**env_for(orthanc, openmrs, tmp_path / "unused.sqlite3"), "SYNC_DATABASE": url}
    done = _run(env, command)
    output = done.stdout + done.stderr
    assert SECRET not in output
    if command != "check":  # check does not open the ledger
        assert done.returncode == 1
        assert f"{secret_role}@127.0.0.1" in output  # the ledger is still named


def test_run_logs_no_ledger_password(orthanc, openmrs, postgres, secret_role, tmp_path) -> None:
    """`run` on a PostgreSQL ledger whose password is in the URL syncs, and neither its log nor
    its answers on stop show the password."""
    load(orthanc, StudySpec("a", patient_id="RUN-1"))
    openmrs.add_patient(["RUN-1"])
    env = {
        **env_for(orthanc, openmrs, tmp_path / "unused.sqlite3"),
        "SYNC_DATABASE": _url(postgres, secret_role),
        "SYNC_POLL_INTERVAL": "0.5",
    }
    process = subprocess.Popen(
        [*_command(), "run"],
        env={**_clean_environment(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not openmrs.attachments() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert len(openmrs.attachments()) == 1
    assert "feed.following" in out
    assert SECRET not in out + err


def test_a_password_file_opens_the_ledger(orthanc, openmrs, postgres, secret_role, tmp_path):
    """SYNC_DATABASE_PASSWORD_FILE gives the password of a URL that has none; both at once are
    refused, naming the setting."""
    secret_file = tmp_path / "ledger-password"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    bare = _url(postgres, secret_role).replace(f":{SECRET}@", "@")
    env = {
        **env_for(orthanc, openmrs, tmp_path / "unused.sqlite3"),
        "SYNC_DATABASE": bare,
        "SYNC_DATABASE_PASSWORD_FILE": str(secret_file),
    }
    done = _run(env, "status")
    assert done.returncode == 0, done.stderr
    both = _run({**env, "SYNC_DATABASE": _url(postgres, secret_role)}, "status")
    assert both.returncode == 2
    assert "SYNC_DATABASE_PASSWORD_FILE" in both.stderr
    assert SECRET not in both.stdout + both.stderr


def test_move_ledger_copies_everything_and_nothing_is_synced_again(
    orthanc, openmrs, postgres, secret_role, tmp_path
) -> None:
    """move-ledger copies a SQLite ledger (cursor, studies, identifiers, audit) into an empty
    PostgreSQL database; on it, a pass uploads nothing again; a second move is refused."""
    for key in ("m1", "m2"):
        openmrs.add_patient([key.upper() + "-ID"])
    load(orthanc, StudySpec("m1", patient_id="M1-ID"), StudySpec("m2", patient_id="M2-ID"))
    load(orthanc, StudySpec("m3", patient_id="NOBODY"))
    sqlite = tmp_path / "ledger.sqlite3"
    env = env_for(orthanc, openmrs, sqlite)
    assert _run(env, "sync").returncode == 0
    assert len(openmrs.attachments()) == 2
    secret_file = tmp_path / "ledger-password"
    secret_file.write_text(SECRET, encoding="utf-8")
    bare = _url(postgres, secret_role).replace(f":{SECRET}@", "@")
    moved = _run(env, "move-ledger", "--to", bare, "--to-password-file", str(secret_file))
    assert moved.returncode == 0, moved.stderr
    assert "3 studies" in moved.stdout
    assert "2 audit" in moved.stdout
    assert SECRET not in moved.stdout + moved.stderr

    old, new = Store(sqlite), Store(_url(postgres, secret_role))
    assert new.all_studies() == old.all_studies()
    assert new.audit() == old.audit()
    assert new.cursor() == old.cursor() is not None
    assert new.catchup_done()
    pg_env = {**env, "SYNC_DATABASE": bare, "SYNC_DATABASE_PASSWORD_FILE": str(secret_file)}
    again = _run(pg_env, "sync")
    assert again.returncode == 0, again.stderr
    assert len(openmrs.attachments()) == 2
    assert new.audit() == old.audit()  # nothing more was done in OpenMRS

    refused = _run(env, "move-ledger", "--to", _url(postgres, secret_role))
    assert refused.returncode == 1
    assert "holds a ledger already" in refused.stderr
    assert SECRET not in refused.stdout + refused.stderr
    old.close()
    new.close()


def test_move_ledger_refuses_a_ledger_being_worked(
    orthanc, openmrs, postgres, secret_role, tmp_path
):
    """A SQLite ledger a running process holds leases on is not moved (what that process wrote
    after the copy would be lost)."""
    sqlite = tmp_path / "ledger.sqlite3"
    running = Store(sqlite)
    assert running.claim_task("changes feed", time.time())
    env = env_for(orthanc, openmrs, sqlite)
    done = _run(env, "move-ledger", "--to", _url(postgres, secret_role))
    assert done.returncode == 1
    assert "stop every process" in done.stderr
    assert Store(_url(postgres, secret_role)).all_studies() == []
    running.close()


def test_move_ledger_needs_a_postgresql_target(orthanc, openmrs, tmp_path: Path) -> None:
    """--to must be a PostgreSQL URL; a file path is refused as a setting error."""
    env = env_for(orthanc, openmrs, tmp_path / "ledger.sqlite3")
    done = _run(env, "move-ledger", "--to", str(tmp_path / "other.sqlite3"))
    assert done.returncode == 2
    assert "postgresql://" in done.stderr
