from __future__ import annotations

import pytest

from orthanc_openmrs.caption import (
    build_caption,
    clean_text,
    is_valid_uid,
    java_length,
    refers_to,
    viewer_link,
)
from orthanc_openmrs.config import Viewer

UID = "1.2.826.0.1.3680043.8.498.12345"
OID = "bcdb575c-529242a3-8bf7443d-341c8727-1d34f5dd"
LINK = f"https://pacs.example.org/stone-webviewer/index.html?study={UID}"


def test_stone_link_is_ozone_format() -> None:
    """The default link is Ozone's Stone Web Viewer link with the StudyInstanceUID."""
    assert viewer_link(Viewer.STONE, "", "https://pacs.example.org", UID, OID) == LINK


def test_other_viewers_and_custom_template() -> None:
    """OHIF and Explorer 2 use the UID, the built-in explorer the Orthanc ID; custom works."""
    base = "http://o"
    assert (
        viewer_link(Viewer.OHIF, "", base, UID, OID)
        == f"http://o/ohif/viewer?StudyInstanceUIDs={UID}"
    )
    assert UID in viewer_link(Viewer.EXPLORER2, "", base, UID, OID)
    assert viewer_link(Viewer.EXPLORER, "", base, UID, OID).endswith(f"#study?uuid={OID}")
    assert (
        viewer_link(Viewer.CUSTOM, "{public_url}/v/{orthanc_id}", base, UID, OID)
        == f"http://o/v/{OID}"
    )


def test_link_values_are_percent_encoded() -> None:
    """A hostile value cannot add query parameters or fragments to the link."""
    link = viewer_link(Viewer.STONE, "", "http://o", "1.2&x=3#4", OID)
    assert link.endswith("study=1.2%26x%3D3%234")


@pytest.mark.parametrize("uid", ["1.2.3", "1", "0.5.12"])
def test_valid_uids(uid: str) -> None:
    """Digits and dots are a UID."""
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid", ["", "1.2&3", "1.2#3", "1..2", ".1", "1.", "a.b", "1" * 65, "1.2\n"]
)
def test_invalid_uids(uid: str) -> None:
    """Anything else, or over 64 characters, is not."""
    assert not is_valid_uid(uid)


def test_caption_has_human_part_and_link() -> None:
    """Modality, date and description come before the link."""
    text = build_caption(LINK, ["CT", "OT", "CT"], "20240110", "CT CHEST")
    assert text == f"CT/OT 2024-01-10 CT CHEST - {LINK}"


def test_long_description_is_shortened_never_the_link() -> None:
    """A long description is cut with an ellipsis; 255 units at most, ending with the link."""
    text = build_caption(LINK, ["CT"], "20240110", "X" * 400)
    assert text is not None
    assert java_length(text) <= 255
    assert text.endswith(LINK)
    assert "\u2026" in text


def test_non_ascii_counts_as_java_does() -> None:
    """Characters outside the BMP count twice; the caption still fits 255 UTF-16 units."""
    text = build_caption(LINK, ["US"], "20240110", "Échographie 🩻" * 40)
    assert text is not None
    assert java_length(text) <= 255
    assert len(text) < java_length(text)
    assert text.endswith(LINK)
    assert "\ud83e" not in text  # no half of a surrogate pair left behind


def test_link_alone_too_long_gives_none() -> None:
    """A link over 255 characters cannot be captioned."""
    assert build_caption("http://o/" + "1" * 300, [], "", "") is None


def test_link_that_barely_fits_stands_alone() -> None:
    """When only the link fits, the caption is the bare link."""
    link = "http://o/" + "1" * 240
    assert build_caption(link, ["CT"], "20240110", "DESC") == link


def test_clean_text_removes_control_characters() -> None:
    """CR/LF and carets from DICOM text become single spaces."""
    assert clean_text(" CT\r\nCHEST^ABD\x00 ") == "CT CHEST ABD"


def test_refers_to_matches_whole_uid_only() -> None:
    """The study 1.2.3 is not the study 1.2.3.5, nor 11.2.3; a sentence's full stop is fine."""
    assert refers_to("see ?study=1.2.3", "1.2.3", "")
    assert refers_to("study 1.2.3.", "1.2.3", "")
    assert not refers_to("?study=1.2.3.5", "1.2.3", "")
    assert not refers_to("?study=11.2.3", "1.2.3", "")
    assert not refers_to("?study=1.2.34", "1.2.3", "")
    assert not refers_to(None, "1.2.3", "")
    assert not refers_to("", "1.2.3", "")


def test_refers_to_orthanc_id() -> None:
    """An explorer link names the study by its Orthanc ID."""
    assert refers_to(f"#study?uuid={OID}", "9.9", OID)
    assert not refers_to(f"#study?uuid={OID}a", "9.9", OID)
