"""Run a real PostgreSQL (Debian's package) on loopback for tests and benchmarks.

initdb makes a cluster in a temporary directory of its own, listening on 127.0.0.1 at a free port
and on a socket in that directory, with password (SCRAM) authentication over TCP, so the tests
meet the server as a site's instance does. PostgreSQL refuses to run as root: run as root, the
cluster belongs to, and the server runs as, the `postgres` system user. Durability is traded for
speed (fsync, synchronous_commit, full_page_writes off): a test cluster is thrown away.

Each database is made by `create_database()`, cheap enough for one per test.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

import psycopg

from orthanc_openmrs_devtools.orthanc_server import free_tcp_port

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["PostgresServer", "PostgresServerError", "postgres_binaries"]

_VERSIONS = ("17", "16", "15")
_START_TIMEOUT = 60.0
_PORT_ATTEMPTS = 5
_SYSTEM_USER = "postgres"
SUPERUSER = "ledger_admin"


class PostgresServerError(RuntimeError):
    """PostgreSQL could not be set up or started."""


def postgres_binaries() -> Path:
    """The directory of Debian's initdb and postgres (the newest installed)."""
    for version in _VERSIONS:
        directory = Path(f"/usr/lib/postgresql/{version}/bin")
        if (directory / "postgres").exists():
            return directory
    raise PostgresServerError("no PostgreSQL server installed (apt-get install postgresql)")


class PostgresServer:
    """One throw-away cluster; `url(database)` gives a URL with the superuser's password."""

    def __init__(self) -> None:
        self.password = secrets.token_urlsafe(16)
        self.port = 0
        self.host = "127.0.0.1"
        self.username = SUPERUSER
        self._bin = postgres_binaries()
        self._root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Self:
        self._root = Path(tempfile.mkdtemp(prefix="ledger-pg-"))
        self._as_owner = os.geteuid() == 0
        if self._as_owner:
            owner = pwd.getpwnam(_SYSTEM_USER)
            os.chown(self._root, owner.pw_uid, owner.pw_gid)
        password_file = self._root / "pwfile"
        password_file.write_text(self.password + "\n", encoding="utf-8")
        if self._as_owner:
            os.chown(password_file, pwd.getpwnam(_SYSTEM_USER).pw_uid, -1)
        self._run(
            str(self._bin / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--username",
            SUPERUSER,
            "--pwfile",
            str(password_file),
            "--auth-host",
            "scram-sha-256",
            "--auth-local",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C.UTF-8",
            "--no-sync",
        )
        password_file.unlink()
        for _ in range(_PORT_ATTEMPTS):
            self.port = free_tcp_port()
            if self._launch():
                atexit.register(self.stop)
                return self
        raise PostgresServerError(f"PostgreSQL did not start: {self._log_tail()}")

    def _launch(self) -> bool:
        """Start on self.port; False when another process took the port meanwhile."""
        assert self._root is not None
        log = (self._root / "postgres.log").open("ab")
        command = [
            str(self._bin / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            f"unix_socket_directories={self._root}",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=300",
            "-c",
            "log_min_messages=warning",
        ]
        self._process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C for pytest does not reach it first
            **self._as(),
        )
        log.close()
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        self.stop()
        raise PostgresServerError(f"PostgreSQL did not answer: {self._log_tail()}")

    def halt(self) -> None:
        """Stop the server but keep its data, as a database restarting or failing over."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # SIGINT: PostgreSQL's fast shutdown (ends sessions, no waiting for clients).
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def resume(self) -> None:
        """Start a halted server again, on its port."""
        if self._process is None and not self._launch():
            raise PostgresServerError(f"PostgreSQL did not start again: {self._log_tail()}")

    def stop(self) -> None:
        self.halt()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- use -------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        assert self._root is not None, "not started"
        return self._root / "data"

    def url(self, database: str, *, password: str | None = None) -> str:
        secret = quote(self.password if password is None else password, safe="")
        return f"postgresql://{self.username}:{secret}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database (its name random unless given); its URL, password included."""
        name = name or f"ledger_{secrets.token_hex(6)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, sql: str) -> None:
        """A statement as the superuser on the `postgres` database (roles, databases)."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[call-overload,unused-ignore]

    # -- helpers ---------------------------------------------------------------------------
    def _as(self) -> dict[str, Any]:
        """Popen's arguments that run the command as the system user when we are root. The
        child is then PostgreSQL itself, not a wrapper such as runuser, which would exit on
        a signal and leave the server running."""
        if not self._as_owner:
            return {}
        return {"user": _SYSTEM_USER, "group": _SYSTEM_USER, "extra_groups": []}

    def _run(self, *command: str) -> None:
        done = subprocess.run(
            list(command),
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
            **self._as(),
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise PostgresServerError(f"{Path(command[0]).name} failed: {output}")

    def _log_tail(self) -> str:
        if self._root is None:
            return ""
        log = self._root / "postgres.log"
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-20:])
