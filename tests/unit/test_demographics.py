from __future__ import annotations

from datetime import date

import pytest

from orthanc_openmrs.demographics import (
    DEFAULT_CHECKS,
    Check,
    cross_check,
    dicom_date,
    dicom_family_name,
    fold,
    parse_checks,
)
from orthanc_openmrs.models import OpenMRSPatient

ALL = frozenset(Check)


def _patient(
    *,
    gender: str = "",
    birthdate: date | None = None,
    estimated: bool = False,
    family: tuple[str, ...] = (),
) -> OpenMRSPatient:
    return OpenMRSPatient(
        "p-1",
        (),
        gender=gender,
        birthdate=birthdate,
        birthdate_estimated=estimated,
        family_names=family,
    )


def _tags(birth: str = "", sex: str = "", name: str = "") -> dict[str, str]:
    return {"PatientBirthDate": birth, "PatientSex": sex, "PatientName": name}


def test_birth_date_that_differs_is_a_mismatch_showing_both() -> None:
    """Another birth date in OpenMRS: a mismatch whose reason shows both dates and the patient."""
    decision = cross_check(
        _tags(birth="19800102"), _patient(birthdate=date(1980, 2, 1)), DEFAULT_CHECKS
    )
    assert decision.contradicts
    assert decision.reason == (
        "birth date differs: DICOM 1980-01-02, OpenMRS 1980-02-01 (patient p-1)"
    )


def test_same_birth_date_with_padding_agrees() -> None:
    """DICOM padding around the date is trimmed; the same date agrees and was compared."""
    decision = cross_check(
        _tags(birth=" 19800102\x00"), _patient(birthdate=date(1980, 1, 2)), DEFAULT_CHECKS
    )
    assert not decision.contradicts
    assert decision.reason == ""
    assert decision.compared == (Check.BIRTHDATE,)


def test_sex_that_differs_is_a_mismatch() -> None:
    """DICOM M against OpenMRS F: a mismatch naming both."""
    decision = cross_check(_tags(sex="M "), _patient(gender="F"), DEFAULT_CHECKS)
    assert decision.reason == "sex differs: DICOM M, OpenMRS F (patient p-1)"


@pytest.mark.parametrize(
    ("dicom", "openmrs"),
    [
        ("O", "M"),
        ("U", "F"),
        ("", "M"),
        ("m", "F"),
        ("MALE", "F"),
        ("M", "O"),
        ("F", "U"),
        ("M", ""),
    ],
)
def test_sex_other_than_m_or_f_is_not_compared(dicom: str, openmrs: str) -> None:
    """O, U, empty or anything but M/F on either side says nothing: not compared."""
    decision = cross_check(_tags(sex=dicom), _patient(gender=openmrs), DEFAULT_CHECKS)
    assert not decision.contradicts
    assert decision.compared == ()


@pytest.mark.parametrize(
    ("tags", "patient"),
    [
        (_tags(birth="19800102", sex="M"), _patient()),
        (_tags(), _patient(gender="F", birthdate=date(1975, 6, 1), family=("Silva",))),
    ],
)
def test_a_value_missing_on_either_side_is_no_mismatch(
    tags: dict[str, str], patient: OpenMRSPatient
) -> None:
    """What one side does not know is not compared: nothing contradicts."""
    decision = cross_check(tags, patient, ALL)
    assert not decision.contradicts
    assert decision.compared == ()


def test_estimated_birth_date_in_the_same_year_agrees() -> None:
    """An estimated birth date is compared by its year: same year, another day, no mismatch."""
    patient = _patient(birthdate=date(1980, 7, 1), estimated=True)
    decision = cross_check(_tags(birth="19800102"), patient, DEFAULT_CHECKS)
    assert not decision.contradicts
    assert decision.compared == (Check.BIRTHDATE,)


def test_estimated_birth_date_in_another_year_is_a_mismatch() -> None:
    """An estimated birth date of another year: a mismatch that says it was estimated."""
    patient = _patient(birthdate=date(1975, 7, 1), estimated=True)
    decision = cross_check(_tags(birth="19800102"), patient, DEFAULT_CHECKS)
    assert decision.reason == (
        "birth year differs: DICOM 1980-01-02, OpenMRS 1975 (estimated) (patient p-1)"
    )


@pytest.mark.parametrize(
    "hostile",
    [
        "19800231",
        "1980",
        "abcd",
        "1980-01-01",
        "19800102\x07",
        "1980\x0b0102",
        "\x1b[31m19800102",
        "9" * 200,
        "0" * 8,
        "19801301",
        "19800102\\19800103",
        "١٩٨٠٠١٠٢",  # Arabic-Indic digits are digits to Python, not to DICOM
        "\uff11\uff19\uff18\uff10\uff10\uff11\uff10\uff12",  # full-width digits
    ],
)
def test_malformed_dicom_date_is_never_a_mismatch(hostile: str) -> None:
    """A DICOM birth date that is not a real YYYYMMDD date is not compared: no crash, and
    never a mismatch claimed on garbage."""
    decision = cross_check(_tags(birth=hostile), _patient(birthdate=date(1980, 1, 2)), ALL)
    assert not decision.contradicts
    assert decision.compared == ()
    assert dicom_date(hostile) is None


