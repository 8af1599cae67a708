from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from orthanc_openmrs.errors import StudyRejected
from orthanc_openmrs.preview import fit_jpeg, is_blank, open_image


def _noise(width: int, height: int, seed: int = 1) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes(
        "L", (width, height), bytes(rng.randrange(256) for _ in range(width * height))
    )


def test_dark_low_contrast_image_is_blank() -> None:
    """Pixel values 0..4 (a CT rendered without its window) count as blank."""
    image = Image.frombytes("L", (32, 32), bytes(i % 5 for i in range(32 * 32)))
    assert is_blank(image)


def test_textured_image_is_not_blank() -> None:
    """An image with real contrast is not blank."""
    assert not is_blank(_noise(32, 32))


def test_fit_jpeg_bounds_pixels_and_bytes() -> None:
    """A big noisy image comes out as a JPEG within both bounds, aspect kept."""
    data = fit_jpeg(_noise(1200, 900), max_side=512, max_bytes=60_000)
    out = Image.open(io.BytesIO(data))
    assert out.format == "JPEG"
    assert max(out.size) <= 512
    assert out.size[0] / out.size[1] == pytest.approx(1200 / 900, rel=0.02)
    assert len(data) <= 60_000


def test_fit_jpeg_keeps_small_images_small() -> None:
    """An image already small is not enlarged."""
    out = Image.open(io.BytesIO(fit_jpeg(_noise(100, 50), 1024, 1_000_000)))
    assert out.size == (100, 50)


def test_fit_jpeg_converts_rgba_and_16_bit() -> None:
    """Modes JPEG cannot hold are converted."""
    rgba = Image.new("RGBA", (40, 40), (10, 200, 30, 128))
    assert Image.open(io.BytesIO(fit_jpeg(rgba, 64, 100_000))).mode == "RGB"


def test_unreadable_bytes_are_rejected() -> None:
    """Bytes that are no image raise StudyRejected."""
    with pytest.raises(StudyRejected):
        open_image(b"not an image")
