from __future__ import annotations

from orthanc_openmrs.models import PatientChange
from orthanc_openmrs.patient_watch import Watermark, advance, first_watermark, parse_instant

T0 = "2026-03-01T10:00:00.000+00:00"
T1 = "2026-03-01T10:00:05.120+00:00"


def change(uuid: str, at: str, *ids: str) -> PatientChange:
    return PatientChange(uuid, ids or ("ID-" + uuid,), at)


def test_changes_after_the_watermark_move_it_to_the_newest() -> None:
    """The newest lastUpdated becomes the watermark, with the patients seen at that instant."""
    step = advance(Watermark(T0), [change("a", T0), change("b", T1), change("c", T1)])
    assert [c.uuid for c in step.fresh] == ["a", "b", "c"]
    assert step.watermark == Watermark(T1, frozenset({"b", "c"}))


def test_patients_already_seen_at_the_watermark_are_not_acted_on_again() -> None:
    """A search that includes the watermark returns its patients again: they are skipped."""
    mark = Watermark(T1, frozenset({"b"}))
    step = advance(mark, [change("b", T1), change("d", T1)])
    assert [c.uuid for c in step.fresh] == ["d"]
    assert step.watermark == Watermark(T1, frozenset({"b", "d"}))


def test_a_patient_seen_before_that_changes_again_is_acted_on() -> None:
    """The same patient with a newer lastUpdated is a new change."""
    step = advance(Watermark(T0, frozenset({"a"})), [change("a", T1)])
    assert [c.uuid for c in step.fresh] == ["a"]


def test_nothing_changed_keeps_the_watermark() -> None:
    """An empty answer leaves the watermark as it was."""
    mark = Watermark(T0, frozenset({"a"}))
    assert advance(mark, []).watermark == mark


def test_unreadable_times_are_acted_on_and_do_not_move_the_watermark() -> None:
    """A change whose lastUpdated cannot be read is not lost, and cannot corrupt the mark."""
    step = advance(Watermark(T0), [change("x", "garbage"), change("y", "")])
    assert [c.uuid for c in step.fresh] == ["x", "y"]
    assert step.watermark.at == T0


def test_times_in_other_zones_compare_as_instants() -> None:
    """'+02:00' and 'Z' spellings of one instant are the same instant."""
    assert parse_instant("2026-03-01T12:00:05.120+02:00") == parse_instant(T1)
    assert parse_instant("2026-03-01T10:00:00Z") == parse_instant(T0)
    assert parse_instant("2026-03-01T10:00:00") is None  # no zone: not an instant


def test_watermark_survives_encoding() -> None:
    """What the ledger stores decodes to the same watermark."""
    mark = Watermark(T1, frozenset({"b", "c"}))
    assert Watermark.decode(mark.encode()) == mark
    assert Watermark.decode(Watermark(T0).encode()) == Watermark(T0)


def test_first_watermark_looks_back_ten_minutes() -> None:
    """With no watermark yet, the first poll starts ten minutes back, with a zone."""
    mark = first_watermark(1_772_359_800.0)  # 2026-03-01T10:10:00Z
    assert mark.at == "2026-03-01T10:00:00+00:00"
