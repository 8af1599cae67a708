"""Pure: which series and instance represent a study.

Orthanc lists series and instances in upload order, which says nothing clinical. Series go by
SeriesNumber as a number (0 included; unnumbered series after all numbered ones), then series
date and time, then SeriesInstanceUID; instances the same way by InstanceNumber.
"""

from __future__ import annotations

from collections.abc import Iterable

from orthanc_openmrs.models import Instance, InstanceKind, InstanceTags, Series

PDF_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"

# Series of these modalities hold no picture a clinician would recognise.
NON_IMAGE_MODALITIES = frozenset(
    {
        "SR",
        "KO",
        "PR",
        "DOC",
        "RTSTRUCT",
        "RTPLAN",
        "RTRECORD",
        "REG",
        "FID",
        "PLAN",
        "AU",
        "ECG",
        "HD",
        "EPS",
        "RESP",
        "RWV",
        "SMR",
        "BDUS",
    }
)

# Storage SOP classes without pixel data (or whose pixels are not a picture).
_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key objects
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF, CDA, STL...
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT structure set
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT plan
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registration, fiducials
    "1.2.840.10008.5.1.4.1.1.4.2",  # MR spectroscopy
)


def parse_number(raw: str | None) -> int | None:
    """An IS value as an int; absent, empty or malformed values count as no number."""
    if raw is None:
        return None
    text = raw.strip().split("\\")[0].strip()
    try:
        return int(text)
    except ValueError:
        try:
            as_float = float(text)
        except ValueError:
            return None
        return int(as_float) if as_float.is_integer() else None


def _absent_last(value: str | None) -> tuple[bool, str]:
    return (not value, value or "")


def order_series(series: Iterable[Series]) -> list[Series]:
    def key(item: Series) -> tuple[bool, int, tuple[bool, str], tuple[bool, str], str]:
        number = parse_number(item.number)
        return (
            number is None,
            number if number is not None else 0,
            _absent_last(item.date),
            _absent_last(item.time),
            item.series_uid,
        )

    return sorted(series, key=key)


def order_instances(instances: Iterable[Instance]) -> list[Instance]:
    def key(item: Instance) -> tuple[bool, int, str]:
        number = parse_number(item.number)
        if number is None:
            number = item.index_in_series
        return (number is None, number if number is not None else 0, item.sop_uid)

    return sorted(instances, key=key)


def series_may_hold_images(series: Series) -> bool:
    return series.modality.strip().upper() not in NON_IMAGE_MODALITIES


def classify(tags: InstanceTags) -> InstanceKind:
    if tags.sop_class_uid == PDF_SOP_CLASS:
        return InstanceKind.PDF
    if tags.sop_class_uid.startswith(_NON_IMAGE_SOP_PREFIXES):
        return InstanceKind.OTHER
    if not tags.rows or not tags.columns:
        return InstanceKind.OTHER
    return InstanceKind.IMAGE


def has_window(tags: InstanceTags) -> bool:
    """True when the file carries a usable default window (the first of several counts)."""
    for raw in (tags.window_center, tags.window_width):
        if raw is None:
            return False
        try:
            float(raw.split("\\")[0])
        except ValueError:
            return False
    width = float(tags.window_width.split("\\")[0]) if tags.window_width else 0.0
    return width > 0


# Orthanc 1.10.1 allocates the whole frame before rendering: a file claiming 65535 x 65535
# pixels makes it work for minutes or die. Past this, Orthanc is not asked (decode.py has the
# same bound, and refuses such frames with a reason).
MAX_RENDER_SIDE = 16384
MAX_RENDER_PIXELS = 64 * 1024 * 1024


def plausible_size(tags: InstanceTags) -> bool:
    rows, columns = tags.rows or 0, tags.columns or 0
    return (
        0 < rows <= MAX_RENDER_SIDE
        and 0 < columns <= MAX_RENDER_SIDE
        and (rows * columns <= MAX_RENDER_PIXELS)
    )
