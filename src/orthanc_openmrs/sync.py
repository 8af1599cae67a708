"""One study: fetch -> decide -> act. Returns a StudyResult; the caller records it.

Exactly once rests on one rule: before uploading, look in OpenMRS for an attachment of this
patient whose caption names the study. A lost state database, a crash after the upload, or a
response lost on the way back all end in "already there" instead of a duplicate.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from orthanc_openmrs import caption as captions
from orthanc_openmrs import matching, preview, selection
from orthanc_openmrs.config import PatientLookup, Settings, Viewer
from orthanc_openmrs.errors import (
    CredentialsRefused,
    OrthancNotFound,
    OrthancUnsupported,
    ServerError,
    StudyRejected,
    UploadOutcomeUnknown,
)
from orthanc_openmrs.models import (
    InstanceKind,
    InstanceTags,
    OpenMRSPatient,
    Outcome,
    Preview,
    Series,
    Study,
    StudyResult,
)
from orthanc_openmrs.openmrs import OpenMRSClient
from orthanc_openmrs.orthanc import OrthancClient


@dataclass(frozen=True)
class SyncOptions:
    public_url: str
    viewer: Viewer
    viewer_template: str
    patient_tags: tuple[str, ...]
    identifier_types: frozenset[str]
    lookup: PatientLookup
    max_side: int
    max_bytes: int
    dry_run: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, *, dry_run: bool = False) -> SyncOptions:
        return cls(
            public_url=settings.orthanc_public_url,
            viewer=settings.sync_viewer,
            viewer_template=settings.sync_viewer_url,
            patient_tags=settings.patient_tags,
            identifier_types=settings.identifier_types,
            lookup=settings.sync_patient_lookup,
            max_side=settings.sync_preview_max_side,
            max_bytes=settings.sync_preview_max_bytes,
            dry_run=dry_run,
        )


class PatientCache:
    """Identifier search results for the length of one pass (patients registered later show up
    on the next pass). Shared by the workers."""

    def __init__(self, search: Callable[[str], list[OpenMRSPatient]]) -> None:
        self._search = search
        self._hits: dict[str, list[OpenMRSPatient]] = {}
        self._lock = threading.Lock()

    def lookup(self, identifier: str) -> list[OpenMRSPatient]:
        with self._lock:
            if identifier in self._hits:
                return self._hits[identifier]
        hits = self._search(identifier)
        with self._lock:
            self._hits[identifier] = hits
        return hits


@dataclass(frozen=True)
class Representative:
    instance_id: str
    modalities: tuple[str, ...]
    file: Preview


# Ozone's service names its uploads this way; O3 users look for it in the Attachments tab.
IMAGE_NAME = "radiology-image.jpg"
PDF_NAME = "radiology-report.pdf"


class StudySync:
    def __init__(
        self,
        orthanc: OrthancClient,
        openmrs: OpenMRSClient,
        options: SyncOptions,
        patients: PatientCache | None = None,
    ) -> None:
        self.orthanc = orthanc
        self.openmrs = openmrs
        self.options = options
        search = (
            openmrs.find_patients_fhir
            if options.lookup is PatientLookup.FHIR
            else openmrs.find_patients_rest
        )
        self.patients = patients or PatientCache(search)

    def sync(self, orthanc_id: str) -> StudyResult:
        """One attempt at one study. Credential refusals propagate: they stop the whole pass."""
        try:
            study = self.orthanc.study(orthanc_id)
        except OrthancNotFound:
            return StudyResult(orthanc_id, Outcome.GONE, "the study is no longer in Orthanc", False)
        except CredentialsRefused:
            raise
        except ServerError as exc:
            return StudyResult(orthanc_id, Outcome.FAILED, exc.message, exc.retryable)
        try:
            return self._sync_study(study)
        except CredentialsRefused:
            raise
        except OrthancNotFound:
            return self._result(
                study, Outcome.GONE, "the study was deleted while syncing", retryable=False
            )
        except StudyRejected as exc:
            return self._result(study, Outcome.FAILED, exc.message, retryable=False)
        except ServerError as exc:
            return self._result(study, Outcome.FAILED, exc.message, retryable=exc.retryable)

    def _result(
        self,
        study: Study,
        outcome: Outcome,
        reason: str,
        retryable: bool = True,
        **fields: str | tuple[str, ...],
    ) -> StudyResult:
        return StudyResult(
            orthanc_id=study.orthanc_id,
            outcome=outcome,
            reason=reason,
            retryable=retryable,
            study_uid=study.study_uid,
            dicom_patient_id=study.patient_id,
            last_update=study.last_update,
            **fields,  # type: ignore[arg-type]
        )

    def _sync_study(self, study: Study) -> StudyResult:
        if not study.is_stable:
            return self._result(study, Outcome.NOT_STABLE, "Orthanc is still receiving the study")
        if not captions.is_valid_uid(study.study_uid):
            return self._result(
                study,
                Outcome.FAILED,
                f"invalid StudyInstanceUID {study.study_uid!r}: a link to it could open another "
                "study",
                retryable=False,
            )
        candidates = matching.candidate_ids(study.patient_tags, self.options.patient_tags)
        hits = {c: self.patients.lookup(c) for c in candidates}
        decision = matching.decide(candidates, hits, self.options.identifier_types)
        if decision.kind is matching.MatchKind.UNMATCHED:
            return self._result(study, Outcome.UNMATCHED, decision.reason, candidates=candidates)
        if decision.kind is matching.MatchKind.AMBIGUOUS:
            return self._result(study, Outcome.AMBIGUOUS, decision.reason, candidates=candidates)
        patient = decision.patient_uuid
        existing = self._existing(patient, study)
        if existing:
            return self._result(
                study,
                Outcome.ALREADY_THERE,
                "OpenMRS already holds this study's attachment",
                patient_uuid=patient,
                attachment_uuid=existing,
                candidates=candidates,
            )
        series = selection.order_series(self.orthanc.study_series(study.orthanc_id))
        chosen = self._representative(series)
        if chosen is None:
            return self._result(
                study,
                Outcome.FAILED,
                "no series holds an image Orthanc can render, nor a PDF",
                retryable=False,
                patient_uuid=patient,
                candidates=candidates,
            )
        link = captions.viewer_link(
            self.options.viewer,
            self.options.viewer_template,
            self.options.public_url,
            study.study_uid,
            study.orthanc_id,
        )
        text = captions.build_caption(link, chosen.modalities, study.study_date, study.description)
        if text is None:
            return self._result(
                study,
                Outcome.FAILED,
                f"the viewer link alone is over 255 characters: {link}",
                retryable=False,
                patient_uuid=patient,
            )
        done = self._result(
            study,
            Outcome.SYNCED,
            "attached",
            patient_uuid=patient,
            instance_id=chosen.instance_id,
            caption=text,
            candidates=candidates,
        )
        if self.options.dry_run:
            return replace(done, reason="dry run: would attach")
        return self._upload(study, chosen.file, done)

    def _existing(self, patient: str, study: Study) -> str:
        for attachment in self.openmrs.attachments(patient):
            if captions.refers_to(attachment.comment, study.study_uid, study.orthanc_id):
                return attachment.uuid
        return ""

    def _upload(self, study: Study, file: Preview, done: StudyResult) -> StudyResult:
        try:
            uuid = self.openmrs.upload(done.patient_uuid, file, done.caption)
        except UploadOutcomeUnknown as exc:
            # The server may have stored it: look before anyone sends it again.
            found = self._existing(done.patient_uuid, study)
            if found:
                reason = f"stored although the answer was lost ({exc.message})"
                return replace(done, reason=reason, attachment_uuid=found)
            return replace(done, outcome=Outcome.FAILED, reason=exc.message, retryable=True)
        return replace(done, attachment_uuid=uuid)

    def _representative(self, ordered: Sequence[Series]) -> Representative | None:
        """First series with an image Orthanc can render; else the first PDF; else None."""
        modalities = tuple(s.modality for s in ordered if selection.series_may_hold_images(s))
        pdf: str | None = None
        for series in ordered:
            if not selection.series_may_hold_images(series) and series.modality != "DOC":
                continue
            instances = selection.order_instances(self.orthanc.series_instances(series.orthanc_id))
            for instance in instances:
                tags = self.orthanc.instance_tags(instance.orthanc_id)
                kind = selection.classify(tags)
                if kind is InstanceKind.PDF:
                    pdf = pdf or instance.orthanc_id
                    break
                if kind is InstanceKind.OTHER:
                    break  # a series holds one kind of object: no image further down either
                try:
                    file = self._image(instance.orthanc_id, tags)
                except OrthancUnsupported:
                    continue  # Orthanc cannot decode this one: the next instance, then series
                return Representative(instance.orthanc_id, modalities, file)
        if pdf:
            data = self.orthanc.pdf(pdf)
            return Representative(pdf, ("DOC",), Preview(data, "application/pdf", PDF_NAME))
        return None

    def _image(self, instance_id: str, tags: InstanceTags) -> Preview:
        image = None
        if selection.has_window(tags):
            largest = max(tags.rows or 0, tags.columns or 0)
            bound = self.options.max_side if largest > self.options.max_side else None
            image = preview.open_image(self.orthanc.rendered(instance_id, bound))
            if preview.is_blank(image):
                image = None  # a window that shows nothing: fall back to the full range
        if image is None:
            image = preview.open_image(self.orthanc.preview(instance_id))
        data = preview.fit_jpeg(image, self.options.max_side, self.options.max_bytes)
        return Preview(data, "image/jpeg", IMAGE_NAME)
