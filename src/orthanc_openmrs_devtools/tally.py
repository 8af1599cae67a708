"""Counting what landed in the OpenMRS double: each study's attachments and on whose chart.

Shared by the chaos script and the tests that run several processes on one ledger, so that
"exactly once" is counted the same way everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble

# The caption ends with the viewer link `...?study=<StudyInstanceUID>`; the whole token counts.
CAPTION_UID = re.compile(r"[?&]study=([0-9]+(?:\.[0-9]+)*)$")


def captions_by_uid(double: OpenMRSDouble) -> tuple[dict[str, list[str]], int]:
    """Non-voided attachments: study UID -> patient uuids holding it; and how many name none."""
    found: dict[str, list[str]] = {}
    stray = 0
    for attachment in double.attachments():
        match = CAPTION_UID.search(attachment.comment or "")
        if match is None:
            stray += 1
        else:
            found.setdefault(match.group(1), []).append(attachment.patient_uuid)
    return found, stray


@dataclass
class Tally:
    studies: int = 0
    missing: int = 0
    duplicates: int = 0
    wrong_patient: int = 0
    stray: int = 0

    def add(self, other: Tally) -> None:
        self.studies += other.studies
        self.missing += other.missing
        self.duplicates += other.duplicates
        self.wrong_patient += other.wrong_patient
        self.stray += other.stray

    @property
    def clean(self) -> bool:
        return not (self.missing or self.duplicates or self.wrong_patient or self.stray)

    def line(self, label: str) -> str:
        return (
            f"{label}: studies {self.studies}, missing {self.missing}, "
            f"duplicates {self.duplicates}, wrong patient {self.wrong_patient}"
        )


def tally(double: OpenMRSDouble, expected: dict[str, str]) -> Tally:
    """`expected`: study UID -> the uuid of its patient."""
    found, stray = captions_by_uid(double)
    result = Tally(studies=len(expected), stray=stray)
    for uid, patient in expected.items():
        holders = found.get(uid, [])
        result.missing += int(not holders)
        result.duplicates += max(0, len(holders) - 1)
        result.wrong_patient += sum(1 for holder in holders if holder != patient)
    # An attachment naming a study that was never uploaded is attached to nobody's study.
    result.stray += sum(len(v) for uid, v in found.items() if uid not in expected)
    return result
