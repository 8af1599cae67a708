"""Synthetic DICOM: determinism, tags, and how the real Orthanc takes each kind."""

from __future__ import annotations

import functools
import io
import shutil

import numpy as np
import pydicom
import pydicom.config
import pytest
from PIL import Image

from orthanc_openmrs_devtools.dicom_factory import (
    KINDS,
    UID_PREFIX,
    InstanceSpec,
    SeriesSpec,
    StudySpec,
    build_instance,
    build_study,
    series_uid,
    sop_uid,
    study_uid,
)
from orthanc_openmrs_devtools.orthanc_server import OrthancServer

IMAGE_KINDS = (
    "ct",
    "ct_no_window",
    "large16",
    "rgb",
    "us_multiframe",
    "gray_multiframe",
    "jpeg_gray",
)
NOT_RENDERABLE = ("pdf", "sr", "ko", "undecodable")
JPEG = {"Accept": "image/jpeg"}
_without_orthanc = pytest.mark.skipif(shutil.which("Orthanc") is None, reason="no Orthanc binary")


def needs_orthanc(test):
    """Mark a test that talks to the real Orthanc, and skip it where there is none."""
    return pytest.mark.orthanc(_without_orthanc(test))


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _one(kind: str) -> StudySpec:
    return StudySpec(key=f"one-{kind}", series=(SeriesSpec(instances=(InstanceSpec(kind),)),))


def _all_kinds_study() -> StudySpec:
    """One series per kind, with the modality a real archive would give it."""
    modality = {"ct": "CT", "ct_no_window": "CT", "large16": "DX", "us_multiframe": "US"}
    modality |= {"pdf": "DOC", "sr": "SR", "ko": "KO"}
    sizes = {"large16": (3000, 2500), "rgb": (480, 640)}
    series = tuple(
        SeriesSpec(
            number=index + 1,
            modality=modality.get(kind, "OT"),
            description=kind,
            instances=(InstanceSpec(kind, 1, *sizes.get(kind, (64, 64))),),
        )
        for index, kind in enumerate(KINDS)
    )
    return StudySpec(key="all-kinds", patient_id="PKINDS", series=series)


@functools.cache
def _all_kinds_files() -> tuple[bytes, ...]:
    """Built once: the 3000x2500 image takes most of a second."""
    return tuple(build_study(_all_kinds_study()))


# -- pure: determinism and tags -----------------------------------------------------------------


def test_same_spec_gives_same_bytes():
    """Building a spec twice gives byte-identical files."""
    spec = _all_kinds_study()
    assert build_study(spec) == build_study(spec)


def test_every_kind_is_classified_for_rendering():
    """Each kind is either an image kind or a not-renderable kind, so none goes untested."""
    assert sorted(IMAGE_KINDS + NOT_RENDERABLE) == sorted(KINDS)


def test_uids_are_derived_from_key_and_position():
    """UIDs use the project prefix, fit 64 chars, differ by position and by key."""
    spec = StudySpec(
        key="uids", series=(SeriesSpec(instances=(InstanceSpec(), InstanceSpec(number=2))),) * 2
    )
    uids = [study_uid(spec), series_uid(spec, 0), series_uid(spec, 1)]
    uids += [sop_uid(spec, s, i) for s in (0, 1) for i in (0, 1)]
    assert len(set(uids)) == len(uids)
    assert all(uid.startswith(UID_PREFIX) and len(uid) <= 64 for uid in uids)
    assert study_uid(StudySpec(key="other")) != study_uid(spec)
    assert study_uid(StudySpec(key="uids")) == study_uid(spec)


