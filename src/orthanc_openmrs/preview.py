"""Pure image work: turn what Orthanc rendered into a small JPEG a clinician recognises.

OpenMRS down-scales stored images over 1,200,000 bytes and refuses uploads over 5 MiB, so the
preview is bounded both in pixels and in bytes here, before it leaves.
"""

from __future__ import annotations

import io

from PIL import Image, ImageStat, UnidentifiedImageError

from orthanc_openmrs.errors import StudyRejected

# An image whose pixels span fewer grey levels than this shows nothing (the CT rendered without
# its window comes out with values 0..4).
_BLANK_SPREAD = 12
_QUALITIES = (88, 80, 70, 60, 50, 40)


def open_image(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise StudyRejected(f"Orthanc returned an image that cannot be read: {exc}") from exc
    return image


def ready_as_is(data: bytes, max_side: int, max_bytes: int) -> bool:
    """Whether Orthanc's JPEG can be uploaded untouched: within both bounds, and not blank.

    Only a reduced-scale decode is needed to tell (JPEG decoders can skip detail), which saves
    a full decode and re-encode per study.
    """
    if len(data) > max_bytes:
        return False
    try:
        image = Image.open(io.BytesIO(data))
        if image.format != "JPEG" or max(image.size) > max_side:
            return False
        image.draft("L", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError):
        return False
    return not is_blank(image)


def is_blank(image: Image.Image) -> bool:
    """True when the picture has (almost) no contrast: nothing a clinician could recognise."""
    grey = image.convert("L")
    low, high = grey.getextrema()
    if float(high) - float(low) < _BLANK_SPREAD:  # type: ignore[arg-type]
        return True
    return float(ImageStat.Stat(grey).stddev[0]) < 1.0


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