def test_every_difference_is_named_in_one_reason() -> None:
    """Birth date and sex both differ: both in the reason, in that order."""
    patient = _patient(gender="F", birthdate=date(1980, 2, 1))
    decision = cross_check(_tags(birth="19800102", sex="M"), patient, DEFAULT_CHECKS)
    assert decision.differences == (
        "birth date differs: DICOM 1980-01-02, OpenMRS 1980-02-01",
        "sex differs: DICOM M, OpenMRS F",
    )
    assert decision.reason.endswith("OpenMRS F (patient p-1)")


def test_only_the_chosen_checks_are_made() -> None:
    """A check left out of the setting is not made, even when its values differ; none: none."""
    patient = _patient(gender="F", birthdate=date(1980, 2, 1), family=("Silva",))
    tags = _tags(birth="19800102", sex="M", name="Souza^Ana")
    assert cross_check(tags, patient, frozenset({Check.SEX})).differences == (
        "sex differs: DICOM M, OpenMRS F",
    )
    assert not cross_check(tags, patient, frozenset()).contradicts
    assert Check.FAMILY_NAME not in DEFAULT_CHECKS


@pytest.mark.parametrize(
    ("dicom", "openmrs"),
    [
        ("DUPONT^Jean", ("Dûpont",)),
        ("Nuñez^José^^Dr", ("NUNEZ",)),
        ("  Van  der Berg ^Anna", ("van der Berg",)),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", ("yamada",)),
        ("García López^Ana", ("García", "García López")),
        ("Straße^Eva", ("STRASSE",)),
    ],
)
def test_family_name_folds_accents_case_and_spaces(dicom: str, openmrs: tuple[str, ...]) -> None:
    """The family component of PN (first `=` group) agrees with an OpenMRS family name when
    they differ only in accents, case or whitespace."""
    decision = cross_check(_tags(name=dicom), _patient(family=openmrs), ALL)
    assert not decision.contradicts
    assert decision.compared == (Check.FAMILY_NAME,)


def test_family_name_that_differs_is_a_mismatch() -> None:
    """Another family name: a mismatch naming the DICOM family name and OpenMRS's."""
    decision = cross_check(_tags(name="Smith^John"), _patient(family=("Smyth", "Jones")), ALL)
    assert decision.reason == (
        "family name differs: DICOM 'Smith', OpenMRS 'Smyth' / 'Jones' (patient p-1)"
    )


@pytest.mark.parametrize(
    "name",
    [
        "^John",
        "",
        "Smith\x07^John",
        "Smith^John\\Doe^Jane",
        "S" * 65 + "^John",
        "=山田",
        "\u0301\u0308^John",
        "\t ^John",
    ],
)
def test_family_name_that_is_not_one_is_not_compared(name: str) -> None:
    """No family component, control characters, several values, an over-long component, or
    nothing left once accents are dropped: not compared."""
    decision = cross_check(_tags(name=name), _patient(family=("Smith",)), ALL)
    assert not decision.contradicts
    assert decision.compared == ()


def test_dicom_family_name_reads_the_first_group() -> None:
    """`Family^Given^Middle^Prefix^Suffix`, alphabetic group first, padding trimmed."""
    assert dicom_family_name("Yamada^Tarou=山田^太郎") == "Yamada"
    assert dicom_family_name(" Doe ^John^Q^Mr^Jr") == "Doe"
    assert dicom_family_name("Doe") == "Doe"


def test_fold_drops_accents_case_and_extra_spaces() -> None:
    """NFKD without combining marks, case-folded, whitespace runs made one space."""
    assert fold("  Ñúñez\tGARCÍA ") == "nunez garcia"
    assert fold("ﬁnn") == "finn"
    assert fold("Ærø") == "ærø"  # letters that are not base + accent stay themselves


def test_setting_parses_the_checks() -> None:
    """A comma list of check names, spaces trimmed; empty means none."""
    assert parse_checks("birthdate, sex") == DEFAULT_CHECKS
    assert parse_checks(" family_name ") == frozenset({Check.FAMILY_NAME})
    assert parse_checks("") == frozenset()
    assert parse_checks(" , ") == frozenset()


def test_setting_refuses_an_unknown_check() -> None:
    """An unknown word is refused, named, with the known ones."""
    with pytest.raises(ValueError, match=r"unknown check\(s\) \['age'\].*'family_name'"):
        parse_checks("birthdate,age")
