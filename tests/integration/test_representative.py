"""Flows 2 and 3 against a real Orthanc: which instance represents a study, and its preview."""

from __future__ import annotations

from pathlib import Path

from PIL import ImageStat

from orthanc_openmrs.models import Outcome, State
from orthanc_openmrs.render.measure import contrast
from orthanc_openmrs_devtools.dicom_factory import InstanceSpec, SeriesSpec, StudySpec, sop_uid
from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble
from orthanc_openmrs_devtools.orthanc_server import OrthancServer
from support import image, instance_id, ledger, load, settings_for, sync_pass


def _chosen(
    orthanc: OrthancServer, openmrs: OpenMRSDouble, database: Path, spec: StudySpec
) -> tuple[str, OpenMRSDouble]:
    openmrs.add_patient([spec.patient_id])
    ids = load(orthanc, spec)
    settings = settings_for(orthanc, openmrs, database)
    summary = sync_pass(settings)
    assert summary.counts[Outcome.SYNCED] == 1, summary
    row = ledger(settings).get(ids[spec.key])
    assert row is not None
    assert row.state is State.SYNCED
    return row.instance_id, openmrs


def _ct(*numbers: int | None) -> tuple[InstanceSpec, ...]:
    return tuple(InstanceSpec("ct", n) for n in numbers)


def test_series_by_number_not_upload_order(orthanc, openmrs, database) -> None:
    """Series uploaded 3, 1, 2: series 1 is used, and in it InstanceNumber 1 of 4,2,3,5,1."""
    spec = StudySpec(
        "order",
        series=(
            SeriesSpec(3, instances=_ct(1)),
            SeriesSpec(1, instances=_ct(4, 2, 3, 5, 1)),
            SeriesSpec(2, instances=_ct(1)),
        ),
    )
    chosen, _ = _chosen(orthanc, openmrs, database, spec)
    assert chosen == instance_id(orthanc, sop_uid(spec, 1, 4))


def test_series_zero_comes_first(orthanc, openmrs, database) -> None:
    """SeriesNumber 0 is a number, and the lowest."""
    spec = StudySpec(
        "zero",
        series=(
            SeriesSpec(1, instances=_ct(1)),
            SeriesSpec(0, modality="OT", instances=(InstanceSpec("rgb", 1),)),
        ),
    )
    chosen, _ = _chosen(orthanc, openmrs, database, spec)
    assert chosen == instance_id(orthanc, sop_uid(spec, 1, 0))


def test_unnumbered_series_and_instances_go_last(orthanc, openmrs, database) -> None:
    """A series without SeriesNumber uploaded first loses to a numbered one; in a series, an
    instance without InstanceNumber loses to numbered ones."""
    spec = StudySpec(
        "missing",
        series=(
            SeriesSpec(None, instances=_ct(1)),
            SeriesSpec(7, instances=_ct(None, 2)),
        ),
    )
    chosen, _ = _chosen(orthanc, openmrs, database, spec)
    assert chosen == instance_id(orthanc, sop_uid(spec, 1, 1))


def test_equal_numbers_fall_back_to_series_date_and_time(orthanc, openmrs, database) -> None:
    """Two series numbered 1: the earlier series time wins, whatever the upload order."""
    spec = StudySpec(
        "ties",
        series=(
            SeriesSpec(1, date="20240110", time="120000", instances=_ct(1)),
            SeriesSpec(1, date="20240110", time="090000", instances=_ct(1)),
        ),
    )
    chosen, _ = _chosen(orthanc, openmrs, database, spec)
    assert chosen == instance_id(orthanc, sop_uid(spec, 1, 0))


def test_non_image_series_first_are_passed_over(orthanc, openmrs, database) -> None:
    """A report, a key object and a PDF numbered before the CT do not represent the study."""
    spec = StudySpec(
        "reports",
        series=(
            SeriesSpec(1, modality="SR", instances=(InstanceSpec("sr", 1),)),
            SeriesSpec(2, modality="KO", instances=(InstanceSpec("ko", 1),)),
            SeriesSpec(3, modality="DOC", instances=(InstanceSpec("pdf", 1),)),
            SeriesSpec(4, instances=_ct(1)),
        ),
    )
    chosen, double = _chosen(orthanc, openmrs, database, spec)
    assert chosen == instance_id(orthanc, sop_uid(spec, 3, 0))
    (attachment,) = double.attachments()
    assert attachment.mime_type == "image/jpeg"


def test_pdf_only_study_attaches_the_pdf(orthanc, openmrs, database) -> None:
    """A study holding only an encapsulated PDF gets that PDF as its attachment."""
    spec = StudySpec(
        "pdfonly",
        description="REFERRAL LETTER",
        series=(
            SeriesSpec(1, modality="DOC", instances=(InstanceSpec("pdf", 1),)),
            SeriesSpec(2, modality="SR", instances=(InstanceSpec("sr", 1),)),
        ),
    )
    _chosen(orthanc, openmrs, database, spec)
    (attachment,) = openmrs.attachments()
    assert attachment.mime_type == "application/pdf"
    assert attachment.data.startswith(b"%PDF")
    assert attachment.filename.endswith(".pdf")


