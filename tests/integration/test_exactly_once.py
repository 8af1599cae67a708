"""Exactly once: no second upload, whatever is lost or fails on the way."""

from __future__ import annotations

from orthanc_openmrs.models import Outcome, State
from orthanc_openmrs_devtools.dicom_factory import StudySpec, study_uid
from support import PUBLIC_URL, ledger, load, lose_ledger, settings_for, sync_pass


def _specs(count: int, patient: str = "P001", prefix: str = "s") -> list[StudySpec]:
    return [StudySpec(f"{prefix}{i}", patient_id=patient) for i in range(count)]


def test_second_pass_adds_nothing(orthanc, openmrs, database) -> None:
    """A second pass, and a StableStudy seen again, upload nothing more."""
    openmrs.add_patient(["P001"])
    load(orthanc, *_specs(3))
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 3
    openmrs.reset_requests()
    second = sync_pass(settings)
    assert second.total == 0
    assert len(openmrs.attachments()) == 3
    assert openmrs.count_requests("POST", "/ws/rest/v1/attachment") == 0


def test_more_than_100_studies_all_synced(orthanc, openmrs, database) -> None:
    """All of 130 studies are synced (Ozone only ever looks at the first 100)."""
    openmrs.add_patient(["MANY"])
    load(orthanc, *_specs(130, patient="MANY"))
    settings = settings_for(orthanc, openmrs, database, sync_workers=4)
    summary = sync_pass(settings)
    assert summary.counts[Outcome.SYNCED] == 130
    captions = {a.comment for a in openmrs.attachments()}
    assert len(captions) == 130


def test_lost_database_does_not_duplicate_past_the_first_pages(orthanc, openmrs, database) -> None:
    """With the ledger deleted, a study whose attachment is older than 120 others of the patient
    (several pages of the attachment list) is recognised, and no look-alike UID fools it."""
    patient = openmrs.add_patient(["BUSY"])
    spec = StudySpec("busy", patient_id="BUSY")
    load(orthanc, spec)
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    uid = study_uid(spec)
    openmrs.add_attachment(patient, f"{PUBLIC_URL}/stone-webviewer/index.html?study={uid}.5")
    openmrs.add_attachment(patient, None)
    for i in range(120):
        openmrs.add_attachment(patient, f"note {i}")
    lose_ledger(database)
    summary = sync_pass(settings)
    assert summary.counts[Outcome.ALREADY_THERE] == 1
    mine = [a for a in openmrs.attachments(patient) if a.comment and a.comment.endswith(uid)]
    assert len(mine) == 1


def test_look_alike_uid_is_not_taken_for_the_study(orthanc, openmrs, database) -> None:
    """An attachment of study <uid>.5 does not stop study <uid> from being attached."""
    patient = openmrs.add_patient(["ALIKE"])
    spec = StudySpec("alike", patient_id="ALIKE")
    openmrs.add_attachment(
        patient, f"{PUBLIC_URL}/stone-webviewer/index.html?study={study_uid(spec)}.5"
    )
    load(orthanc, spec)
    assert sync_pass(settings_for(orthanc, openmrs, database)).counts[Outcome.SYNCED] == 1


def test_one_failing_study_does_not_stop_the_others(orthanc, openmrs, database) -> None:
    """An OpenMRS 500 on one upload fails that study only; it is retried on the next pass."""
    openmrs.add_patient(["P001"])
    load(orthanc, *_specs(4))
    openmrs.fail_next_uploads(1, status=500)
    settings = settings_for(orthanc, openmrs, database)
    first = sync_pass(settings)
    assert (first.counts[Outcome.SYNCED], first.counts[Outcome.FAILED]) == (3, 1)
    (failed,) = [r for r in ledger(settings).needing_a_person() if r.state is State.FAILED]
    assert "HTTP 500" in failed.reason
    assert failed.next_attempt_at is not None
    second = sync_pass(settings)
    assert second.counts[Outcome.SYNCED] == 1
    assert len(openmrs.attachments()) == 4


def test_response_lost_after_commit_is_not_uploaded_again(orthanc, openmrs, database) -> None:
    """OpenMRS stores the upload and drops the connection: recognised, no second upload."""
    openmrs.add_patient(["P001"])
    load(orthanc, *_specs(1))
    openmrs.drop_after_commit(1)
    settings = settings_for(orthanc, openmrs, database)
    summary = sync_pass(settings)
    assert summary.counts[Outcome.SYNCED] == 1
    assert len(openmrs.attachments()) == 1
    assert sync_pass(settings).total == 0
    assert len(openmrs.attachments()) == 1


def test_stale_session_401_does_not_duplicate(orthanc, openmrs, database) -> None:
    """A 'Session timed out' 401 on the upload (which ran anyway) leaves one attachment."""
    openmrs.add_patient(["P001"])
    load(orthanc, *_specs(1))
    settings = settings_for(orthanc, openmrs, database, sync_workers=1)
    from support import service

    with service(settings) as built:
        built.openmrs.check_credentials()  # the session cookie is now set
        openmrs.expire_sessions()
        summary = built.run_pass()
    assert summary.counts[Outcome.SYNCED] == 1
    assert len(openmrs.attachments()) == 1
    assert openmrs.failed_logins("admin") == 0


def test_hostile_uid_is_refused_and_does_not_block_others(orthanc, openmrs, database) -> None:
    """A StudyInstanceUID with & and # is recorded as failed with its reason; others sync."""
    openmrs.add_patient(["P001"])
    ids = load(orthanc, StudySpec("bad", study_uid="1.2.3&x=4#5"), *_specs(2))
    settings = settings_for(orthanc, openmrs, database)
    summary = sync_pass(settings)
    assert (summary.counts[Outcome.SYNCED], summary.counts[Outcome.FAILED]) == (2, 1)
    row = ledger(settings).get(ids["bad"])
    assert row is not None
    assert "invalid StudyInstanceUID" in row.reason
    assert len(openmrs.attachments()) == 2
