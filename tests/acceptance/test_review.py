"""The review queue and a person's decisions, through the command line."""

from __future__ import annotations

import json
from datetime import date

from test_cli import _run

from orthanc_openmrs_devtools.dicom_factory import StudySpec, study_uid
from orthanc_openmrs_devtools.openmrs_double import Identifier
from support import env_for, load


def test_review_shows_identity_and_candidates_then_link_attaches(
    orthanc, openmrs, database
) -> None:
    """An ambiguous study is listed with its DICOM identity and both candidate patients;
    `link` attaches it to the chosen one, recorded as manual, and the queue empties."""
    first = openmrs.add_patient([Identifier("TW-1")], given="Ada", family="Twin")
    second = openmrs.add_patient([Identifier("TW-1", type_name="ID Card")], given="Bea")
    spec = StudySpec(
        "twins",
        patient_id="TW-1",
        patient_name="Twin^Ada",
        birth_date="19991231",
        description="XR CHEST",
    )
    ids = load(orthanc, spec)
    env = env_for(orthanc, openmrs, database)
    assert _run(env, "sync").returncode == 0
    review = _run(env, "review")
    assert "AMBIGUOUS" in review.stdout
    assert "PatientID 'TW-1', name 'Twin^Ada', born 19991231" in review.stdout
    assert "XR CHEST" in review.stdout
    assert f"candidate patient: {first}" in review.stdout
    assert f"candidate patient: {second}" in review.stdout
    (item,) = json.loads(_run(env, "review", "--json").stdout)
    assert item["orthanc_id"] == ids["twins"]
    assert len(item["candidate_patients"]) == 2

    linked = _run(env, "link", study_uid(spec), second, "--by", "dr.okafor")
    assert linked.returncode == 0, linked.stderr
    assert linked.stdout.startswith("synced:")
    (attachment,) = openmrs.attachments()
    assert attachment.patient_uuid == second
    assert _run(env, "review").stdout.strip() == "Nothing needs a person."
    audit = _run(env, "audit", "--study", study_uid(spec))
    assert "link" in audit.stdout
    assert "linked by dr.okafor" in audit.stdout
    assert f"create  study {study_uid(spec)}  patient {second}" in audit.stdout
    again = _run(env, "sync")
    assert again.returncode == 0
    assert len(openmrs.attachments()) == 1


def test_mismatch_is_listed_with_both_values_then_linked(orthanc, openmrs, database) -> None:
    """A study whose birth date contradicts the matched patient is a mismatch in `sync`,
    `status --json` and `review --json` (with PatientSex); `link` attaches it as a person's
    decision."""
    patient = openmrs.add_patient(["MM-1"], gender="F", birthdate=date(1980, 2, 1))
    spec = StudySpec("mm", patient_id="MM-1", birth_date="19800102", sex="F")
    load(orthanc, spec)
    env = env_for(orthanc, openmrs, database)
    synced = _run(env, "sync")
    assert synced.returncode == 0, synced.stderr
    assert "  mismatch            1" in synced.stdout
    reason = f"birth date differs: DICOM 1980-01-02, OpenMRS 1980-02-01 (patient {patient})"
    status = json.loads(_run(env, "status", "--json").stdout)
    assert status["counts"]["mismatch"] == 1
    (waiting,) = status["needs_a_person"]
    assert (waiting["state"], waiting["reason"], waiting["retried"]) == ("mismatch", reason, True)
    (item,) = json.loads(_run(env, "review", "--json").stdout)
    assert (item["state"], item["birth_date"], item["patient_sex"]) == ("mismatch", "19800102", "F")
    assert openmrs.attachments() == []
    linked = _run(env, "link", study_uid(spec), patient, "--by", "dr.okafor")
    assert linked.returncode == 0, linked.stderr
    assert linked.stdout.startswith("synced:")
    assert [a.patient_uuid for a in openmrs.attachments()] == [patient]


def test_link_refuses_an_unknown_patient(orthanc, openmrs, database) -> None:
    """Linking to a patient uuid OpenMRS does not have changes nothing."""
    spec = StudySpec("nobody", patient_id="NOPE")
    load(orthanc, spec)
    env = env_for(orthanc, openmrs, database)
    _run(env, "sync")
    done = _run(env, "link", study_uid(spec), "00000000-0000-0000-0000-000000000000")
    assert done.returncode == 1
    assert "no patient" in done.stderr
    assert openmrs.attachments() == []


def test_ignore_then_retry(orthanc, openmrs, database) -> None:
    """`ignore` takes a study out of the queue and out of automatic retries; `retry` brings
    it back and tries it at once (attached now that the patient exists)."""
    spec = StudySpec("later", patient_id="LATER-9")
    load(orthanc, spec)
    env = env_for(orthanc, openmrs, database)
    _run(env, "sync")
    ignored = _run(env, "ignore", study_uid(spec), "--reason", "test study", "--by", "pacs")
    assert ignored.returncode == 0
    assert "ignored by pacs: test study" in ignored.stdout
    assert _run(env, "review").stdout.strip() == "Nothing needs a person."
    openmrs.add_patient(["LATER-9"])
    assert "Pass complete: 0 studies" in _run(env, "sync").stdout
    assert openmrs.attachments() == []
    status = json.loads(_run(env, "status", "--json").stdout)
    assert status["counts"]["ignored"] == 1
    retried = _run(env, "retry", study_uid(spec))
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.startswith("synced:")
    assert len(openmrs.attachments()) == 1


def test_reconcile_command_voids_deleted_study(orthanc, openmrs, database) -> None:
    """`reconcile` reports the sweep and voids the attachment of a study deleted in Orthanc."""
    import httpx

    openmrs.add_patient(["P001"])
    ids = load(orthanc, StudySpec("bye"))
    env = env_for(orthanc, openmrs, database)
    _run(env, "sync")
    httpx.delete(f"{orthanc.url}/studies/{ids['bye']}", auth=(orthanc.username, orthanc.password))
    done = _run(env, "reconcile")
    assert done.returncode == 0, done.stderr
    assert (
        "0 studies in Orthanc, 0 not known before, 1 deleted from Orthanc (1 attachments voided)"
        in done.stdout
    )
    assert openmrs.attachments() == []
    audit = json.loads(_run(env, "audit", "--json").stdout)
    assert [a["action"] for a in audit] == ["create", "void"]
