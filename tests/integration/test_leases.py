"""Leases seen from one process: what another process sharing the ledger holds is left alone,
a person's command waits for it and then refuses, and the sweep is done by one at a time."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from orthanc_openmrs.errors import LeaseHeld
from orthanc_openmrs.models import Outcome, State
from orthanc_openmrs.store import LEASE, Store
from orthanc_openmrs.upkeep import SWEEP
from orthanc_openmrs_devtools.dicom_factory import StudySpec, study_uid
from support import ledger_rows, load, service, settings_for, sync_pass

OTHER = "other-host:4242:0000"


def _discovered(settings) -> None:
    with service(settings) as built:
        built.discover()


def _other(settings) -> Store:
    """The ledger as another process sees it."""
    return Store(settings.sync_database, owner=OTHER)


def _leases(settings) -> dict[str, tuple[str, float | None]]:
    rows = ledger_rows(
        settings.sync_database, "SELECT orthanc_id, lease_owner, lease_until FROM studies"
    )
    return {oid: (owner, until) for oid, owner, until in rows}


def test_a_pass_leaves_live_leases_alone_and_takes_over_run_out_ones(
    orthanc, openmrs, database
) -> None:
    """A study another live process holds is not worked by a pass; one whose lease ran out
    (its process was killed) is, and the held one follows once it is given back."""
    openmrs.add_patient(["P001"])
    ids = load(orthanc, *[StudySpec(f"s{i}") for i in range(4)])
    settings = settings_for(orthanc, openmrs, database)
    _discovered(settings)
    other = _other(settings)
    assert other.claim_study(ids["s0"], time.time()) is None
    assert Store(database, owner="killed").claim_study(ids["s1"], time.time() - LEASE) is None
    assert sync_pass(settings).counts[Outcome.SYNCED] == 3
    assert other.get(ids["s0"]).state is State.PENDING
    other.release([ids["s0"]])
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    assert len(openmrs.attachments()) == 4


@pytest.mark.parametrize("command", ["sync", "retry", "link", "ignore"])
def test_a_persons_command_refuses_a_study_another_process_works(
    orthanc, openmrs, database, command
) -> None:
    """`sync --study`, `retry`, `link` and `ignore` on a study another process holds wait for
    a while, then refuse naming the study, having changed nothing."""
    patient = openmrs.add_patient(["P001"])
    spec = StudySpec("held")
    ids = load(orthanc, spec)
    settings = settings_for(orthanc, openmrs, database)
    _discovered(settings)
    other = _other(settings)
    assert other.claim_study(ids["held"], time.time()) is None
    before = other.get(ids["held"])
    with service(settings) as built:
        built.lease_wait = 0.5
        run = {
            "sync": lambda: built.sync_now(study_uid(spec)),
            "retry": lambda: built.sync_now(study_uid(spec), reset=True),
            "link": lambda: built.link(study_uid(spec), patient, "ada"),
            "ignore": lambda: built.ignore(study_uid(spec), "ada", "test"),
        }[command]
        started = time.monotonic()
        with pytest.raises(LeaseHeld, match=rf"study {study_uid(spec)} is being worked by another"):
            run()
        assert time.monotonic() - started >= 0.5
    assert other.get(ids["held"]) == before
    assert other.audit() == []
    assert openmrs.attachments() == []


def test_a_persons_command_waits_for_the_other_process_to_finish(
    orthanc, openmrs, database
) -> None:
    """`retry` on a study another process gives back within the wait syncs it then."""
    openmrs.add_patient(["P001"])
    ids = load(orthanc, StudySpec("soon"))
    settings = settings_for(orthanc, openmrs, database)
    _discovered(settings)
    assert _other(settings).claim_study(ids["soon"], time.time()) is None

    def finish() -> None:
        time.sleep(1.0)
        _other(settings).release([ids["soon"]])  # a store of its own: one per thread

    releaser = threading.Thread(target=finish)
    releaser.start()
    with service(settings) as built:
        (result,) = built.sync_now(ids["soon"], reset=True)
    releaser.join()
    assert result.outcome is Outcome.SYNCED
    assert _leases(settings)[ids["soon"]] == ("", None)


def test_another_identity_of_a_uid_waits_for_the_process_working_the_first(
    orthanc, openmrs, database
) -> None:
    """Two Orthanc studies of one StudyInstanceUID (a corrected PatientID): while another
    process works one, neither a pass nor a person's command works the other."""
    openmrs.add_patient(["P001"])
    openmrs.add_patient(["P002"])
    ids = load(
        orthanc,
        StudySpec("first", patient_id="P001", study_uid="1.2.826.0.1.99.7"),
        StudySpec("second", patient_id="P002", study_uid="1.2.826.0.1.99.7"),
    )
    settings = settings_for(orthanc, openmrs, database)
    _discovered(settings)
    assert _other(settings).claim_study(ids["first"], time.time()) is None
    assert sync_pass(settings).total == 0
    with service(settings) as built:
        built.lease_wait = 0.2
        with pytest.raises(LeaseHeld, match=f"as Orthanc study {ids['first']}"):
            built.sync_now(ids["second"])
    assert openmrs.attachments() == []


def test_one_sweep_at_a_time(orthanc, openmrs, database) -> None:
    """While another process sweeps the ledger, `run` skips its sweep and `reconcile` waits,
    then refuses; once that sweep is over, this one sweeps."""
    load(orthanc, StudySpec("a"))
    settings = settings_for(orthanc, openmrs, database)
    other = _other(settings)
    assert other.claim_task(SWEEP, time.time())
    with service(settings) as built:
        built.lease_wait = 0.3
        assert built.upkeep.reconcile() is None
        with pytest.raises(LeaseHeld, match=r"another process .* is sweeping"):
            built.reconcile()
        other.release_task(SWEEP)
        assert built.reconcile().seen == 1
        assert built.store.claim_task(SWEEP, time.time())  # the sweep gave its lease up


def test_the_sweep_leaves_a_study_another_process_works(orthanc, openmrs, database) -> None:
    """A deleted study another process holds is not voided by the sweep; the next sweep,
    once it is free, voids its attachment."""
    openmrs.add_patient(["P001"])
    ids = load(orthanc, StudySpec("del"))
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    httpx.delete(f"{orthanc.url}/studies/{ids['del']}", auth=(orthanc.username, orthanc.password))
    other = _other(settings)
    assert other.claim_study(ids["del"], time.time()) is None
    with service(settings) as built:
        assert (built.reconcile().deleted, len(openmrs.attachments())) == (0, 1)
        other.release([ids["del"]])
        assert built.reconcile().voided == 1
    assert openmrs.attachments() == []


def test_a_pass_renews_the_leases_of_studies_in_flight(orthanc, openmrs, database) -> None:
    """While a slow attempt runs, the pass extends its lease again and again (so no other
    process takes it over), and gives it up once the result is recorded."""
    openmrs.add_patient(["P001"])
    ids = load(orthanc, StudySpec("slow"))
    openmrs.latency = 0.5  # a few requests: the attempt takes seconds
    settings = settings_for(orthanc, openmrs, database)
    _discovered(settings)
    seen: set[float] = set()
    done = threading.Event()

    def run() -> None:
        with service(settings) as built:
            built.renew_every = 0.2
            built.run_pass()
        done.set()

    worker = threading.Thread(target=run)
    worker.start()
    while not done.wait(0.05):
        owner, until = _leases(settings)[ids["slow"]]
        if owner and until is not None:
            seen.add(until)
    worker.join()
    assert len(seen) >= 3
    assert _leases(settings)[ids["slow"]] == ("", None)
    assert len(openmrs.attachments()) == 1
