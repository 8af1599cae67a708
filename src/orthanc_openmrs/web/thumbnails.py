"""A study's thumbnail for the queue, fetched from Orthanc with the service's credentials (the
browser never gets them) and made small here.

The instance is the one the ledger recorded for the attachment when there is one, else the
first instance of the study's first series in clinical order (selection.py). Instances that
crashed Orthanc are never asked for, and Orthanc's full-range `/preview` is used, which shows
something even for images without window tags.
"""

from __future__ import annotations

from orthanc_openmrs import preview, selection
from orthanc_openmrs.errors import SyncError
from orthanc_openmrs.orthanc import OrthancClient

SIDE = 256
MAX_BYTES = 60_000


def thumbnail(
    orthanc: OrthancClient, orthanc_id: str, instance_id: str, not_to_render: frozenset[str]
) -> bytes | None:
    """A small JPEG of the study, or None when there is nothing Orthanc can show."""
    try:
        chosen = instance_id or _first_instance(orthanc, orthanc_id)
        if not chosen or chosen in not_to_render:
            return None
        image = preview.open_image(orthanc.preview(chosen))
        return preview.fit_jpeg(image, SIDE, MAX_BYTES)
    except SyncError:
        return None


def _first_instance(orthanc: OrthancClient, orthanc_id: str) -> str:
    for series in selection.order_series(orthanc.study_series(orthanc_id)):
        if not selection.series_may_hold_images(series):
            continue
        instances = selection.order_instances(orthanc.series_instances(series.orthanc_id))
        if instances:
            return instances[0].orthanc_id
    return ""
