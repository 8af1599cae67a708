"""No patient data in the log: whole passes of `run` (synced, a study card, unmatched,
ambiguous, mismatch, failed), then a start with refused credentials, over studies whose DICOM
carries distinctive fake PHI; none of it appears anywhere in what the processes wrote (stdout
and stderr)."""

from __future__ import annotations

import json
from datetime import date

from running import Run, wait_for
from test_cli import _run

from orthanc_openmrs.store import Store
from orthanc_openmrs_devtools.dicom_factory import InstanceSpec, SeriesSpec, StudySpec, study_uid
from support import PUBLIC_URL, env_for, load

# Each value is found nowhere else, so finding it in the log can only mean a leak.
SYNCED = StudySpec(
    "phi-synced",
    patient_id="PHIX-SYNC-4471",
    patient_name="Zzyzx^Quentinia^Marvolo",
    birth_date="19230405",
    other_patient_ids=("PHIX-OTHER-9093",),
    description="PHIXDESC ALPHA\x1b[31m",
    accession="PHIXACC-1",
)
UNMATCHED = StudySpec(
    "phi-unmatched",
    patient_id="PHIX-NOBODY-8812",
    patient_name="Yggdrasilova^Persephonea",
    birth_date="19310607",
)
AMBIGUOUS = StudySpec(
    "phi-ambiguous",
    patient_id="PHIX-TWIN-5530",
    patient_name="Xanthippova^Berenike",
    birth_date="19410809",
)
NOTHING_TO_SHOW = StudySpec(
    "phi-report-only",
    patient_id="PHIX-REPORT-7702",
    patient_name="Wolkenstein^Hildegardis",
    birth_date="19511011",
    series=(SeriesSpec(modality="SR", instances=(InstanceSpec(kind="sr"),)),),
)
MISMATCH = StudySpec(
    "phi-mismatch",
    patient_id="PHIX-MISMATCH-6161",
    patient_name="Vexillova^Ottoline",
    birth_date="19620303",
)
# The birth date OpenMRS holds for the mismatch's patient, and both dates as a reason shows them.
OPENMRS_BIRTHDATE = date(1962, 4, 4)
STUDIES = (SYNCED, UNMATCHED, AMBIGUOUS, NOTHING_TO_SHOW, MISMATCH)


def phi_values() -> list[str]:
    """What must never be logged: identifiers, names (whole and in parts), birth dates,
    descriptions, accession numbers, UIDs (INFO), captions' links and the passwords."""
    values = ["PHIXDESC", "PHIXACC-1", "Admin123", "wrong-Pa55", "orthanc-secret-pw"]
    for spec in STUDIES:
        values += [spec.patient_id, spec.patient_name, spec.birth_date, study_uid(spec)]
        values += spec.patient_name.split("^")
        values += list(spec.other_patient_ids)
    values += [f"{PUBLIC_URL}/stone-webviewer", "study="]
    values += ["1962-03-03", OPENMRS_BIRTHDATE.isoformat(), "19620404"]
    return values


def _states(database) -> dict[str, int]:
    store = Store(database)
    try:
        return {state.value: n for state, n in store.counts().items() if n}
    finally:
        store.close()


def test_logs_carry_no_patient_data(orthanc, openmrs, database) -> None:
    """The log of every outcome, and of refused credentials, holds none of the fake PHI."""
    openmrs.add_patient(["PHIX-SYNC-4471"], given="Quentinia", family="Zzyzx")
    openmrs.add_patient(["PHIX-TWIN-5530"], given="Berenike", family="Xanthippova")
    openmrs.add_patient(["PHIX-TWIN-5530"], given="Berenike", family="Xanthippova")
    openmrs.add_patient(["PHIX-REPORT-7702"], given="Hildegardis", family="Wolkenstein")
    openmrs.add_patient(
        ["PHIX-MISMATCH-6161"], given="Ottoline", family="Vexillova", birthdate=OPENMRS_BIRTHDATE
    )
    openmrs.fail_next_uploads(1, 500)  # the first upload fails; the next pass attaches it
    load(orthanc, *STUDIES)
    env = {**env_for(orthanc, openmrs, database), "SYNC_POLL_INTERVAL": "0.3"}
    with Run(env) as run:
        assert wait_for(
            lambda: (
                _states(database)
                # the failed upload is attached by the next pass; the report gets a study card
                == {"synced": 2, "unmatched": 1, "ambiguous": 1, "mismatch": 1}
            ),
            timeout=60,
        ), _states(database)
    assert run.process.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    logged = {e["message"] for e in events}
    assert {
        "study.synced",
        "study.unmatched",
        "study.ambiguous",
        "study.mismatch",
        "study.failed",
    } <= logged
    failed = [e for e in events if e["message"] == "study.failed"]
    assert {e["reason_code"] for e in failed} == {"http_error"}

    refused = {
        **env,
        "OPENMRS_PASSWORD": "wrong-Pa55",
        "ORTHANC_PASSWORD": "orthanc-secret-pw",
    }
    with Run(refused) as held:
        assert wait_for(lambda: held.answers("/ready", 503))
    verbose = _run(refused, "sync", "-v")  # DEBUG too: UIDs may show, patients never
    assert verbose.returncode == 3

    output = {
        "run stdout": run.stdout,
        "run stderr": run.stderr,
        "held run stdout": held.stdout,
        "held run stderr": held.stderr,
    }
    for name, text in output.items():
        for value in phi_values():
            assert value not in text, f"{value!r} in {name}"
    for value in phi_values():
        if value not in {study_uid(spec) for spec in STUDIES} and value != "study=":
            assert value not in verbose.stdout + verbose.stderr, value
    assert "\x1b" not in run.stdout
