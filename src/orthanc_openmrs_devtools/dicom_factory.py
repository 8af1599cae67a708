"""Deterministic synthetic DICOM files for tests.

Every UID is derived from ``StudySpec.key`` and the position of the series and
instance, so the same spec always gives the same bytes and therefore the same
Orthanc IDs. Values are written without pydicom's validation, on purpose: tests
need hostile values (control characters, odd UIDs) that a strict writer refuses.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from orthanc_openmrs_devtools.dicom_payloads import (
    ct_phantom,
    gradient,
    jpeg,
    pdf_document,
    rgb_pattern,
    us_frame,
    xray_phantom,
    ybr422_bytes,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import numpy.typing as npt

__all__ = [
    "KINDS",
    "UID_PREFIX",
    "InstanceSpec",
    "SeriesSpec",
    "StudySpec",
    "build_instance",
    "build_study",
    "series_uid",
    "sop_uid",
    "study_uid",
]

UID_PREFIX = "1.2.826.0.1.3680043.8.498."

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
GRAY_WORD_MULTIFRAME_SC = "1.2.840.10008.5.1.4.1.1.7.3"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"

US_FRAMES = 10
GRAY_FRAMES = 8


@dataclass(frozen=True)
class InstanceSpec:
    """One instance: its kind (see ``KINDS``), InstanceNumber and image size."""

    kind: str = "ct"
    number: int | None = 1  # None leaves InstanceNumber out
    rows: int = 64
    columns: int = 64


@dataclass(frozen=True)
class SeriesSpec:
    """One series; instances are uploaded in tuple order."""

    number: int | None = 1  # None leaves SeriesNumber out; 0 is a valid number
    modality: str = "CT"
    description: str = ""
    date: str | None = None
    time: str | None = None
    instances: tuple[InstanceSpec, ...] = (InstanceSpec(),)
    uid: str | None = None  # overrides the derived SeriesInstanceUID


@dataclass(frozen=True)
class StudySpec:
    """One study; ``key`` seeds every derived UID, series are uploaded in tuple order."""

    key: str
    patient_id: str = "P001"
    patient_name: str = "Doe^John"
    birth_date: str = "19600101"
    sex: str = "M"
    other_patient_ids: tuple[str, ...] = ()
    issuer: str | None = None  # IssuerOfPatientID; None leaves it out
    # (PatientID, IssuerOfPatientID) of each item of OtherPatientIDsSequence
    other_ids_sequence: tuple[tuple[str, str], ...] = ()
    study_date: str = "20240110"
    study_time: str = "101500"
    description: str = "CT CHEST"
    accession: str = "ACC1"
    series: tuple[SeriesSpec, ...] = (SeriesSpec(),)
    study_uid: str | None = None  # overrides the derived StudyInstanceUID


@dataclass(frozen=True)
class _Slot:
    """Where an instance sits in its study; what the kind builders need to know."""

    study: StudySpec
    series_index: int
    instance_index: int

    @property
    def series(self) -> SeriesSpec:
        return self.study.series[self.series_index]

    @property
    def instance(self) -> InstanceSpec:
        return self.series.instances[self.instance_index]


# -- UIDs ------------------------------------------------------------------------------------


def _derived_uid(*parts: str) -> str:
    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=list(parts)))


def study_uid(spec: StudySpec) -> str:
    """StudyInstanceUID of ``spec``: the override, or one derived from ``spec.key``."""
    if spec.study_uid is not None:
        return spec.study_uid
    return _derived_uid(spec.key, "study")


def series_uid(spec: StudySpec, series_index: int) -> str:
    """SeriesInstanceUID of the series at ``series_index``."""
    override = spec.series[series_index].uid
    if override is not None:
        return override
    return _derived_uid(spec.key, "series", str(series_index))


def sop_uid(spec: StudySpec, series_index: int, instance_index: int) -> str:
    """SOPInstanceUID of one instance, derived from its position in the study."""
    return _derived_uid(spec.key, "sop", str(series_index), str(instance_index))


def _frame_of_reference_uid(spec: StudySpec, series_index: int) -> str:
    return _derived_uid(spec.key, "frame-of-reference", str(series_index))


# -- building ----------------------------------------------------------------------------------


def build_study(spec: StudySpec) -> list[bytes]:
    """Every instance of the study as Part 10 bytes, in upload order."""
    return [
        build_instance(spec, series_index, instance_index)
        for series_index, series in enumerate(spec.series)
        for instance_index in range(len(series.instances))
    ]


def build_instance(spec: StudySpec, series_index: int, instance_index: int) -> bytes:
    """One instance as Part 10 bytes."""
    slot = _Slot(spec, series_index, instance_index)
    builder = _KIND_BUILDERS.get(slot.instance.kind)
    if builder is None:
        msg = f"unknown instance kind {slot.instance.kind!r}; known: {', '.join(KINDS)}"
        raise ValueError(msg)
    with _lenient_validation():
        ds = _common_dataset(slot)
        transfer_syntax = builder(ds, slot)
        return _encode(ds, transfer_syntax)


@contextlib.contextmanager
def _lenient_validation() -> Iterator[None]:
    """Let pydicom write any value, silently; restore its global settings afterwards."""
    settings = pydicom.config.settings
    # Both modes: pydicom checks values against the *reading* mode when they are
    # assigned (UID, PN, ...) and against the writing mode when the file is written.
    saved = (settings.reading_validation_mode, settings.writing_validation_mode)
    settings.reading_validation_mode = pydicom.config.IGNORE
    settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def _common_dataset(slot: _Slot) -> Dataset:
    ds = Dataset()
    # Always UTF-8, so that non-ASCII names need no per-test character set.
    ds.SpecificCharacterSet = "ISO_IR 192"
    _set_patient(ds, slot.study)
    _set_study(ds, slot.study)
    _set_series(ds, slot)
    ds.SOPInstanceUID = sop_uid(slot.study, slot.series_index, slot.instance_index)
    if slot.instance.number is not None:
        ds.InstanceNumber = slot.instance.number
    ds.ContentDate = slot.study.study_date
    ds.ContentTime = slot.study.study_time
    return ds


def _set_patient(ds: Dataset, study: StudySpec) -> None:
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    if study.other_patient_ids:
        ds.OtherPatientIDs = list(study.other_patient_ids)
    if study.issuer is not None:
        ds.IssuerOfPatientID = study.issuer
    if study.other_ids_sequence:
        items = []
        for patient_id, issuer in study.other_ids_sequence:
            item = Dataset()
            item.PatientID = patient_id
            item.IssuerOfPatientID = issuer
            items.append(item)
        ds.OtherPatientIDsSequence = items


def _set_study(ds: Dataset, study: StudySpec) -> None:
    ds.StudyInstanceUID = study_uid(study)
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.StudyDescription = study.description
    ds.AccessionNumber = study.accession
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""


def _set_series(ds: Dataset, slot: _Slot) -> None:
    series = slot.series
    ds.SeriesInstanceUID = series_uid(slot.study, slot.series_index)
    ds.Modality = series.modality
    ds.Manufacturer = "orthanc-openmrs devtools"
    if series.number is not None:
        ds.SeriesNumber = series.number
    if series.description:
        ds.SeriesDescription = series.description
    if series.date is not None:
        ds.SeriesDate = series.date
    if series.time is not None:
        ds.SeriesTime = series.time


def _encode(ds: Dataset, transfer_syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta = meta
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


# -- kinds -------------------------------------------------------------------------------------


def _build_ct(ds: Dataset, slot: _Slot) -> str:
    """CT, unsigned 12 of 16 bits, rescale -1024, window 40/400: renders well as is."""
    inst = slot.instance
    hu = ct_phantom(inst.rows, inst.columns, slot.instance_index)
    _set_ct_geometry(ds, slot)
    _set_gray_pixels(ds, (hu + 1024).clip(0, 4095).astype(np.uint16), bits_stored=12)
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    return ExplicitVRLittleEndian


def _build_ct_no_window(ds: Dataset, slot: _Slot) -> str:
    """CT, signed 16 bits holding HU directly, no window: Orthanc renders it nearly black."""
    inst = slot.instance
    hu = ct_phantom(inst.rows, inst.columns, slot.instance_index)
    _set_ct_geometry(ds, slot)
    _set_gray_pixels(ds, hu.astype(np.int16), bits_stored=16)
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    return ExplicitVRLittleEndian


def _set_ct_geometry(ds: Dataset, slot: _Slot) -> None:
    ds.SOPClassUID = CT_IMAGE
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    number = slot.instance.number
    position = number if number is not None else slot.instance_index + 1
    ds.FrameOfReferenceUID = _frame_of_reference_uid(slot.study, slot.series_index)
    ds.ImagePositionPatient = [-100.0, -100.0, -10.0 * position]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 10.0


def _build_large16(ds: Dataset, slot: _Slot) -> str:
    """A digital X-ray sized by the spec, with noise so that a lossless render is big."""
    inst = slot.instance
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = [0.15, 0.15]
    _set_gray_pixels(
        ds,
        xray_phantom(inst.rows, inst.columns, slot.study.key, slot.instance_index),
        bits_stored=14,
    )
    ds.WindowCenter = 8192
    ds.WindowWidth = 16384
    return ExplicitVRLittleEndian


def _build_rgb(ds: Dataset, slot: _Slot) -> str:
    """Secondary Capture, RGB 8-bit."""
    inst = slot.instance
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.ConversionType = "WSD"
    _set_rgb_pixels(ds, rgb_pattern(inst.rows, inst.columns))
    return ExplicitVRLittleEndian


def _build_us_multiframe(ds: Dataset, slot: _Slot) -> str:
    """Ultrasound cine, RGB, 10 frames; only frame 0 has a bright square top-left."""
    inst = slot.instance
    ds.SOPClassUID = US_MULTIFRAME
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.FrameTime = 33.3
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    frames = [us_frame(inst.rows, inst.columns, n) for n in range(US_FRAMES)]
    _set_rgb_pixels(ds, np.stack(frames))
    ds.NumberOfFrames = US_FRAMES
    return ExplicitVRLittleEndian


def _build_gray_multiframe(ds: Dataset, slot: _Slot) -> str:
    """Multi-frame Grayscale Word Secondary Capture, 8 frames of 16 bits."""
    inst = slot.instance
    ds.SOPClassUID = GRAY_WORD_MULTIFRAME_SC
    ds.ConversionType = "WSD"
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    base = gradient(inst.rows, inst.columns) * 60000.0
    frames = [(base * (n + 1) / GRAY_FRAMES).astype(np.uint16) for n in range(GRAY_FRAMES)]
    _set_gray_pixels(ds, np.stack(frames), bits_stored=16)
    ds.NumberOfFrames = GRAY_FRAMES
    # Without a window Orthanc's /rendered spreads the full 16-bit range: nearly black.
    ds.WindowCenter = 30000
    ds.WindowWidth = 60000
    return ExplicitVRLittleEndian


def _build_jpeg_gray(ds: Dataset, slot: _Slot) -> str:
    """Secondary Capture, 8-bit MONOCHROME2, JPEG baseline encoded by Pillow."""
    inst = slot.instance
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.ConversionType = "WSD"
    pixels = (gradient(inst.rows, inst.columns) * 200 + 40).astype(np.uint8)
    _set_image_module(ds, pixels.shape, samples=1, bits=8, bits_stored=8)
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.LossyImageCompression = "01"
    ds.add(_encapsulated_pixel_data([jpeg(pixels)]))
    return JPEGBaseline8Bit


def _build_undecodable(ds: Dataset, slot: _Slot) -> str:
    """Uncompressed YBR_FULL_422, which Orthanc 1.10.1 with GDCM answers with 415."""
    inst = slot.instance
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.ConversionType = "WSD"
    _set_image_module(ds, (inst.rows, inst.columns), samples=3, bits=8, bits_stored=8)
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.add(DataElement(0x7FE00010, "OB", ybr422_bytes(inst.rows, inst.columns)))
    return ExplicitVRLittleEndian


def _build_pdf(ds: Dataset, slot: _Slot) -> str:
    """Encapsulated PDF holding a one-page document made here."""
    document = pdf_document(f"orthanc-openmrs test document {slot.study.key}")
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.ConversionType = "WSD"
    ds.DocumentTitle = "Test report"
    ds.BurnedInAnnotation = "YES"
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(document)
    # OB must have even length; the PDF reader ignores bytes after %%EOF.
    padded = document + b"\0" * (len(document) % 2)
    ds.add(DataElement(0x00420011, "OB", padded))
    return ExplicitVRLittleEndian


def _build_sr(ds: Dataset, slot: _Slot) -> str:
    """Basic Text SR with a title and one text finding."""
    ds.SOPClassUID = BASIC_TEXT_SR
    _set_sr_document(ds, _code("11528-7", "LN", "Radiology Report"))
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
    finding.TextValue = "No acute findings. Synthetic test report."
    ds.ContentSequence = [finding]
    return ExplicitVRLittleEndian


def _build_ko(ds: Dataset, slot: _Slot) -> str:
    """Key Object Selection pointing at the first instance of the study."""
    ds.SOPClassUID = KEY_OBJECT_SELECTION
    _set_sr_document(ds, _code("113000", "DCM", "Of Interest"))
    reference = _sop_reference(slot.study)
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "IMAGE"
    item.ReferencedSOPSequence = [reference]
    ds.ContentSequence = [item]
    ds.CurrentRequestedProcedureEvidenceSequence = [_evidence(slot.study, reference)]
    return ExplicitVRLittleEndian


_KIND_BUILDERS: dict[str, Callable[[Dataset, _Slot], str]] = {
    "ct": _build_ct,
    "ct_no_window": _build_ct_no_window,
    "large16": _build_large16,
    "rgb": _build_rgb,
    "us_multiframe": _build_us_multiframe,
    "gray_multiframe": _build_gray_multiframe,
    "jpeg_gray": _build_jpeg_gray,
    "pdf": _build_pdf,
    "sr": _build_sr,
    "ko": _build_ko,
    "undecodable": _build_undecodable,
}
KINDS: tuple[str, ...] = tuple(_KIND_BUILDERS)


# -- structured reports ----------------------------------------------------------------------


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _set_sr_document(ds: Dataset, title: Dataset) -> None:
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [title]
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"


def _sop_reference(study: StudySpec) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = CT_IMAGE
    reference.ReferencedSOPInstanceUID = sop_uid(study, 0, 0)
    return reference


def _evidence(study: StudySpec, reference: Dataset) -> Dataset:
    series = Dataset()
    series.SeriesInstanceUID = series_uid(study, 0)
    series.ReferencedSOPSequence = [reference]
    evidence = Dataset()
    evidence.StudyInstanceUID = study_uid(study)
    evidence.ReferencedSeriesSequence = [series]
    return evidence


# -- pixel data elements -----------------------------------------------------------------------


def _set_image_module(
    ds: Dataset, shape: tuple[int, ...], *, samples: int, bits: int, bits_stored: int
) -> None:
    ds.SamplesPerPixel = samples
    ds.Rows, ds.Columns = shape[-2], shape[-1]
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0


def _set_gray_pixels(ds: Dataset, pixels: npt.NDArray[Any], *, bits_stored: int) -> None:
    """MONOCHROME2 pixel data; ``pixels`` is (rows, cols) or (frames, rows, cols)."""
    _set_image_module(ds, pixels.shape, samples=1, bits=16, bits_stored=bits_stored)
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.add(DataElement(0x7FE00010, "OW", pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()))


def _set_rgb_pixels(ds: Dataset, pixels: npt.NDArray[np.uint8]) -> None:
    """RGB pixel data, colour-by-pixel; ``pixels`` is (..., rows, cols, 3)."""
    _set_image_module(ds, pixels.shape[:-1], samples=3, bits=8, bits_stored=8)
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.add(DataElement(0x7FE00010, "OB", pixels.tobytes()))


def _encapsulated_pixel_data(frames: list[bytes]) -> DataElement:
    return DataElement(0x7FE00010, "OB", encapsulate(frames), is_undefined_length=True)
