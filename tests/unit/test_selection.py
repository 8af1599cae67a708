from __future__ import annotations

import pytest

from orthanc_openmrs.models import Instance, InstanceKind, InstanceTags, Series
from orthanc_openmrs.selection import (
    classify,
    has_window,
    order_instances,
    order_series,
    parse_number,
    series_may_hold_images,
)


def _series(
    uid: str,
    number: str | None,
    date: str | None = None,
    time: str | None = None,
    modality: str = "CT",
) -> Series:
    return Series(uid, uid, number, modality, date, time, "", ())


def _tags(
    sop: str = "1.2.840.10008.5.1.4.1.1.2",
    rows: int | None = 64,
    center: str | None = "40",
    width: str | None = "400",
) -> InstanceTags:
    return InstanceTags(sop, rows, rows, center, width, 1)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", 1),
        (" 12 ", 12),
        ("0", 0),
        ("+3", 3),
        ("-2", -2),
        ("4.0", 4),
        ("x", None),
        ("", None),
        (None, None),
        ("2\\3", 2),
        ("2.5", None),
    ],
)
def test_parse_number(raw: str | None, expected: int | None) -> None:
    """IS values parse as numbers; malformed or absent ones count as no number."""
    assert parse_number(raw) == expected


def test_series_sorted_by_number_not_upload_order() -> None:
    """Series 3, 1, 2 uploaded in that order come out 1, 2, 3."""
    ordered = order_series([_series("c", "3"), _series("a", "1"), _series("b", "2")])
    assert [s.number for s in ordered] == ["1", "2", "3"]


def test_series_number_is_numeric_not_text() -> None:
    """Series 10 comes after series 9 (not before, as text would put it)."""
    ordered = order_series([_series("a", "10"), _series("b", "9")])
    assert [s.number for s in ordered] == ["9", "10"]


def test_series_zero_is_a_number_and_missing_numbers_go_last() -> None:
    """SeriesNumber 0 sorts first; series without a number after every numbered one."""
    ordered = order_series([_series("x", None), _series("a", "1"), _series("z", "0")])
    assert [s.series_uid for s in ordered] == ["z", "a", "x"]


def test_series_ties_broken_by_date_time_then_uid() -> None:
    """Equal numbers fall back to series date/time (missing last), then the UID."""
    ordered = order_series(
        [
            _series("u3", "1", None, None),
            _series("u2", "1", "20240102", "0800"),
            _series("u1", "1", "20240102", "0700"),
            _series("u0", "1", "20240101", None),
            _series("u5", "1", "20240102", "0700"),
        ]
    )
    assert [s.series_uid for s in ordered] == ["u0", "u1", "u5", "u2", "u3"]


def test_instances_by_number_then_index_then_uid() -> None:
    """Instances go by InstanceNumber (IndexInSeries when absent), unnumbered last."""
    instances = [
        Instance("i4", "4.4", "4", 4),
        Instance("i2", "2.2", "2", 2),
        Instance("n", "9.9", None, None),
        Instance("i1", "1.1", "1", 1),
        Instance("x", "0.5", None, 3),
    ]
    assert [i.orthanc_id for i in order_instances(instances)] == ["i1", "i2", "x", "i4", "n"]


@pytest.mark.parametrize("modality", ["SR", "KO", "PR", "DOC", "RTSTRUCT", " sr "])
def test_non_image_modalities(modality: str) -> None:
    """Reports, key objects, presentation states and documents hold no picture."""
    assert not series_may_hold_images(_series("a", "1", modality=modality))


def test_image_modalities() -> None:
    """CT, US, OT series may hold images."""
    assert all(series_may_hold_images(_series("a", "1", modality=m)) for m in ("CT", "US", "OT"))


def test_classify() -> None:
    """PDF by SOP class; SR and images without rows are not images; a CT is one."""
    assert classify(_tags("1.2.840.10008.5.1.4.1.1.104.1", rows=None)) is InstanceKind.PDF
    assert classify(_tags("1.2.840.10008.5.1.4.1.1.88.11")) is InstanceKind.OTHER
    assert classify(_tags(rows=None)) is InstanceKind.OTHER
    assert classify(_tags()) is InstanceKind.IMAGE


def test_has_window() -> None:
    """A window needs a centre and a positive width; the first of several values counts."""
    assert has_window(_tags())
    assert has_window(_tags(center="40\\300", width="400\\1500"))
    assert not has_window(_tags(center=None))
    assert not has_window(_tags(width="0"))
    assert not has_window(_tags(width="abc"))
