"""Discovery: every study, from a first start on a full PACS to the changes that follow."""

from __future__ import annotations

import httpx

from orthanc_openmrs.models import Outcome
from orthanc_openmrs_devtools.dicom_factory import InstanceSpec, SeriesSpec, StudySpec, build_study
from support import load, settings_for, sync_pass


def test_first_pass_finds_studies_whose_history_was_cleared(orthanc, openmrs, database) -> None:
    """With Orthanc's changes log emptied, studies already stored are still all synced."""
    openmrs.add_patient(["P001"])
    load(orthanc, *[StudySpec(f"old{i}") for i in range(5)])
    httpx.delete(f"{orthanc.url}/changes", auth=(orthanc.username, orthanc.password))
    summary = sync_pass(settings_for(orthanc, openmrs, database))
    assert summary.counts[Outcome.SYNCED] == 5


def test_new_studies_are_found_through_the_changes_feed(orthanc, openmrs, database) -> None:
    """After the first pass, a new study is found from /changes and synced on the next pass."""
    openmrs.add_patient(["P001"])
    load(orthanc, StudySpec("first"))
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    load(orthanc, StudySpec("second"))
    summary = sync_pass(settings)
    assert summary.counts[Outcome.SYNCED] == 1
    assert summary.discovered == 1


def test_unstable_study_waits(orthanc, openmrs, database) -> None:
    """A study still being received is not synced yet, and is synced once stable."""
    openmrs.add_patient(["P001"])
    load(orthanc, StudySpec("slow"), wait=False)
    settings = settings_for(orthanc, openmrs, database)
    first = sync_pass(settings)
    assert first.counts[Outcome.SYNCED] == 0
    assert first.counts[Outcome.NOT_STABLE] == 1
    orthanc.wait_until_stable()
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1


def test_study_deleted_before_its_turn_is_gone(orthanc, openmrs, database) -> None:
    """A study deleted between discovery and its fetch (404) is recorded as gone."""
    openmrs.add_patient(["P001"])
    ids = load(orthanc, StudySpec("doomed"), StudySpec("kept"))
    settings = settings_for(orthanc, openmrs, database)
    from support import service

    with service(settings) as built:
        built.discover()
        httpx.delete(
            f"{orthanc.url}/studies/{ids['doomed']}", auth=(orthanc.username, orthanc.password)
        )
        summary = built.run_pass()
    assert summary.counts[Outcome.GONE] == 1
    assert summary.counts[Outcome.SYNCED] == 1


def test_late_series_with_higher_number_changes_nothing(orthanc, openmrs, database) -> None:
    """A late series numbered after the first is looked at, and leaves the attachment alone."""
    openmrs.add_patient(["P001"])
    spec = StudySpec("grow")
    load(orthanc, spec)
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    grown = StudySpec("grow", series=(*spec.series, SeriesSpec(9, instances=(InstanceSpec(),))))
    orthanc.upload_many(build_study(grown)[-1:])
    orthanc.wait_until_stable()
    openmrs.reset_requests()
    second = sync_pass(settings)
    assert second.counts[Outcome.ALREADY_THERE] == 1
    assert len(openmrs.attachments()) == 1
    assert openmrs.count_requests("POST") == 0
    assert openmrs.count_requests("DELETE") == 0


def test_expanded_study_list_pages_give_every_study_with_its_uid(orthanc) -> None:
    """The first start's listing reads Orthanc page by page, and every study comes with the
    StudyInstanceUID Orthanc holds for it."""
    from orthanc_openmrs.orthanc import OrthancClient

    ids = load(orthanc, *[StudySpec(f"page{i}", patient_id=f"PG{i}") for i in range(3)])
    client = OrthancClient(orthanc.url, username=orthanc.username, password=orthanc.password)
    try:
        pages = list(client.studies_with_uids(size=2))
        expected = {oid: client.study(oid).study_uid for oid in ids.values()}
    finally:
        client.close()
    assert [len(page) for page in pages] == [2, 1]
    assert {k: v for page in pages for k, v in page.items()} == expected
