"""Frame 0 of a DICOM file as an 8-bit picture, decoded here with pydicom and its codec plugins.

What a viewer does, in order: the modality LUT (rescale slope and intercept, or a LUT), then the
VOI LUT or the file's first window, MONOCHROME1 inverted, palette colour looked up, YBR turned
into RGB. A window that leaves the picture empty gives way to the full range between the 0.5th
and 99.5th percentiles, so a stray pixel cannot darken the rest.

The dimensions are checked before a pixel is decoded: a file may claim 65535 x 65535 pixels of
64 bits, and a decoder asked for that would take the machine's memory. This code runs in a child
process with limits (sandbox.py): codecs written in C are not trusted with the service's memory.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array

from orthanc_openmrs.render import measure

# The most pixel bytes of one frame this will decode (a 4096 x 4096 x 3 x 16-bit frame is 96 MiB).
MAX_FRAME_BYTES = 128 * 1024 * 1024
MAX_SIDE = 16384

_GREY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


class Undecodable(Exception):
    """The file holds no picture this can make, with the reason in words."""


def decode(data: bytes) -> Image.Image:
    """Frame 0 of the DICOM file in `data`, ready to show; raises Undecodable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # real files are odd in many harmless ways
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as exc:
            raise Undecodable(f"pydicom cannot read the file: {_words(exc)}") from exc
        _check_bounds(ds)
        try:
            # as_rgb converts YBR to RGB while decoding, as the codec knows the subsampling
            frame = pixel_array(ds, index=0)
        except Exception as exc:
            raise Undecodable(f"pydicom cannot decode the pixel data: {_words(exc)}") from exc
        return _picture(ds, frame)


def _check_bounds(ds: Any) -> None:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise Undecodable("the file holds no pixel data")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise Undecodable(f"the image module is incomplete: {_words(exc)}") from exc
    if not (0 < rows <= MAX_SIDE and 0 < columns <= MAX_SIDE):
        raise Undecodable(f"refused: {columns} x {rows} pixels is beyond {MAX_SIDE} a side")
    if samples not in (1, 3) or bits not in (1, 8, 16, 32, 64):
        raise Undecodable(f"refused: {samples} samples of {bits} bits per pixel")
    if rows * columns * samples * max(bits, 8) // 8 > MAX_FRAME_BYTES:
        raise Undecodable(f"refused: one frame of {columns} x {rows} x {samples} is too large")


def _picture(ds: Any, frame: NDArray[Any]) -> Image.Image:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
        return Image.fromarray(_to_8bit(rgb, _lut_depth(rgb)), "RGB")
    if photometric in _COLOUR or (frame.ndim == 3 and frame.shape[-1] == 3):
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise Undecodable(f"a {photometric} frame without three samples per pixel")
        bits = int(ds.get("BitsStored", ds.BitsAllocated) or 8)
        return Image.fromarray(_to_8bit(frame, bits), "RGB")
    if photometric not in _GREY:
        raise Undecodable(f"photometric interpretation {photometric!r} is not shown")
    if frame.ndim != 2:
        raise Undecodable(f"a grey frame of shape {frame.shape}")
    grey = _grey(ds, frame)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return Image.fromarray(grey, "L")


def _grey(ds: Any, frame: NDArray[Any]) -> NDArray[np.uint8]:
    values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
    windowed = _windowed(ds, values)
    if windowed is not None:
        picture = Image.fromarray(windowed, "L")
        if measure.contrast(picture).shows_something:
            return windowed
    return _stretch(values, *np.percentile(values, (0.5, 99.5)))


def _windowed(ds: Any, values: NDArray[np.float64]) -> NDArray[np.uint8] | None:
    """The file's own VOI: its LUT, else its first window (DICOM's linear function)."""
    if "VOILUTSequence" in ds:
        try:
            out = np.asarray(apply_voi_lut(values, ds, prefer_lut=True))
        except Exception:  # a broken LUT is passed over for the full range
            return None
        return _stretch(out, float(out.min()), float(out.max()))
    try:
        center = float(_first(ds.WindowCenter))
        width = float(_first(ds.WindowWidth))
    except (AttributeError, TypeError, ValueError):
        return None
    if width <= 1:
        return None
    low = center - 0.5 - (width - 1) / 2
    return _stretch(values, low, low + width - 1)


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, pydicom.multival.MultiValue) else value


def _stretch(values: NDArray[Any], low: float, high: float) -> NDArray[np.uint8]:
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.asarray(values, dtype=np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)


def _to_8bit(rgb: NDArray[Any], bits: int) -> NDArray[np.uint8]:
    scale = 1.0 if rgb.dtype == np.uint8 or bits <= 8 else 255.0 / (2**bits - 1)
    scaled: NDArray[np.uint8] = np.clip(rgb * scale, 0, 255).astype(np.uint8)
    return scaled


def _lut_depth(rgb: NDArray[Any]) -> int:
    return 8 if int(rgb.max(initial=0)) < 256 else 16


def _words(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "...") if len(text) > 200 else text or type(exc).__name__
