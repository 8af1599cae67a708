"""Several processes on one ledger: `sync` beside `run`, and two `run`s, attach each study once."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from test_cli import _clean_environment, _command, _run

from orthanc_openmrs.service import LEASE_WAIT
from orthanc_openmrs.store import LEASE, Store
from orthanc_openmrs_devtools.dicom_factory import StudySpec, study_uid
from orthanc_openmrs_devtools.orthanc_server import free_tcp_port
from orthanc_openmrs_devtools.postgres_server import PostgresServer
from orthanc_openmrs_devtools.tally import Tally, tally
from support import env_for, ledger_rows, load

STUDIES = 80
# Slow enough that two processes always have studies between look and upload at once.
LATENCY = 0.1
SETTLE_TIMEOUT = 90.0
# After the last study shows up, watch a little longer: a duplicate can land just after it.
GRACE = 2.0
WHILE_SYNC_STARTS = 1.0


def _holds_a_lease(database: Path | str, pid: int) -> bool:
    """Whether the process `pid` holds a lease on a study (owners are host:pid:random)."""
    owners = ledger_rows(database, "SELECT lease_owner FROM studies WHERE lease_owner != ''")
    return any(owner.split(":")[1] == str(pid) for (owner,) in owners)


class _Run:
    """`orthanc-openmrs run` in the background, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        # Each `run` serves /health and /metrics on a port of its own, as two instances on
        # one host must be configured.
        own = {**env, "SYNC_HTTP_PORT": str(free_tcp_port())}
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [*_command(), "run"],
                env={**_clean_environment(), **own},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> int:
        """SIGTERM, and the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def synced(self) -> int:
        lines = self.log.read_text(errors="replace").splitlines()
        return sum(1 for line in lines if '"message": "study.synced"' in line)


def _backlog(orthanc, openmrs) -> dict[str, str]:
    """STUDIES studies in Orthanc, each of its own patient; StudyInstanceUID -> patient uuid."""
    specs, expected = [], {}
    for i in range(STUDIES):
        patient_id = f"LP{i:05d}"  # fixed width: the fuzzy search finds no neighbours
        spec = StudySpec(f"lease-{i}", patient_id=patient_id)
        expected[study_uid(spec)] = openmrs.add_patient([patient_id])
        specs.append(spec)
    load(orthanc, *specs)
    return expected


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = SETTLE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def _settle(openmrs, expected: dict[str, str], runs: list[_Run]) -> None:
    """Until every study has an attachment, then a short grace; fails if a process exits."""

    def all_attached() -> bool:
        for run in runs:
            assert run.process.poll() is None, run.log.read_text(errors="replace")[-3000:]
        return tally(openmrs, expected).missing == 0

    _wait_for(all_attached, "every study is attached")
    time.sleep(GRACE)


def test_sync_beside_run_attaches_each_study_once(orthanc, openmrs, database, tmp_path) -> None:
    """A `sync` started by hand while `run` works through a backlog leaves exactly one
    attachment per study, on its own patient, and both processes did part of the work."""
    expected = _backlog(orthanc, openmrs)
    openmrs.latency = LATENCY
    env = env_for(orthanc, openmrs, database)
    run = _Run(env, tmp_path / "run.log")
    try:
        _wait_for(lambda: bool(openmrs.attachments()), "`run` attaches its first study")
        # `run` must still have a backlog once `sync` is up, however long starting a process
        # takes on a busy machine: OpenMRS is slow until `sync` holds a lease of its own.
        openmrs.latency = WHILE_SYNC_STARTS
        sync = subprocess.Popen(
            [*_command(), "sync"],
            env={**_clean_environment(), **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for(lambda: _holds_a_lease(database, sync.pid), "`sync` claims a study")
        openmrs.latency = LATENCY
        stdout, stderr = sync.communicate(timeout=SETTLE_TIMEOUT)
        assert sync.returncode == 0, stderr
        _settle(openmrs, expected, [run])
        assert run.stop() == 0
    finally:
        run.kill()
    assert tally(openmrs, expected) == Tally(studies=STUDIES)
    by_sync = re.search(r"^\s*synced\s+(\d+)$", stdout, re.MULTILINE)
    assert by_sync is not None, stdout
    assert int(by_sync.group(1)) > 0
    assert run.synced() > 0


def test_two_runs_on_one_ledger_share_the_work(orthanc, openmrs, database, tmp_path) -> None:
    """Two `run` processes on one ledger attach every study of a backlog exactly once between
    them, each doing part of it, and both stop cleanly."""
    expected = _backlog(orthanc, openmrs)
    openmrs.latency = LATENCY
    env = env_for(orthanc, openmrs, database)
    runs = [_Run(env, tmp_path / f"run-{i}.log") for i in range(2)]
    try:
        _settle(openmrs, expected, runs)
        assert [run.stop() for run in runs] == [0, 0]
    finally:
        for run in runs:
            run.kill()
    assert tally(openmrs, expected) == Tally(studies=STUDIES)
    assert all(run.synced() > 0 for run in runs)


def _held_by_another_process(orthanc, openmrs, database, since: float) -> StudySpec:
    """One study in Orthanc and the ledger, leased by another process from `since` on."""
    openmrs.add_patient(["P001"])
    spec = StudySpec("held")
    ids = load(orthanc, spec)
    assert _run(env_for(orthanc, openmrs, database), "sync", "--dry-run").returncode == 0
    other = Store(database, owner="other-host:4242:0000")
    assert other.claim_study(ids["held"], since) is None
    other.close()
    return spec


def test_retry_refuses_a_study_another_process_works(orthanc, openmrs, database) -> None:
    """`retry` on a study another live process is working waits for it, then exits 1 with a
    message naming the study and the other process, having attached nothing."""
    spec = _held_by_another_process(orthanc, openmrs, database, time.time())
    started = time.monotonic()
    done = _run(env_for(orthanc, openmrs, database), "retry", study_uid(spec))
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started >= LEASE_WAIT
    assert f"study {study_uid(spec)} is being worked by another process" in done.stderr
    assert "other-host:4242:0000" in done.stderr
    assert openmrs.attachments() == []


def test_retry_takes_over_once_a_killed_process_lease_runs_out(orthanc, openmrs, database) -> None:
    """`retry` on a study whose process was killed a lease ago, less a few seconds, waits
    those seconds and attaches it."""
    spec = _held_by_another_process(orthanc, openmrs, database, time.time() - LEASE + 3)
    done = _run(env_for(orthanc, openmrs, database), "retry", study_uid(spec))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"synced: {study_uid(spec)}")
    assert len(openmrs.attachments()) == 1


def test_two_runs_and_a_sync_attach_each_study_once(orthanc, openmrs, database, tmp_path) -> None:
    """Two `run`s and a `sync` started beside them on one ledger leave exactly one attachment
    per study, on its own patient."""
    expected = _backlog(orthanc, openmrs)
    openmrs.latency = LATENCY
    env = env_for(orthanc, openmrs, database)
    runs = [_Run(env, tmp_path / f"run-{i}.log") for i in range(2)]
    try:
        _wait_for(lambda: bool(openmrs.attachments()), "a `run` attaches its first study")
        done = _run(env, "sync")
        assert done.returncode == 0, done.stderr
        _settle(openmrs, expected, runs)
        assert [run.stop() for run in runs] == [0, 0]
    finally:
        for run in runs:
            run.kill()
    assert tally(openmrs, expected) == Tally(studies=STUDIES)


def _following(run: _Run) -> bool:
    return '"message": "feed.following"' in run.log.read_text(errors="replace")


def test_postgres_feed_is_taken_over_when_its_follower_is_killed(
    orthanc, openmrs, postgres_database, tmp_path
) -> None:
    """PostgreSQL: of two `run`s, one follows the changes feed; killed, the other takes the
    feed over (PostgreSQL frees the lock with the dead process's connection) and attaches a
    study that arrives afterwards."""
    first_patient = openmrs.add_patient(["FEED-1"])
    env = {**env_for(orthanc, openmrs, postgres_database), "SYNC_POLL_INTERVAL": "0.5"}
    runs = [_Run(env, tmp_path / f"run-{i}.log") for i in range(2)]
    try:
        _wait_for(lambda: any(_following(run) for run in runs), "a `run` follows the feed")
        follower, other = runs if _following(runs[0]) else runs[::-1]
        load(orthanc, StudySpec("before", patient_id="FEED-1"))
        _wait_for(lambda: len(openmrs.attachments(first_patient)) == 1, "the first is attached")
        assert not _following(other)
        follower.kill()
        late = openmrs.add_patient(["FEED-2"])
        load(orthanc, StudySpec("after", patient_id="FEED-2"))
        _wait_for(lambda: len(openmrs.attachments(late)) == 1, "the late study is attached")
        assert _following(other)
        assert other.stop() == 0
    finally:
        for run in runs:
            run.kill()
    assert len(openmrs.attachments()) == 2


def test_run_waits_out_a_postgres_restart(orthanc, openmrs, tmp_path) -> None:
    """With the default settings, PostgreSQL going away under a running `run` (a restart, a
    fail-over) is backed off like a server outage, not an exit; once it is back, the next
    study is attached and the first is not attached again."""
    with PostgresServer() as server:
        url = server.create_database()
        first = openmrs.add_patient(["PGR-1"])
        run = _Run(env_for(orthanc, openmrs, url), tmp_path / "run.log")
        try:
            load(orthanc, StudySpec("before", patient_id="PGR-1"))
            _wait_for(lambda: len(openmrs.attachments(first)) == 1, "the first is attached")
            server.halt()
            _wait_for(
                lambda: '"reason_code": "ledger_error"' in run.log.read_text(errors="replace"),
                "`run` backs off, naming the ledger",
            )
            assert run.process.poll() is None
            second = openmrs.add_patient(["PGR-2"])
            load(orthanc, StudySpec("after", patient_id="PGR-2"))
            server.resume()
            _wait_for(lambda: len(openmrs.attachments(second)) == 1, "the second is attached")
            assert run.stop() == 0
        finally:
            run.kill()
    assert len(openmrs.attachments()) == 2
    assert server.password not in run.log.read_text(errors="replace")
