"""Flows 2 and 3: the instance that represents a study in the chart, and the file shown.

The ordering rules are pure (selection.py); this module walks them against Orthanc, taking the
next instance, then the next series, when Orthanc cannot decode one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orthanc_openmrs import preview, selection
from orthanc_openmrs.errors import OrthancUnsupported
from orthanc_openmrs.models import InstanceKind, InstanceTags, Preview, Series
from orthanc_openmrs.orthanc import OrthancClient

# Ozone's service names its uploads this way; O3 users look for it in the Attachments tab.
IMAGE_NAME = "radiology-image.jpg"
PDF_NAME = "radiology-report.pdf"


@dataclass(frozen=True)
class Representative:
    instance_id: str
    modalities: tuple[str, ...]
    file: Preview


class RepresentativeFinder:
    def __init__(self, orthanc: OrthancClient, max_side: int, max_bytes: int) -> None:
        self.orthanc = orthanc
        self.max_side = max_side
        self.max_bytes = max_bytes

    def find(self, study_id: str) -> Representative | None:
        """First series with an image Orthanc can render; else the first PDF; else None."""
        ordered = selection.order_series(self.orthanc.study_series(study_id))
        modalities = tuple(s.modality for s in ordered if selection.series_may_hold_images(s))
        pdf: str | None = None
        for series in ordered:
            image, found_pdf = self._in_series(series, modalities)
            if image:
                return image
            pdf = pdf or found_pdf
        if pdf:
            data = self.orthanc.pdf(pdf)
            return Representative(pdf, ("DOC",), Preview(data, "application/pdf", PDF_NAME))
        return None

    def _in_series(
        self, series: Series, modalities: Sequence[str]
    ) -> tuple[Representative | None, str | None]:
        if not selection.series_may_hold_images(series) and series.modality != "DOC":
            return None, None
        instances = selection.order_instances(self.orthanc.series_instances(series.orthanc_id))
        for instance in instances:
            tags = self.orthanc.instance_tags(instance.orthanc_id)
            kind = selection.classify(tags)
            if kind is InstanceKind.PDF:
                return None, instance.orthanc_id
            if kind is InstanceKind.OTHER:
                return None, None  # a series holds one kind of object: no image further down
            try:
                file = self._image(instance.orthanc_id, tags)
            except OrthancUnsupported:
                continue  # Orthanc cannot decode this one: the next instance, then series
            return Representative(instance.orthanc_id, tuple(modalities), file), None
        return None, None

    def _image(self, instance_id: str, tags: InstanceTags) -> Preview:
        image = None
        if selection.has_window(tags):
            largest = max(tags.rows or 0, tags.columns or 0)
            # Orthanc enlarges small images to the bound it is given: only bound large ones.
            bound = self.max_side if largest > self.max_side else None
            data = self.orthanc.rendered(instance_id, bound)
            if preview.ready_as_is(data, self.max_side, self.max_bytes):
                return Preview(data, "image/jpeg", IMAGE_NAME)
            image = preview.open_image(data)
            if preview.is_blank(image):
                image = None  # a window that shows nothing: fall back to the full range
        if image is None:
            image = preview.open_image(self.orthanc.preview(instance_id))
        data = preview.fit_jpeg(image, self.max_side, self.max_bytes)
        return Preview(data, "image/jpeg", IMAGE_NAME)
