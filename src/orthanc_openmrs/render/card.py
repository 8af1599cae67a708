"""A small picture that names a study with no image to show (a report, a segmentation, a
waveform, or images nobody can decode), so that the chart still shows the study exists and
how to open it. Its caption carries the viewer link, as every attachment's does."""

from __future__ import annotations

import io
import unicodedata
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 640, 360
_BACKGROUND = (38, 50, 56)
_TEXT = (236, 239, 241)
_SOFT = (176, 190, 197)
_ACCENT = (79, 195, 247)
_MAX_CHARS = 48


def clean(text: str, limit: int = _MAX_CHARS) -> str:
    """Printable text only: DICOM values may hold control characters or be very long."""
    printable = "".join(
        ch if unicodedata.category(ch)[0] not in ("C", "Z") or ch == " " else " " for ch in text
    )
    words = " ".join(printable.split())
    return words if len(words) <= limit else words[: limit - 3].rstrip() + "..."


def _date(raw: str) -> str:
    digits = raw.strip()
    if len(digits) == 8 and digits.isdigit():
        return f"{digits[:4]}-{digits[4:6]}-{digits[6:]}"
    return clean(digits) or "date unknown"


def study_card(modalities: Sequence[str], study_date: str, description: str, why: str) -> bytes:
    """A JPEG card: modality, date, description, why no image is shown, "open in the viewer"."""
    card = Image.new("RGB", (WIDTH, HEIGHT), _BACKGROUND)
    draw = ImageDraw.Draw(card)
    big = ImageFont.load_default(size=44)
    medium = ImageFont.load_default(size=26)
    small = ImageFont.load_default(size=20)
    shown = clean(" ".join(dict.fromkeys(m for m in modalities if m.strip())), 24) or "Study"
    draw.rectangle((0, 0, 12, HEIGHT), fill=_ACCENT)
    draw.text((40, 36), shown, font=big, fill=_TEXT)
    draw.text((40, 100), _date(study_date), font=medium, fill=_SOFT)
    draw.text((40, 150), clean(description) or "no description", font=medium, fill=_TEXT)
    draw.text((40, 210), clean(why, 60), font=small, fill=_SOFT)
    draw.text((40, 290), "Open in the viewer: link in the caption", font=medium, fill=_ACCENT)
    buffer = io.BytesIO()
    card.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
