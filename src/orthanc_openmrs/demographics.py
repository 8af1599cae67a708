"""Pure: does what the study says of the patient contradict what OpenMRS says of the one its
identifier matched?

The identifier decides who the study belongs to; this check only vetoes. A value is compared
only when both sides hold one that means something: a DICOM birth date that is not a real
calendar date, a sex other than M or F, or a name with control characters is not evidence of
anything, so it never claims a disagreement.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date

from orthanc_openmrs.matching import PADDING
from orthanc_openmrs.models import OpenMRSPatient

_DA = re.compile(r"[0-9]{8}")
_SEXES = frozenset({"M", "F"})
# A PN component is at most 64 characters; a longer family name is not a family name.
_PN_COMPONENT_MAX = 64


class Check(enum.StrEnum):
    """What may be compared; the setting's words."""

    BIRTHDATE = "birthdate"
    SEX = "sex"
    FAMILY_NAME = "family_name"


DEFAULT_CHECKS = frozenset({Check.BIRTHDATE, Check.SEX})


@dataclass(frozen=True)
class DemographicDecision:
    """The outcome of the cross-check: `differences` name each disagreement with both values,
    `compared` the checks both sides could answer."""

    differences: tuple[str, ...] = ()
    compared: tuple[Check, ...] = ()
    patient_uuid: str = ""

    @property
    def contradicts(self) -> bool:
        return bool(self.differences)

    @property
    def reason(self) -> str:
        if not self.differences:
            return ""
        return f"{'; '.join(self.differences)} (patient {self.patient_uuid})"


def cross_check(
    patient_tags: Mapping[str, str], patient: OpenMRSPatient, checks: frozenset[Check]
) -> DemographicDecision:
    """Compare the study's PatientBirthDate, PatientSex and PatientName with the patient."""
    differences: list[str] = []
    compared: list[Check] = []
    for check, tag, compare in _COMPARISONS:
        if check not in checks:
            continue
        difference = compare(patient_tags.get(tag, ""), patient)
        if difference is None:
            continue
        compared.append(check)
        if difference:
            differences.append(difference)
    return DemographicDecision(tuple(differences), tuple(compared), patient.uuid)


# -- each check: None when it cannot be compared, "" when both agree, else the difference ------


def _birth_date(dicom_value: str, patient: OpenMRSPatient) -> str | None:
    dicom = dicom_date(dicom_value)
    known = patient.birthdate
    if dicom is None or known is None:
        return None
    if patient.birthdate_estimated:
        # An estimated birth date is worked out from an age: only its year means something.
        if dicom.year == known.year:
            return ""
        return f"birth year differs: DICOM {dicom.isoformat()}, OpenMRS {known.year} (estimated)"
    if dicom == known:
        return ""
    return f"birth date differs: DICOM {dicom.isoformat()}, OpenMRS {known.isoformat()}"


def _sex(dicom_value: str, patient: OpenMRSPatient) -> str | None:
    dicom, gender = dicom_value.strip(PADDING), patient.gender
    if dicom not in _SEXES or gender not in _SEXES:
        return None  # O, U, empty or anything else says nothing either way
    return "" if dicom == gender else f"sex differs: DICOM {dicom}, OpenMRS {gender}"


def _family(dicom_value: str, patient: OpenMRSPatient) -> str | None:
    dicom = dicom_family_name(dicom_value)
    known = {fold(name) for name in patient.family_names} - {""}
    if not fold(dicom) or not known:
        return None  # nothing left once folded (only spaces or accents): not a name
    if fold(dicom) in known:
        return ""
    shown = " / ".join(repr(name) for name in patient.family_names)
    return f"family name differs: DICOM {dicom!r}, OpenMRS {shown}"


# Each check, the DICOM tag it reads, and how it compares.
_COMPARISONS: tuple[tuple[Check, str, Callable[[str, OpenMRSPatient], str | None]], ...] = (
    (Check.BIRTHDATE, "PatientBirthDate", _birth_date),
    (Check.SEX, "PatientSex", _sex),
    (Check.FAMILY_NAME, "PatientName", _family),
)


# -- reading the DICOM values ------------------------------------------------------------------


def dicom_date(value: str) -> date | None:
    """A DA value (YYYYMMDD, padding trimmed) that is a real calendar date; else None."""
    text = value.strip(PADDING)
    if not _DA.fullmatch(text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def dicom_family_name(value: str) -> str:
    """The family name of a PN value `Family^Given^Middle^Prefix^Suffix`, from its first
    (alphabetic) group of `=`-separated ones; "" when there is none or it is not a name."""
    group = value.split("=", 1)[0]
    family = group.split("^", 1)[0].strip(PADDING)
    if "\\" in value or len(family) > _PN_COMPONENT_MAX:
        return ""  # several values, or too long for a component: not one name
    if any(unicodedata.category(c).startswith("C") for c in family):
        return ""  # control or unassigned characters: garbage, not a name
    return family


def fold(name: str) -> str:
    """A name as compared: accents dropped, case folded, whitespace runs made one space."""
    decomposed = unicodedata.normalize("NFKD", name)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.casefold().split())


def parse_checks(value: str) -> frozenset[Check]:
    """The checks a comma-separated setting names (empty: none); ValueError naming the
    unknown ones."""
    words = [w.strip() for w in value.split(",") if w.strip()]
    known = [c.value for c in Check]
    unknown = [w for w in words if w not in known]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; choose from {known}")
    return frozenset(Check(w) for w in words)