def test_files_carry_the_derived_uids_in_upload_order():
    """build_study yields series in tuple order, instances in tuple order, with derived UIDs."""
    instances = (InstanceSpec(number=2), InstanceSpec(number=1))
    spec = StudySpec(
        key="order", series=(SeriesSpec(number=2, instances=instances), SeriesSpec(number=1))
    )
    found = [(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in map(_read, build_study(spec))]
    assert found == [
        (series_uid(spec, 0), sop_uid(spec, 0, 0)),
        (series_uid(spec, 0), sop_uid(spec, 0, 1)),
        (series_uid(spec, 1), sop_uid(spec, 1, 0)),
    ]


def test_patient_and_study_tags_follow_the_spec():
    """Patient, study and series values land in their tags, names in UTF-8."""
    spec = StudySpec(
        key="tags",
        patient_id="P9",
        patient_name="Müller^Zoë",
        other_patient_ids=("X1", "X2"),
        series=(SeriesSpec(number=0, description="axial", date="20240111", time="093000"),),
    )
    ds = _read(build_study(spec)[0])
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert (ds.PatientID, str(ds.PatientName)) == ("P9", "Müller^Zoë")
    assert list(ds.OtherPatientIDs) == ["X1", "X2"]
    assert (ds.SeriesNumber, ds.SeriesDescription) == (0, "axial")
    assert (ds.SeriesDate, ds.SeriesTime) == ("20240111", "093000")
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_issuer_tags_follow_the_spec():
    """IssuerOfPatientID and the OtherPatientIDsSequence items are written when given, and
    left out when not."""
    spec = StudySpec(key="issuers", issuer="HOSP_A", other_ids_sequence=(("L-9", "CLINIC_B"),))
    ds = _read(build_study(spec)[0])
    assert ds.IssuerOfPatientID == "HOSP_A"
    (item,) = ds.OtherPatientIDsSequence
    assert (item.PatientID, item.IssuerOfPatientID) == ("L-9", "CLINIC_B")
    plain = _read(build_study(StudySpec(key="plain"))[0])
    assert "IssuerOfPatientID" not in plain
    assert "OtherPatientIDsSequence" not in plain


def test_none_numbers_leave_the_tags_out():
    """SeriesNumber=None and InstanceNumber=None omit those tags."""
    spec = StudySpec(
        key="none", series=(SeriesSpec(number=None, instances=(InstanceSpec(number=None),)),)
    )
    ds = _read(build_study(spec)[0])
    assert "SeriesNumber" not in ds
    assert "InstanceNumber" not in ds


def test_image_kind_keeps_its_sop_class_in_a_doc_series():
    """The series modality applies, but the SOP class still comes from the kind."""
    spec = StudySpec(key="doc-ct", series=(SeriesSpec(modality="DOC"),))
    ds = _read(build_study(spec)[0])
    assert (ds.Modality, ds.SOPClassUID) == ("DOC", pydicom.uid.CTImageStorage)


def test_unknown_kind_is_rejected():
    """An unknown kind raises ValueError naming the known kinds."""
    with pytest.raises(ValueError, match="ct_no_window"):
        build_study(_one("mri"))


def test_hostile_values_are_written_and_validation_restored(monkeypatch):
    """CR/LF in PatientID and '&'/'#' in a UID are written; pydicom settings are restored."""
    settings = pydicom.config.settings
    before = (settings.reading_validation_mode, settings.writing_validation_mode)
    data = build_study(StudySpec(key="hostile", patient_id="P\r\n&1", study_uid="1.2&3#4"))[0]
    assert (settings.reading_validation_mode, settings.writing_validation_mode) == before
    monkeypatch.setattr(settings, "reading_validation_mode", pydicom.config.IGNORE)
    ds = _read(data)
    assert (ds.PatientID, ds.StudyInstanceUID) == ("P\r\n&1", "1.2&3#4")


def test_ct_pixels_have_structure_inside_the_window():
    """The CT kind holds a phantom whose HU values span air to bone."""
    ds = _read(build_study(_one("ct"))[0])
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert hu.min() == pytest.approx(-1000)
    assert hu.max() == pytest.approx(400)
    assert float(ds.WindowCenter) == 40


def test_ct_no_window_has_signed_pixels_and_no_window():
    """ct_no_window stores signed HU in [-1000, 400] and has no window tags."""
    ds = _read(build_study(_one("ct_no_window"))[0])
    assert "WindowCenter" not in ds
    assert ds.PixelRepresentation == 1
    assert (ds.pixel_array.min(), ds.pixel_array.max()) == (-1000, 400)


def test_us_multiframe_first_frame_is_marked():
    """Only frame 0 of the ultrasound cine has a white square top-left."""
    frames = _read(build_study(_one("us_multiframe"))[0]).pixel_array
    assert frames.shape == (10, 64, 64, 3)
    assert frames[0, :8, :8].min() == 255
    assert frames[1:, :8, :8].max() < 100


def test_jpeg_gray_is_jpeg_baseline_and_decodes():
    """jpeg_gray is encapsulated JPEG baseline that pydicom decodes to 8-bit."""
    ds = _read(build_study(_one("jpeg_gray"))[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert ds.pixel_array.shape == (64, 64)
    assert ds.pixel_array.dtype == np.uint8


def test_pdf_kind_wraps_a_well_formed_pdf():
    """The PDF kind holds a PDF whose startxref points at its xref table."""
    ds = _read(build_study(_one("pdf"))[0])
    document = bytes(ds.EncapsulatedDocument)[: ds.EncapsulatedDocumentLength]
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert document.startswith(b"%PDF-1.4")
    assert document.endswith(b"%%EOF\n")
    xref_at = int(document.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    assert document[xref_at:].startswith(b"xref")


def test_build_instance_matches_build_study():
    """build_instance(spec, s, i) is the same file build_study lists at that position."""
    spec = _all_kinds_study()
    assert build_instance(spec, 3, 0) == _all_kinds_files()[3]


# -- against the real Orthanc -----------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """One server for the module: these tests only add data."""
    with OrthancServer(tmp_path_factory.mktemp("orthanc-factory")) as server:
        yield server


@pytest.fixture(scope="module")
def uploaded(orthanc):
    """Orthanc instance ID per kind, after uploading the all-kinds study once."""
    answers = orthanc.upload_many(_all_kinds_files())
    assert {a["Status"] for a in answers} == {"Success"}
    return {kind: answer["ID"] for kind, answer in zip(KINDS, answers, strict=True)}


def _image(response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)))


@needs_orthanc
@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_image_kinds_render_as_jpeg(orthanc, uploaded, kind):
    """Every image kind renders with 200 and a JPEG body."""
    with orthanc.client() as client:
        response = client.get(f"/instances/{uploaded[kind]}/rendered", headers=JPEG)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"


@needs_orthanc
@pytest.mark.parametrize("kind", NOT_RENDERABLE)
@pytest.mark.parametrize("endpoint", ["rendered", "preview"])
def test_non_image_kinds_are_415(orthanc, uploaded, kind, endpoint):
    """PDF, SR, KO and the undecodable image answer 415 on rendered and preview."""
    with orthanc.client() as client:
        response = client.get(f"/instances/{uploaded[kind]}/{endpoint}", headers=JPEG)
    assert response.status_code == 415


@needs_orthanc
def test_ct_no_window_renders_black_but_previews_fine(orthanc, uploaded):
    """Without window tags /rendered is nearly black; /preview and explicit windows are not."""
    path = f"/instances/{uploaded['ct_no_window']}"
    window = {"window-center": 40, "window-width": 400}
    with orthanc.client() as client:
        rendered = _image(client.get(f"{path}/rendered", headers=JPEG))
        preview = _image(client.get(f"{path}/preview", headers=JPEG))
        windowed = _image(client.get(f"{path}/rendered", params=window, headers=JPEG))
    assert rendered.max() < 10
    assert preview.max() > 200
    assert windowed.max() > 200


@needs_orthanc
def test_ct_renders_with_visible_structure(orthanc, uploaded):
    """The CT kind renders with its own window to a clearly non-blank image."""
    with orthanc.client() as client:
        pixels = _image(client.get(f"/instances/{uploaded['ct']}/rendered", headers=JPEG))
    assert pixels.max() > 200
    assert pixels.std() > 30


@needs_orthanc
def test_us_multiframe_frames_differ_in_orthanc(orthanc, uploaded):
    """Orthanc renders frame 0 with the bright corner and frame 5 without it."""
    path = f"/instances/{uploaded['us_multiframe']}/frames"
    with orthanc.client() as client:
        first = _image(client.get(f"{path}/0/rendered", headers=JPEG))
        later = _image(client.get(f"{path}/5/rendered", headers=JPEG))
    assert first[:8, :8].mean() > 200
    assert later[:8, :8].mean() < 100


@needs_orthanc
def test_large16_full_size_png_is_several_megabytes(orthanc, uploaded):
    """A 3000x2500 large16 preview is full size and several MB as PNG."""
    with orthanc.client() as client:
        response = client.get(f"/instances/{uploaded['large16']}/preview")
    assert response.headers["content-type"] == "image/png"
    assert len(response.content) > 3_000_000
    assert _image(response).shape == (3000, 2500)


@needs_orthanc
def test_pdf_is_served_back_as_pdf(orthanc, uploaded):
    """/instances/{id}/pdf returns the document the factory embedded."""
    with orthanc.client() as client:
        response = client.get(f"/instances/{uploaded['pdf']}/pdf")
    assert response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF-1.4")


@needs_orthanc
def test_orthanc_sees_the_sop_class_of_each_kind(orthanc, uploaded):
    """Orthanc records the kind's SOP class, whatever the series modality."""
    with orthanc.client() as client:
        sop_classes = {
            kind: client.get(f"/instances/{iid}/metadata/SopClassUid").text
            for kind, iid in uploaded.items()
        }
    expected = {
        kind: str(_read(data).SOPClassUID)
        for kind, data in zip(KINDS, _all_kinds_files(), strict=True)
    }
    assert sop_classes == expected


@needs_orthanc
def test_same_spec_gives_same_orthanc_ids(orthanc, uploaded):
    """Uploading a rebuilt spec is AlreadyStored under the same Orthanc IDs."""
    again = orthanc.upload_many(build_study(_all_kinds_study()))
    assert [a["ID"] for a in again] == list(uploaded.values())
    assert {a["Status"] for a in again} == {"AlreadyStored"}


@needs_orthanc
def test_hostile_patient_ids_and_uids_survive_in_orthanc(orthanc):
    """CR/LF and '&' in PatientID, '&#' in StudyInstanceUID and UTF-8 names reach Orthanc intact."""
    spec = StudySpec(
        key="hostile-orthanc", patient_id="P\r\n&1", patient_name="山田^太郎", study_uid="1.2&3#4"
    )
    study_id = orthanc.upload(build_study(spec)[0])["ParentStudy"]
    with orthanc.client() as client:
        study = client.get(f"/studies/{study_id}").json()
    assert study["PatientMainDicomTags"]["PatientID"] == "P\r\n&1"
    assert study["PatientMainDicomTags"]["PatientName"] == "山田^太郎"
    assert study["MainDicomTags"]["StudyInstanceUID"] == "1.2&3#4"
