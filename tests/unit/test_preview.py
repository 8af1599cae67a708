from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from orthanc_openmrs.errors import StudyRejected
from orthanc_openmrs.preview import fit_jpeg, open_image, ready_as_is
from orthanc_openmrs.render.measure import contrast


def _noise(width: int, height: int, seed: int = 1) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes(
        "L", (width, height), bytes(rng.randrange(256) for _ in range(width * height))
    )


def test_dark_low_contrast_image_is_blank() -> None:
    """Pixel values 0..4 (a CT rendered without its window) count as blank."""
    image = Image.frombytes("L", (32, 32), bytes(i % 5 for i in range(32 * 32)))
    assert contrast(image).blank


def test_sliver_of_the_grey_scale_shows_nothing() -> None:
    """Grey values 0..47 of 255 (Orthanc's window of a signed 16-bit MR) show too little."""
    image = Image.frombytes("L", (48, 48), bytes(i % 48 for i in range(48 * 48)))
    assert not contrast(image).blank
    assert not contrast(image).shows_something


def test_one_bright_pixel_does_not_make_contrast() -> None:
    """A black picture with one white pixel spans 0..255 but shows nothing: percentiles count."""
    image = Image.new("L", (64, 64), 0)
    image.putpixel((3, 3), 255)
    assert contrast(image).blank


def test_textured_image_is_not_blank() -> None:
    """An image with real contrast shows something."""
    assert contrast(_noise(32, 32)).shows_something


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


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_orthanc_jpeg_within_bounds_is_used_as_is() -> None:
    """A small, visible JPEG from Orthanc needs no re-encoding."""
    assert ready_as_is(_jpeg(_noise(64, 48)), 1024, 1_000_000)


def test_jpeg_too_large_or_blank_or_not_jpeg_is_not_used_as_is() -> None:
    """Over the pixel or byte bound, blank, or not a JPEG: it goes through fit_jpeg."""
    assert not ready_as_is(_jpeg(_noise(300, 200)), 256, 1_000_000)
    assert not ready_as_is(_jpeg(_noise(300, 200)), 1024, 1_000)
    dark = Image.frombytes("L", (64, 64), bytes(i % 3 for i in range(64 * 64)))
    assert not ready_as_is(_jpeg(dark), 1024, 1_000_000)
    png = io.BytesIO()
    _noise(32, 32).save(png, format="PNG")
    assert not ready_as_is(png.getvalue(), 1024, 1_000_000)
    assert not ready_as_is(b"garbage", 1024, 1_000_000)
