"""Backfill controls: dry run, rate limit, request cost per study."""

from __future__ import annotations

import itertools

from orthanc_openmrs.models import Outcome, State
from orthanc_openmrs_devtools.dicom_factory import StudySpec
from support import ledger, load, pass_cost, service, settings_for, sync_pass


def test_dry_run_writes_nothing_to_openmrs(orthanc, openmrs, database) -> None:
    """--dry-run reports who would get what and what is unmatched; OpenMRS sees only reads."""
    patient = openmrs.add_patient(["P001"])
    load(orthanc, StudySpec("d1"), StudySpec("d2"), StudySpec("d3", patient_id="NOPE"))
    settings = settings_for(orthanc, openmrs, database)
    dry = sync_pass(settings, dry_run=True)
    assert dry.counts[Outcome.SYNCED] == 2
    assert dry.counts[Outcome.UNMATCHED] == 1
    assert {r.patient_uuid for r in dry.planned} == {patient}
    assert all("stone-webviewer" in r.caption for r in dry.planned)
    assert openmrs.count_requests("POST") == 0
    assert openmrs.count_requests("DELETE") == 0
    assert openmrs.attachments() == []
    assert all(row.state is State.PENDING for row in ledger(settings).all_studies())
    real = sync_pass(settings)
    assert real.counts[Outcome.SYNCED] == 2


def test_rate_limit_spaces_uploads(orthanc, openmrs, database) -> None:
    """SYNC_RATE_LIMIT=4 keeps uploads at least a quarter of a second apart, across workers."""
    openmrs.add_patient(["P001"])
    load(orthanc, *[StudySpec(f"r{i}") for i in range(5)])
    settings = settings_for(orthanc, openmrs, database, sync_rate_limit=4, sync_workers=4)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 5
    # When each upload reached the double, not when it was stored: the double's handling time
    # (parsing, checking the picture) varies with the machine's load, the spacing must not.
    uploads = [r for r in openmrs.requests if r.method == "POST" and r.path.endswith("/attachment")]
    assert len(uploads) == 5
    times = sorted(r.arrived for r in uploads)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.2  # 0.25 s, less the time a request takes to arrive


def test_common_case_request_cost(orthanc, openmrs, database) -> None:
    """A plain study costs 5 Orthanc requests (study, series, instances, tags, render) and at
    most 3 OpenMRS requests (2 when its patient was already looked up in the pass)."""
    openmrs.add_patient(["P001"])
    load(orthanc, *[StudySpec(f"c{i}") for i in range(4)])
    settings = settings_for(orthanc, openmrs, database, sync_workers=1)
    summary, orthanc_cost, openmrs_cost = pass_cost(settings)
    assert summary.counts[Outcome.SYNCED] == 4
    assert orthanc_cost <= 4 * 5 + 1  # + the one changes poll of the pass
    # the pass's patient-change poll, one patient lookup, then list + upload per study
    assert openmrs_cost == 1 + 1 + 4 * 2


def test_idle_poll_costs_one_request(orthanc, openmrs, database) -> None:
    """With everything synced, a pass costs one Orthanc request (the changes poll) and one
    OpenMRS request (the patient-change poll) however many studies exist."""
    openmrs.add_patient(["P001"])
    load(orthanc, *[StudySpec(f"i{i}") for i in range(6)])
    settings = settings_for(orthanc, openmrs, database)
    sync_pass(settings)
    with service(settings) as built:
        before = built.orthanc.requests
        assert built.run_pass().total == 0
        assert built.orthanc.requests - before == 1
        assert built.openmrs.requests == 1
