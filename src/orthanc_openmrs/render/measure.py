"""Pure: whether a rendering shows a clinician anything.

The extremes alone say little: one bright pixel on a black image spans the whole grey scale.
The spread between the 1st and 99th percentile of grey levels is what the eye sees. Orthanc
1.10.1 renders some windows into a sliver of the scale (a signed 16-bit MR came out in 0..47
of 255) and some files entirely black; both fall under these bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

# Below this spread a picture is a dim smudge; a usable one spans far more.
SHOWS_SPREAD = 48
# Below this, nothing at all: a picture not worth uploading even as a last resort.
BLANK_SPREAD = 12
_SAMPLE_SIDE = 256


@dataclass(frozen=True)
class Contrast:
    low: int  # grey level at the 1st percentile
    high: int  # grey level at the 99th percentile

    @property
    def spread(self) -> int:
        return self.high - self.low

    @property
    def shows_something(self) -> bool:
        return self.spread >= SHOWS_SPREAD

    @property
    def blank(self) -> bool:
        return self.spread < BLANK_SPREAD


def contrast(image: Image.Image) -> Contrast:
    grey = image.convert("L")
    if max(grey.size) > _SAMPLE_SIDE:
        grey = grey.copy()
        grey.thumbnail((_SAMPLE_SIDE, _SAMPLE_SIDE))
    histogram = grey.histogram()
    total = sum(histogram)
    return Contrast(_percentile(histogram, total, 0.01), _percentile(histogram, total, 0.99))


def _percentile(histogram: list[int], total: int, fraction: float) -> int:
    wanted = fraction * total
    seen = 0
    for level, count in enumerate(histogram):
        seen += count
        if seen >= wanted and count:
            return level
    return len(histogram) - 1
