"""Flows 3 and 4: the instance that represents a study in the chart, and the file shown.

The ordering rules are pure (selection.py); this module walks them against Orthanc. For each
image instance, in order, until one shows something: Orthanc's rendering with the file's own
window, Orthanc's full-range preview, then the file decoded here (render/, in a limited child
process). An instance Orthanc crashed on is never handed to Orthanc's decoders again. A study
with no image anyone can make gets its PDF, else a study card (render/card.py), so that every
study is seen in the chart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageOps

from orthanc_openmrs import preview, selection
from orthanc_openmrs.errors import OrthancError, OrthancUnsupported, StudyRejected
from orthanc_openmrs.models import InstanceKind, InstanceTags, Preview, PreviewSource, Series, Study
from orthanc_openmrs.orthanc import OrthancClient
from orthanc_openmrs.render import card, measure
from orthanc_openmrs.render.sandbox import SandboxFailed, decode_isolated

# Ozone's service names its uploads this way; O3 users look for it in the Attachments tab.
IMAGE_NAME = "radiology-image.jpg"
PDF_NAME = "radiology-report.pdf"
# Files are decoded here only for the first few instances of a study: a series of a thousand
# undecodable frames costs a few child processes, then a card.
LOCAL_TRIES = 2
MAX_FILE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Representative:
    instance_id: str
    modalities: tuple[str, ...]
    file: Preview
    source: PreviewSource
    note: str = ""  # why this path was taken, when it is not Orthanc's first answer


@dataclass
class _Candidate:
    """The best picture seen so far for one instance, when none showed enough."""

    image: Image.Image | None = None
    spread: int = -1
    source: PreviewSource = PreviewSource.ORTHANC_WINDOW

    def offer(self, image: Image.Image, source: PreviewSource) -> bool:
        """Keep the picture if it beats the others; whether it shows something."""
        contrast = measure.contrast(image)
        if contrast.spread > self.spread:
            self.image, self.spread, self.source = image, contrast.spread, source
        return contrast.shows_something


@dataclass
class _Walk:
    """What one study's walk has learned: tries left here, and why pictures failed."""

    local_tries: int = LOCAL_TRIES
    failures: list[str] = field(default_factory=list)