def test_instance_orthanc_cannot_decode_is_decoded_here(orthanc, openmrs, database) -> None:
    """When Orthanc answers 415 for series 1 (uncompressed YBR_FULL_422), pydicom decodes it."""
    spec = StudySpec(
        "undecodable",
        series=(
            SeriesSpec(1, modality="OT", instances=(InstanceSpec("undecodable", 1),)),
            SeriesSpec(2, instances=_ct(1)),
        ),
    )
    chosen, _ = _chosen(orthanc, openmrs, database, spec)
    assert chosen == instance_id(orthanc, sop_uid(spec, 0, 0))
    row = ledger(settings_for(orthanc, openmrs, database)).all_studies()[0]
    assert row.preview_source == "local-decode"
    (attachment,) = openmrs.attachments()
    assert contrast(image(attachment.data)).shows_something


def _report_only() -> StudySpec:
    return StudySpec(
        "report", series=(SeriesSpec(1, modality="SR", instances=(InstanceSpec("sr", 1),)),)
    )


def test_study_without_images_gets_a_card(orthanc, openmrs, database) -> None:
    """A study holding only an SR is attached as a study card, captioned with its link."""
    spec = _report_only()
    openmrs.add_patient([spec.patient_id])
    ids = load(orthanc, spec)
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    row = ledger(settings).get(ids["report"])
    assert row is not None
    assert row.preview_source == "card"
    assert "no image series (only SR)" in row.reason
    (attachment,) = openmrs.attachments()
    assert attachment.mime_type == "image/jpeg"
    assert contrast(image(attachment.data)).shows_something
    assert "stone-webviewer" in (attachment.comment or "")


def test_without_cards_a_study_without_images_is_listed(orthanc, openmrs, database) -> None:
    """SYNC_STUDY_CARDS=false: the SR-only study fails with its reason, not retried."""
    spec = _report_only()
    openmrs.add_patient([spec.patient_id])
    ids = load(orthanc, spec)
    settings = settings_for(orthanc, openmrs, database, sync_study_cards=False)
    assert sync_pass(settings).counts[Outcome.FAILED] == 1
    row = ledger(settings).get(ids["report"])
    assert row is not None
    assert row.state is State.FAILED
    assert row.reason == "no image series (only SR); study cards are off (SYNC_STUDY_CARDS)"
    assert row.next_attempt_at is None
    assert openmrs.attachments() == []


def test_multiframe_uses_frame_zero(orthanc, openmrs, database) -> None:
    """A multi-frame cine shows its first frame (bright square top-left only in frame 0)."""
    spec = StudySpec(
        "cine",
        series=(SeriesSpec(1, modality="US", instances=(InstanceSpec("us_multiframe", 1),)),),
    )
    _chosen(orthanc, openmrs, database, spec)
    (attachment,) = openmrs.attachments()
    picture = image(attachment.data).convert("L")
    width, height = picture.size
    corner = picture.crop((0, 0, width // 8, height // 8))
    centre = picture.crop(
        (width // 2, height // 2, width // 2 + width // 8, height // 2 + height // 8)
    )
    assert ImageStat.Stat(corner).mean[0] > 200
    assert ImageStat.Stat(centre).mean[0] < 200


def test_ct_without_window_is_not_blank(orthanc, openmrs, database) -> None:
    """A CT without window tags (nearly black from /rendered) gets a visible preview."""
    spec = StudySpec(
        "nowindow", series=(SeriesSpec(1, instances=(InstanceSpec("ct_no_window", 1),)),)
    )
    _chosen(orthanc, openmrs, database, spec)
    (attachment,) = openmrs.attachments()
    assert contrast(image(attachment.data)).shows_something


def test_windowed_ct_preview_is_not_blank(orthanc, openmrs, database) -> None:
    """A CT with its window renders with it, visibly."""
    spec = StudySpec("window", series=(SeriesSpec(1, instances=_ct(1)),))
    _chosen(orthanc, openmrs, database, spec)
    (attachment,) = openmrs.attachments()
    assert contrast(image(attachment.data)).shows_something


def test_large_16_bit_image_stays_under_the_size_bound(orthanc, openmrs, database) -> None:
    """A 3000x2500 16-bit radiograph becomes a JPEG OpenMRS stores without down-scaling."""
    spec = StudySpec(
        "large",
        series=(
            SeriesSpec(
                1, modality="DX", instances=(InstanceSpec("large16", 1, rows=2500, columns=3000),)
            ),
        ),
    )
    _chosen(orthanc, openmrs, database, spec)
    (attachment,) = openmrs.attachments()
    assert len(attachment.data) <= 1_000_000
    assert not attachment.downscaled
    picture = image(attachment.data)
    assert picture.format == "JPEG"
    assert max(picture.size) <= 1024
    assert abs(picture.size[0] / picture.size[1] - 3000 / 2500) < 0.02
