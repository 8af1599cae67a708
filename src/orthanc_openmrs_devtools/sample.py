"""The sample setup: a handful of synthetic studies, a few real ones from pydicom's test
files (what a clinician would see), and seeded patients that show the rules.

Each study carries a note saying what it demonstrates and what the sync should do with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from orthanc_openmrs_devtools.dicom_factory import InstanceSpec, SeriesSpec, StudySpec
from orthanc_openmrs_devtools.openmrs_double import Identifier, OpenMRSDouble
from orthanc_openmrs_devtools.real_files import RealFile, rewrite


@dataclass(frozen=True)
class SampleStudy:
    spec: StudySpec
    shows: str
    expected: str  # the outcome the sync should report


def _ct(*numbers: int | None, kind: str = "ct") -> tuple[InstanceSpec, ...]:
    return tuple(InstanceSpec(kind, n) for n in numbers)


SAMPLE_STUDIES: tuple[SampleStudy, ...] = (
    SampleStudy(
        StudySpec(
            "sample-ct-chest",
            patient_id="100008E",
            patient_name="Smith^John",
            description="CT CHEST",
            study_date="20240110",
            series=(
                SeriesSpec(
                    3, modality="OT", description="Screenshots", instances=(InstanceSpec("rgb", 1),)
                ),
                SeriesSpec(1, description="Axial", instances=_ct(4, 2, 3, 5, 1)),
                SeriesSpec(2, description="Coronal", instances=_ct(1, 2)),
            ),
        ),
        "series uploaded 3, 1, 2 and instances 4, 2, 3, 5, 1: series 1, instance 1 is shown",
        "synced",
    ),
    SampleStudy(
        StudySpec(
            "sample-us-cine",
            patient_id="100008E",
            patient_name="Smith^John",
            description="US ABDOMEN",
            study_date="20240212",
            accession="ACC2",
            series=(SeriesSpec(1, modality="US", instances=(InstanceSpec("us_multiframe", 1),)),),
        ),
        "a multi-frame cine: its first frame is shown",
        "synced",
    ),
    SampleStudy(
        StudySpec(
            "sample-reports-first",
            patient_id="100009C",
            patient_name="Okafor^Ngozi",
            sex="F",
            description="CT HEAD with report",
            study_date="20240301",
            accession="ACC3",
            series=(
                SeriesSpec(1, modality="SR", instances=(InstanceSpec("sr", 1),)),
                SeriesSpec(2, modality="DOC", instances=(InstanceSpec("pdf", 1),)),
                SeriesSpec(3, instances=_ct(1, kind="ct_no_window")),
            ),
        ),
        "a report and a PDF come first: the CT (without window tags) is shown, not black",
        "synced",
    ),
    SampleStudy(
        StudySpec(
            "sample-pdf-only",
            patient_id="100009C",
            patient_name="Okafor^Ngozi",
            sex="F",
            description="Referral letter",
            study_date="20240302",
            accession="ACC4",
            series=(SeriesSpec(1, modality="DOC", instances=(InstanceSpec("pdf", 1),)),),
        ),
        "only an encapsulated PDF: the PDF itself is attached",
        "synced",
    ),
    SampleStudy(
        StudySpec(
            "sample-other-ids",
            patient_id="PACS-5531",
            other_patient_ids=("ZX-77",),
            patient_name="Dubois^Zoé",
            sex="F",
            description="Mammographie de dépistage",
            study_date="20240405",
            accession="ACC5",
            series=(
                SeriesSpec(1, modality="MG", instances=_ct(1)),
                SeriesSpec(0, modality="OT", instances=(InstanceSpec("rgb", 1),)),
            ),
        ),
        "matched through OtherPatientIDs (Ozone's tag); series 0 comes before series 1",
        "synced",
    ),
    SampleStudy(
        StudySpec(
            "sample-substring",
            patient_id="100008",
            patient_name="Smith^J",
            description="XR HAND",
            accession="ACC6",
        ),
        "PatientID 100008: OpenMRS's fuzzy search offers 100008E, which is not the same",
        "unmatched",
    ),
    SampleStudy(
        StudySpec(
            "sample-twins",
            patient_id="DUP-1",
            patient_name="Twin^A",
            description="XR CHEST",
            accession="ACC7",
        ),
        "two OpenMRS patients carry DUP-1: never attached, a person must decide",
        "ambiguous",
    ),
    SampleStudy(
        StudySpec(
            "sample-birth-date",
            patient_id="100012B",
            patient_name="Mensah^Kofi",
            birth_date="19750304",
            description="XR KNEE",
            accession="ACC9",
        ),
        "PatientID names one patient, but OpenMRS has him born 1975-05-03: not attached",
        "mismatch",
    ),
    SampleStudy(
        StudySpec(
            "sample-unregistered",
            patient_id="NEW-7",
            patient_name="Later^Pat",
            description="CT ABDOMEN",
            accession="ACC8",
        ),
        "no such patient yet: unmatched, then attached by the pass after its registration",
        "unmatched",
    ),
)


@dataclass(frozen=True)
class RealSample:
    """A real file from pydicom's test data, made a study of one of the sample patients."""

    file: str  # as pydicom and pydicom-data ship it
    patient_id: str
    tags: dict[str, str]
    shows: str
    expected: str

    def build(self) -> RealFile:
        from pydicom.data import get_testdata_file

        path = get_testdata_file(self.file)
        if path is None:
            raise FileNotFoundError(f"{self.file}: install pydicom-data (a dev dependency)")
        return rewrite(
            Path(str(path)),
            key="sample-" + self.file,
            patient_id=self.patient_id,
            tags={"PatientName": "Diallo^Amara", **self.tags},
        )


REAL_SAMPLES: tuple[RealSample, ...] = (
    RealSample(
        "CT_small.dcm",
        "100013X",
        {"StudyDescription": "CT ABDOMEN (real file)", "StudyDate": "20240501"},
        "a real CT without window tags: shown over its full range, never black",
        "synced",
    ),
    RealSample(
        "MR_small.dcm",
        "100013X",
        {"StudyDescription": "MR (real file)", "StudyDate": "20240502"},
        "a real MR, rendered with its own window",
        "synced",
    ),
    RealSample(
        "US1_J2KR.dcm",
        "100013X",
        {"StudyDescription": "US ABDOMEN (real file)", "StudyDate": "20240503"},
        "a real JPEG 2000 ultrasound Orthanc cannot decode (415): decoded here",
        "synced",
    ),
)


def seed_patients(double: OpenMRSDouble) -> dict[str, str]:
    """The OpenMRS side of the sample; patient uuids by a short label."""
    return {
        "John Smith": double.add_patient(["100008E"], given="John", family="Smith"),
        "Ngozi Okafor": double.add_patient(["100009C"], given="Ngozi", family="Okafor"),
        "Zoé Dubois": double.add_patient(
            ["100011A", Identifier("ZX-77", type_name="ID Card")], given="Zoé", family="Dubois"
        ),
        "Kofi Mensah": double.add_patient(
            ["100012B"], given="Kofi", family="Mensah", gender="M", birthdate=date(1975, 5, 3)
        ),
        "Amara Diallo": double.add_patient(["100013X"], given="Amara", family="Diallo"),
        "Twin A": double.add_patient(["DUP-1"], given="Ada", family="Twin"),
        "Twin B": double.add_patient(
            [Identifier("DUP-1", type_name="ID Card")], given="Bea", family="Twin"
        ),
    }