class RepresentativeFinder:
    def __init__(
        self,
        orthanc: OrthancClient,
        max_side: int,
        max_bytes: int,
        *,
        cards: bool = True,
        may_render: Callable[[str], bool] = lambda _instance: True,
        decode: Callable[[bytes], Image.Image] = decode_isolated,
    ) -> None:
        self.orthanc = orthanc
        self.max_side = max_side
        self.max_bytes = max_bytes
        self.cards = cards
        self.may_render = may_render
        self.decode = decode

    def find(self, study: Study) -> Representative:
        """First series with an image that shows something; else the first PDF; else a card.
        Raises StudyRejected when cards are off and nothing else could be made."""
        ordered = selection.order_series(self.orthanc.study_series(study.orthanc_id))
        modalities = tuple(s.modality for s in ordered if selection.series_may_hold_images(s))
        walk = _Walk()
        pdf: str | None = None
        for series in ordered:
            image, found_pdf = self._in_series(series, modalities, walk)
            if image:
                return image
            pdf = pdf or found_pdf
        if pdf:
            data = self.orthanc.pdf(pdf)
            doc = Preview(data, "application/pdf", PDF_NAME)
            return Representative(pdf, ("DOC",), doc, PreviewSource.PDF)
        why = _why_no_image(ordered, walk)
        if not self.cards:
            raise StudyRejected(f"{why}; study cards are off (SYNC_STUDY_CARDS)")
        every = tuple(dict.fromkeys(s.modality.strip() for s in ordered if s.modality.strip()))
        data = card.study_card(every, study.study_date, study.description, why)
        shown = Preview(data, "image/jpeg", IMAGE_NAME)
        first = ordered[0].instance_ids[0] if ordered and ordered[0].instance_ids else ""
        return Representative(first, every, shown, PreviewSource.CARD, why)

    def _in_series(
        self, series: Series, modalities: Sequence[str], walk: _Walk
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
            chosen = self._image(instance.orthanc_id, tags, walk)
            if chosen is not None:
                file, source, note = chosen
                rep = Representative(instance.orthanc_id, tuple(modalities), file, source, note)
                return rep, None
            if walk.local_tries <= 0:
                return None, None  # nothing shown by this series' first instances
        return None, None

    def _image(
        self, instance_id: str, tags: InstanceTags, walk: _Walk
    ) -> tuple[Preview, PreviewSource, str] | None:
        best = _Candidate()
        note = ""
        if not selection.plausible_size(tags):
            note = f"{tags.columns} x {tags.rows} pixels: not handed to Orthanc's decoders"
        elif self.may_render(instance_id):
            try:
                shown = self._by_orthanc(instance_id, tags, best)
            except OrthancUnsupported:
                shown = None
                note = "Orthanc cannot decode it"
            if isinstance(shown, Preview):
                return shown, PreviewSource.ORTHANC_WINDOW, ""
            if shown:
                return self._fit(best.image), best.source, ""
        else:
            note = "Orthanc stopped answering when it rendered it before"
        if walk.local_tries > 0:
            walk.local_tries -= 1
            try:
                data = self.orthanc.file(instance_id, MAX_FILE_BYTES)
                local = self.decode(data)
            except (SandboxFailed, OrthancError) as exc:
                walk.failures.append(f"instance {instance_id}: {exc}")
            else:
                if best.offer(local, PreviewSource.LOCAL_DECODE):
                    why = note or "Orthanc's rendering showed nothing"
                    return self._fit(local), PreviewSource.LOCAL_DECODE, why
        if best.image is not None and best.spread >= measure.BLANK_SPREAD:
            # Dim everywhere, but not empty: stretched, it shows what there is.
            stretched = ImageOps.autocontrast(best.image.convert("RGB"), cutoff=1)
            return self._fit(stretched), best.source, "low contrast everywhere; stretched"
        if best.image is not None:
            walk.failures.append(f"instance {instance_id}: every rendering is blank")
        return None

    def _by_orthanc(self, instance_id: str, tags: InstanceTags, best: _Candidate) -> Preview | bool:
        """Orthanc's window, then its full range. A Preview when Orthanc's JPEG can go as it
        is; True when `best` holds a picture that shows something; False otherwise."""
        if selection.has_window(tags):
            largest = max(tags.rows or 0, tags.columns or 0)
            # Orthanc enlarges small images to the bound it is given: only bound large ones.
            bound = self.max_side if largest > self.max_side else None
            data = self.orthanc.rendered(instance_id, bound)
            if preview.ready_as_is(data, self.max_side, self.max_bytes):
                return Preview(data, "image/jpeg", IMAGE_NAME)
            if best.offer(preview.open_image(data), PreviewSource.ORTHANC_WINDOW):
                return True
        image = preview.open_image(self.orthanc.preview(instance_id))
        return best.offer(image, PreviewSource.ORTHANC_FULL_RANGE)

    def _fit(self, image: Image.Image | None) -> Preview:
        assert image is not None  # callers only fit a picture they hold
        data = preview.fit_jpeg(image, self.max_side, self.max_bytes)
        return Preview(data, "image/jpeg", IMAGE_NAME)


def _why_no_image(ordered: Sequence[Series], walk: _Walk) -> str:
    images = [s for s in ordered if selection.series_may_hold_images(s)]
    if not ordered:
        return "the study holds no series"
    if walk.failures:
        return "no image could be made: " + walk.failures[0]
    if not images:
        kinds = ", ".join(dict.fromkeys(s.modality.strip() or "?" for s in ordered))
        return f"no image series (only {kinds})"
    return "no series holds an image (reports, segmentations or other objects only)"
