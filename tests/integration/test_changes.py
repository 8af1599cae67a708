"""Changes in Orthanc after a study was synced: deletions, corrected identities, late series,
and studies whose StableStudy never came."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from orthanc_openmrs.models import Outcome, State
from orthanc_openmrs.orthanc import OrthancClient
from orthanc_openmrs_devtools.dicom_factory import (
    InstanceSpec,
    SeriesSpec,
    StudySpec,
    build_study,
    sop_uid,
)
from orthanc_openmrs_devtools.orthanc_server import OrthancServer
from support import ledger, load, service, settings_for, sync_pass


def _reconcile(settings):
    with service(settings) as built:
        return built.reconcile()


def _rename_patient(orthanc, spec: StudySpec, new_id: str, *, keep_source: bool) -> None:
    """What PACS staff do in Orthanc 1.10.1 to correct a PatientID, keeping the DICOM UIDs."""
    auth = (orthanc.username, orthanc.password)
    found = httpx.post(
        f"{orthanc.url}/tools/find",
        auth=auth,
        json={"Level": "Patient", "Query": {"PatientID": spec.patient_id}},
    )
    (patient,) = found.json()
    answer = httpx.post(
        f"{orthanc.url}/patients/{patient}/modify",
        auth=auth,
        timeout=60,
        json={
            "Replace": {"PatientID": new_id},
            "Keep": ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
            "Force": True,
            "KeepSource": keep_source,
        },
    )
    answer.raise_for_status()
    orthanc.wait_until_stable()


def test_deleted_study_gets_its_attachment_voided(orthanc, openmrs, database) -> None:
    """A study deleted in Orthanc is found by the sweep; its attachment is voided, not purged."""
    patient = openmrs.add_patient(["P001"])
    ids = load(orthanc, StudySpec("del"), StudySpec("stay"))
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 2
    httpx.delete(f"{orthanc.url}/studies/{ids['del']}", auth=(orthanc.username, orthanc.password))
    sweep = _reconcile(settings)
    assert (sweep.deleted, sweep.voided) == (1, 1)
    assert len(openmrs.attachments(patient)) == 1
    voided = [a for a in openmrs.attachments(patient, include_voided=True) if a.voided]
    assert len(voided) == 1
    store = ledger(settings)
    row = store.get(ids["del"])
    assert row is not None
    assert row.state is State.GONE
    assert [a.action for a in store.audit(ids["del"])] == ["create", "void"]
    assert _reconcile(settings).deleted == 0


def test_synced_study_found_deleted_during_an_attempt_is_voided(orthanc, openmrs, database) -> None:
    """A synced study that is gone when next looked at (a recheck, `retry`) loses its
    attachment as in a sweep."""
    openmrs.add_patient(["P001"])
    ids = load(orthanc, StudySpec("vanish"))
    settings = settings_for(orthanc, openmrs, database)
    sync_pass(settings)
    httpx.delete(
        f"{orthanc.url}/studies/{ids['vanish']}", auth=(orthanc.username, orthanc.password)
    )
    with service(settings) as built:
        (result,) = built.sync_now(ids["vanish"])
    assert result.outcome is Outcome.GONE
    assert openmrs.attachments() == []
    row = ledger(settings).get(ids["vanish"])
    assert row is not None
    assert row.state is State.GONE


def test_keep_deleted_setting_keeps_the_attachment(orthanc, openmrs, database) -> None:
    """With SYNC_KEEP_DELETED the attachment of a deleted study stays."""
    openmrs.add_patient(["P001"])
    ids = load(orthanc, StudySpec("del"))
    settings = settings_for(orthanc, openmrs, database, sync_keep_deleted=True)
    sync_pass(settings)
    httpx.delete(f"{orthanc.url}/studies/{ids['del']}", auth=(orthanc.username, orthanc.password))
    assert _reconcile(settings).voided == 0
    assert len(openmrs.attachments()) == 1
    row = ledger(settings).get(ids["del"])
    assert row is not None
    assert "kept" in row.reason


def test_deleted_then_uploaded_again_is_attached_again(orthanc, openmrs, database) -> None:
    """A study deleted (attachment voided) and sent to Orthanc again gets a new attachment."""
    openmrs.add_patient(["P001"])
    spec = StudySpec("again")
    ids = load(orthanc, spec)
    settings = settings_for(orthanc, openmrs, database)
    sync_pass(settings)
    httpx.delete(f"{orthanc.url}/studies/{ids['again']}", auth=(orthanc.username, orthanc.password))
    _reconcile(settings)
    assert openmrs.attachments() == []
    load(orthanc, spec)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    assert len(openmrs.attachments()) == 1


@pytest.mark.parametrize("keep_source", [False, True])
def test_corrected_patient_id_moves_the_attachment(orthanc, openmrs, database, keep_source) -> None:
    """PatientID corrected in Orthanc (UIDs kept, original deleted or not): the attachment on
    the wrong patient is voided and one is made on the right patient."""
    wrong = openmrs.add_patient(["WRONG-1"])
    right = openmrs.add_patient(["RIGHT-1"])
    spec = StudySpec("moved", patient_id="WRONG-1")
    load(orthanc, spec)
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    _rename_patient(orthanc, spec, "RIGHT-1", keep_source=keep_source)
    summary = sync_pass(settings)
    assert summary.counts[Outcome.SYNCED] == 1
    _reconcile(settings)
    sync_pass(settings)  # the original, if kept, now knows it is superseded
    assert openmrs.attachments(wrong) == []
    assert len(openmrs.attachments(right)) == 1
    audit = ledger(settings).audit()
    assert [(a.action, a.patient_uuid) for a in audit] == [
        ("create", wrong),
        ("create", right),
        ("void", wrong),
    ]


@pytest.mark.parametrize("found_by", ["catch-up", "changes"])
def test_both_identities_present_before_any_sync_attach_only_the_newer(
    orthanc, openmrs, database, found_by, monkeypatch
) -> None:
    """The original and the corrected identity both in Orthanc before the first attempt: only
    the corrected one is attached, whether the studies were found by the first start's catch-up
    or by following changes; the ledger knows both UIDs, so Orthanc is not asked to look the
    UID up."""
    wrong = openmrs.add_patient(["WRONG-3"])
    right = openmrs.add_patient(["RIGHT-3"])
    settings = settings_for(orthanc, openmrs, database)
    if found_by == "changes":
        assert sync_pass(settings).total == 0  # the first start, on an empty Orthanc
    spec = StudySpec("twice", patient_id="WRONG-3")
    load(orthanc, spec)
    _rename_patient(orthanc, spec, "RIGHT-3", keep_source=True)
    lookups: list[str] = []
    real_lookup = OrthancClient.lookup_study_uid

    def counted(self: OrthancClient, study_uid: str) -> list[str]:
        lookups.append(study_uid)
        return real_lookup(self, study_uid)

    monkeypatch.setattr(OrthancClient, "lookup_study_uid", counted)
    summary = sync_pass(settings)
    assert summary.counts[Outcome.SYNCED] == 1
    assert summary.counts[Outcome.SUPERSEDED] == 1
    assert openmrs.attachments(wrong) == []
    assert len(openmrs.attachments(right)) == 1
    assert lookups == []


def test_corrected_patient_id_that_matches_nobody_goes_to_review(
    orthanc, openmrs, database
) -> None:
    """A corrected PatientID nobody in OpenMRS has: the study waits for a person, and the
    attachment on the old patient is voided once the old identity leaves Orthanc."""
    wrong = openmrs.add_patient(["WRONG-2"])
    spec = StudySpec("lost", patient_id="WRONG-2")
    load(orthanc, spec)
    settings = settings_for(orthanc, openmrs, database)
    sync_pass(settings)
    _rename_patient(orthanc, spec, "NOBODY-2", keep_source=False)
    assert sync_pass(settings).counts[Outcome.UNMATCHED] == 1
    _reconcile(settings)
    assert openmrs.attachments(wrong) == []
    (waiting,) = ledger(settings).needing_a_person()
    assert waiting.dicom_patient_id == "NOBODY-2"


def _synced_from_series_2(orthanc, openmrs, database, key: str):
    """A study whose series 2 alone arrived and was synced; series 1 is the rest of the spec."""
    full = StudySpec(
        key,
        series=(
            SeriesSpec(2, instances=(InstanceSpec("ct", 1),)),
            SeriesSpec(1, modality="US", instances=(InstanceSpec("rgb", 1),)),
        ),
    )
    orthanc.upload_many(build_study(full)[:1])
    orthanc.wait_until_stable()
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    return full, settings


def test_late_series_that_comes_first_replaces_the_attachment(orthanc, openmrs, database) -> None:
    """A series numbered 1 arriving after the study was synced from series 2: the attachment
    is replaced (new one first, old one voided), and the audit says so."""
    patient = openmrs.add_patient(["P001"])
    full, settings = _synced_from_series_2(orthanc, openmrs, database, "late")
    (before,) = openmrs.attachments(patient)
    orthanc.upload_many(build_study(full)[1:])
    orthanc.wait_until_stable()
    assert sync_pass(settings).counts[Outcome.REPLACED] == 1
    (after,) = openmrs.attachments(patient)
    assert after.uuid != before.uuid
    assert after.data != before.data
    store = ledger(settings)
    row = store.get(store.all_studies()[0].orthanc_id)
    assert row is not None
    (instance,) = httpx.post(
        f"{orthanc.url}/tools/lookup",
        content=sop_uid(full, 1, 0),
        auth=(orthanc.username, orthanc.password),
    ).json()
    assert row.instance_id == instance["ID"]
    assert [a.action for a in store.audit()] == ["create", "create", "void"]


def test_study_whose_stable_change_never_came_is_found(tmp_path: Path, openmrs, database) -> None:
    """Orthanc restarted within StableAge of the last instance: no StableStudy ever comes, yet
    the reconciliation sweep gets the study synced."""
    server = OrthancServer(tmp_path / "slow", stable_age=4)
    server.start()
    try:
        openmrs.add_patient(["P001"])
        server.upload_many(build_study(StudySpec("lost-stable")))
        settings = settings_for(server, openmrs, database)
        assert sync_pass(settings).counts[Outcome.NOT_STABLE] == 1
        server.kill()
        server.start()
        assert sync_pass(settings).total == 0  # not due yet: it was waiting for StableStudy
        _reconcile(settings)
        assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    finally:
        server.kill()


def test_failed_replacement_is_tried_again_as_a_replacement(orthanc, openmrs, database) -> None:
    """When the upload replacing an attachment fails, the ledger keeps the old attachment and
    the next pass completes the replacement (old voided), never a second fresh upload."""
    patient = openmrs.add_patient(["P001"])
    full, settings = _synced_from_series_2(orthanc, openmrs, database, "retry-late")
    (old,) = openmrs.attachments(patient)
    orthanc.upload_many(build_study(full)[1:])
    orthanc.wait_until_stable()
    openmrs.fail_next_uploads(1, status=500)
    assert sync_pass(settings).counts[Outcome.FAILED] == 1
    (row,) = ledger(settings).all_studies()
    assert row.attachment_uuid == old.uuid
    assert sync_pass(settings).counts[Outcome.REPLACED] == 1
    (new,) = openmrs.attachments(patient)
    assert new.uuid != old.uuid
