"""Pure: the viewer link and the attachment caption (at most 255 UTF-16 units, link intact).

OpenMRS stores the caption in `obs.comments`, VARCHAR(255), checked with Java's String.length():
characters outside the Basic Multilingual Plane count twice. A longer caption fails the upload.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import quote

from orthanc_openmrs.config import Viewer

CAPTION_LIMIT = 255
UID_MAX = 64
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_ORTHANC_ID = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_SPACES = re.compile(r"\s+")
_SEPARATOR = " - "
_ELLIPSIS = "\u2026"

_TEMPLATES = {
    Viewer.STONE: "{public_url}/stone-webviewer/index.html?study={study_uid}",
    Viewer.OHIF: "{public_url}/ohif/viewer?StudyInstanceUIDs={study_uid}",
    Viewer.EXPLORER2: "{public_url}/ui/app/#/filtered-studies?StudyInstanceUID={study_uid}&expand",
    Viewer.EXPLORER: "{public_url}/app/explorer.html#study?uuid={orthanc_id}",
}


def is_valid_uid(uid: str) -> bool:
    """A DICOM UID: digits and dots, at most 64 characters (so it is safe in a URL as it is)."""
    return len(uid) <= UID_MAX and _UID.fullmatch(uid) is not None


def is_orthanc_id(value: str) -> bool:
    return _ORTHANC_ID.fullmatch(value) is not None


def java_length(text: str) -> int:
    """Length as Java's String.length() counts it (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


def viewer_link(
    viewer: Viewer, custom_template: str, public_url: str, study_uid: str, orthanc_id: str
) -> str:
    template = custom_template if viewer is Viewer.CUSTOM else _TEMPLATES[viewer]
    return template.format(
        public_url=public_url,
        study_uid=quote(study_uid, safe=""),
        orthanc_id=quote(orthanc_id, safe=""),
    )


def clean_text(value: str) -> str:
    """A DICOM text as one readable line: no control characters, no component carets."""
    value = _CONTROL.sub(" ", value).replace("^", " ")
    return _SPACES.sub(" ", value).strip()


def format_date(dicom_date: str) -> str:
    date = dicom_date.strip()
    if len(date) == 8 and date.isdigit():
        return f"{date[:4]}-{date[4:6]}-{date[6:]}"
    return clean_text(date)


def build_caption(
    link: str, modalities: Sequence[str], study_date: str, description: str
) -> str | None:
    """`CT 2024-01-10 CT CHEST - <link>`, shortening the words, never the link.

    None when even the bare link does not fit.
    """
    if java_length(link) > CAPTION_LIMIT:
        return None
    head = " ".join(
        part
        for part in ("/".join(dict.fromkeys(m for m in modalities if m)), format_date(study_date))
        if part
    )
    words = clean_text(description)
    for human in (f"{head} {words}".strip(), head):
        if not human:
            continue
        fitted = _fit(human, CAPTION_LIMIT - java_length(_SEPARATOR + link))
        if fitted:
            return fitted + _SEPARATOR + link
    return link


def _fit(text: str, budget: int) -> str:
    if java_length(text) <= budget:
        return text
    if budget < 8:
        return ""
    cut = text
    while cut and java_length(cut) + 1 > budget:
        cut = cut[:-1]
    return cut.rstrip() + _ELLIPSIS


def refers_to(caption: str | None, study_uid: str, orthanc_id: str) -> bool:
    """Whether a caption names this study: its UID or Orthanc ID as a whole token.

    The study 1.2.3 is not the study 1.2.3.5, so the neighbours of a hit must not continue it.
    """
    if not caption or not (
        (study_uid and study_uid in caption) or (orthanc_id and orthanc_id in caption)
    ):
        return False  # the common case, decided without building a pattern
    if study_uid and re.search(rf"(?<![0-9.]){re.escape(study_uid)}(?![0-9]|\.[0-9])", caption):
        return True
    return bool(
        orthanc_id and re.search(rf"(?<![0-9a-f-]){re.escape(orthanc_id)}(?![0-9a-f-])", caption)
    )
