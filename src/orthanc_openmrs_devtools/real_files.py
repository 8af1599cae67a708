"""Real DICOM files from real modalities: every file pydicom and pydicom-data ship, each made
its own study.

Many of these files share UIDs with each other (several encodings of one image), and some lack
the identifiers Orthanc needs, so each is rewritten: new Study, Series and SOP Instance UIDs and
a PatientID derived from its file name, so that one file is one study and the same on every run.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

__all__ = ["RealFile", "hostile_files", "real_files", "rewrite"]

_PREFIX = "1.2.826.0.1.3680043.8.498."


@dataclass(frozen=True)
class RealFile:
    name: str  # the file's name, as pydicom ships it
    path: Path
    patient_id: str
    study_uid: str
    data: bytes  # the rewritten file, ready to upload


def _uid(name: str, part: str) -> str:
    return str(generate_uid(prefix=_PREFIX, entropy_srcs=["real-file", name, part]))


def patient_id_for(name: str) -> str:
    return "RF" + hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:10].upper()


def rewrite(
    path: Path,
    *,
    key: str | None = None,
    patient_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> RealFile:
    """The file with its own study: UIDs and PatientID derived from `key` (its name by default).

    Raises whatever pydicom raises on a file it cannot read; the pixel data is left untouched,
    so every codec reaches Orthanc as the modality wrote it."""
    name = key or path.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the odd files are the point: pydicom warns on many
        ds = pydicom.dcmread(path, force=True)
        if len(ds) < 2:  # text, JSON or archives beside the test files: not DICOM at all
            raise ValueError(f"{path.name} is not a DICOM file")
        ds.StudyInstanceUID = _uid(name, "study")
        ds.SeriesInstanceUID = _uid(name, "series")
        sop = pydicom.uid.UID(_uid(name, "sop"))
        ds.SOPInstanceUID = sop
        if "file_meta" in dir(ds) and ds.file_meta is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.PatientID = patient_id or patient_id_for(name)
        for keyword, value in (tags or {}).items():
            setattr(ds, keyword, value)
        if "SOPClassUID" not in ds:
            ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture: Orthanc needs one
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
    return RealFile(name, path, str(ds.PatientID), str(ds.StudyInstanceUID), buffer.getvalue())


def real_files() -> Iterator[RealFile]:
    """Every DICOM file shipped by pydicom and pydicom-data that pydicom can read, rewritten;
    files pydicom cannot read at all are left out (they are not DICOM to anyone)."""
    from pydicom.data import get_testdata_files

    seen: set[str] = set()
    for raw in sorted(get_testdata_files(), key=lambda p: Path(p).name):
        path = Path(raw)
        if path.name in seen:
            continue
        seen.add(path.name)
        try:
            yield rewrite(path)
        except Exception:  # noqa: S112 - unreadable files are simply not part of the corpus
            continue


HOSTILE_TEXT = "\x1b[2J<script>alert('x')</script>\x00\x07 CHEST\r\nDROP TABLE studies;"
LONG_ID = "L" * 200
BAD_UID = "1.2.826.0.1.3680043.8.498.1&sop=2#frag"


def hostile_files() -> list[RealFile]:
    """Files a hostile or broken sender could make, each its own study, from pydicom's MR:
    control characters and script in names and descriptions, a 200-character PatientID, a
    StudyInstanceUID with `&` and `#`, and a frame claiming 65535 x 65535 pixels."""
    from pydicom.data import get_testdata_file

    base = Path(str(get_testdata_file("MR_small.dcm")))

    def made(key: str, change: Callable[[Dataset], None]) -> RealFile:
        real = rewrite(base, key=key)
        ds = pydicom.dcmread(io.BytesIO(real.data))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # values over their VR's length are the point
            change(ds)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=False)
        uid, pid = str(ds.StudyInstanceUID), str(ds.PatientID)
        return RealFile(key, base, pid, uid, buffer.getvalue())

    def names(ds: Dataset) -> None:
        ds.PatientName = "Evil^" + HOSTILE_TEXT[:40]
        ds.StudyDescription = HOSTILE_TEXT
        ds.SeriesDescription = HOSTILE_TEXT

    def long_id(ds: Dataset) -> None:
        ds.PatientID = LONG_ID

    def bad_uid(ds: Dataset) -> None:
        ds.StudyInstanceUID = BAD_UID

    def absurd(ds: Dataset) -> None:
        ds.Rows = ds.Columns = 65535
        ds.PixelData = b"\x00\x01" * 512

    return [
        made("hostile-names", names),
        made("hostile-200-char-id", long_id),
        made("hostile-uid-amp-hash", bad_uid),
        made("hostile-absurd-dimensions", absurd),
    ]
