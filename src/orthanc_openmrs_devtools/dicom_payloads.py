"""What the synthetic DICOM instances carry: pixel patterns and a hand-written PDF.

Everything here is a pure function of its arguments (the X-ray noise is seeded), so
``dicom_factory`` keeps producing the same bytes for the same spec.
"""

from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "ct_phantom",
    "gradient",
    "jpeg",
    "pdf_document",
    "rgb_pattern",
    "us_frame",
    "xray_phantom",
    "ybr422_bytes",
]


# -- pixel patterns ----------------------------------------------------------------------------


def jpeg(pixels: npt.NDArray[np.uint8]) -> bytes:
    """Baseline JPEG of 8-bit grey pixels, as Pillow encodes it at quality 90."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _grid(rows: int, columns: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Normalised coordinates in [0, 1]: (y, x)."""
    y = np.linspace(0.0, 1.0, rows)[:, None] * np.ones((1, columns))
    x = np.ones((rows, 1)) * np.linspace(0.0, 1.0, columns)[None, :]
    return y, x


def gradient(rows: int, columns: int) -> npt.NDArray[np.float64]:
    """A diagonal ramp from 0 (top-left) to 1 (bottom-right)."""
    y, x = _grid(rows, columns)
    return (x + y) / 2.0


def _disc(rows: int, columns: int, cy: float, cx: float, radius: float) -> npt.NDArray[np.bool_]:
    y, x = _grid(rows, columns)
    return np.asarray((y - cy) ** 2 + (x - cx) ** 2 <= radius**2)


def ct_phantom(rows: int, columns: int, index: int) -> npt.NDArray[np.int32]:
    """HU values: air, a soft-tissue body with a gradient, and a bright 'bone' that moves."""
    _, x = _grid(rows, columns)
    hu = np.full((rows, columns), -1000.0)
    body = _disc(rows, columns, 0.5, 0.5, 0.4)
    hu[body] = (x[body] - 0.5) * 200.0 + 40.0
    bone_x = 0.35 + 0.05 * (index % 5)
    hu[_disc(rows, columns, 0.5, bone_x, 0.1)] = 400.0
    return hu.astype(np.int32)


def xray_phantom(rows: int, columns: int, key: str, index: int) -> npt.NDArray[np.uint16]:
    """14-bit values: a bright ellipse-ish body over a ramp, plus strong noise.

    The noise is seeded from ``key`` and ``index``, so it is the same on every run.
    """
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed + index)
    base = gradient(rows, columns) * 6000.0 + 2000.0
    base[_disc(rows, columns, 0.5, 0.5, 0.35)] += 6000.0
    noise = rng.integers(-1500, 1500, size=(rows, columns))
    return np.asarray((base + noise).clip(0, 16383), dtype=np.uint16)


def rgb_pattern(rows: int, columns: int) -> npt.NDArray[np.uint8]:
    y, x = _grid(rows, columns)
    blue = np.where(_disc(rows, columns, 0.5, 0.5, 0.3), 230.0, 30.0)
    return np.stack([x * 255.0, y * 255.0, blue], axis=-1).astype(np.uint8)


def us_frame(rows: int, columns: int, frame: int) -> npt.NDArray[np.uint8]:
    """A grey blob that moves with the frame; frame 0 adds a white square top-left."""
    gray = np.full((rows, columns), 20.0)
    gray[_disc(rows, columns, 0.5, 0.3 + 0.04 * frame, 0.15)] = 160.0
    if frame == 0:
        gray[: rows // 4, : columns // 4] = 255.0
    return np.repeat(gray[:, :, None], 3, axis=2).astype(np.uint8)


def ybr422_bytes(rows: int, columns: int) -> bytes:
    """YBR_FULL_422 samples (Y1 Y2 Cb Cr per pixel pair) of a luminance ramp."""
    luma = (gradient(rows, columns) * 255.0).astype(np.uint8)
    pairs = luma.reshape(rows, columns // 2, 2)
    chroma = np.full((rows, columns // 2, 1), 128, dtype=np.uint8)
    return np.concatenate([pairs, chroma, chroma], axis=2).tobytes()


# -- PDF ---------------------------------------------------------------------------------------


def pdf_document(text: str) -> bytes:
    """A minimal one-page PDF with a correct cross-reference table."""
    safe = "".join(c for c in text if c.isascii() and c.isprintable() and c not in "()\\")
    stream = f"BT /F1 14 Tf 40 100 Td ({safe}) Tj ET".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 200] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(out)
