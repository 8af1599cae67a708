"""Pure image work: turn what Orthanc rendered into a small JPEG a clinician recognises.

OpenMRS down-scales stored images over 1,200,000 bytes and refuses uploads over 5 MiB, so the
preview is bounded both in pixels and in bytes here, before it leaves.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from orthanc_openmrs.errors import StudyRejected
from orthanc_openmrs.render import measure

_QUALITIES = (88, 80, 70, 60, 50, 40)


def open_image(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise StudyRejected(f"Orthanc returned an image that cannot be read: {exc}") from exc
    return image


def ready_as_is(data: bytes, max_side: int, max_bytes: int) -> bool:
    """Whether Orthanc's JPEG can be uploaded untouched: within both bounds, and it shows
    something (measure.py).

    Only a reduced-scale decode is needed to tell (JPEG decoders can skip detail), which saves
    a full decode and re-encode per study.
    """
    if len(data) > max_bytes:
        return False
    try:
        image = Image.open(io.BytesIO(data))
        if image.format != "JPEG" or max(image.size) > max_side:
            return False
        # Reduced, but not below 128 pixels: at 1/8 a small picture's texture averages out.
        scale = max(1, min(8, max(image.size) // 128))
        image.draft("L", (max(1, image.width // scale), max(1, image.height // scale)))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError):
        return False
    return measure.contrast(image).shows_something


def fit_jpeg(image: Image.Image, max_side: int, max_bytes: int) -> bytes:
    """A JPEG no larger than max_side pixels on its longest side and max_bytes in size."""
    picture = image.convert("RGB") if image.mode not in ("L", "RGB") else image.copy()
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    while True:
        for quality in _QUALITIES:
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=quality, optimize=True)
            if buffer.tell() <= max_bytes:
                return buffer.getvalue()
        width, height = picture.size
        if max(width, height) <= 64:
            return buffer.getvalue()
        picture = picture.resize(
            (max(1, int(width * 0.75)), max(1, int(height * 0.75))), Image.Resampling.LANCZOS
        )
