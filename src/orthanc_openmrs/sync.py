"""One study: fetch -> decide -> act. Returns a StudyResult; the caller records it.

Exactly once rests on one rule: before uploading, look in OpenMRS for an attachment of this
patient whose caption names the study. A lost state database, a crash after the upload, or a
response lost on the way back all end in "already there" instead of a duplicate. A study whose
attachment must change (a late series with a lower number, a corrected patient) gets its new
attachment first and the old one voided after, so the chart never shows none.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from orthanc_openmrs import caption as captions
from orthanc_openmrs import demographics, identities, matching
from orthanc_openmrs.config import PatientLookup, Settings, Viewer
from orthanc_openmrs.demographics import DEFAULT_CHECKS, Check
from orthanc_openmrs.errors import (
    CredentialsRefused,
    OpenMRSError,
    OrthancNotFound,
    ServerError,
    StudyRejected,
    UploadOutcomeUnknown,
)
from orthanc_openmrs.models import (
    OpenMRSPatient,
    Outcome,
    Prior,
    Study,
    StudyResult,
    Voided,
)
from orthanc_openmrs.openmrs import REST_MIN_SEARCH, OpenMRSClient
from orthanc_openmrs.orthanc import OrthancClient
from orthanc_openmrs.pacing import RateLimit
from orthanc_openmrs.representative import Representative, RepresentativeFinder


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
    rate_limit: float = 0.0
    # IssuerOfPatientID -> the one identifier type its identifiers may equal (empty: off)
    issuer_types: Mapping[str, str] = field(default_factory=dict)
    demographic_checks: frozenset[Check] = DEFAULT_CHECKS
    study_cards: bool = True

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
            rate_limit=settings.sync_rate_limit,
            issuer_types=settings.issuer_types,
            demographic_checks=settings.demographic_checks,
            study_cards=settings.sync_study_cards,
        )


class PatientCache:
    """Identifier search results for the length of one pass (patients registered later show up
    on the next pass), shared by the workers. Bounded, least recently used first out, and
    holding only the exact hits, so a backfill of any size keeps memory flat."""

    def __init__(self, search: Callable[[str], list[OpenMRSPatient]], size: int = 4096) -> None:
        self._search = search
        self._size = size
        self._hits: OrderedDict[str, list[OpenMRSPatient]] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, identifier: str) -> list[OpenMRSPatient]:
        with self._lock:
            if identifier in self._hits:
                self._hits.move_to_end(identifier)
                return self._hits[identifier]
        hits = matching.worth_keeping(identifier, self._search(identifier))
        with self._lock:
            self._hits[identifier] = hits
            while len(self._hits) > self._size:
                self._hits.popitem(last=False)
        return hits


class UidLocks:
    """One worker at a time per StudyInstanceUID, so two Orthanc studies of the same UID cannot
    both find no attachment and both upload one. A fixed set of locks, picked by the UID's
    hash: memory stays flat, at the price of rare waits between unrelated studies."""

    def __init__(self, stripes: int = 256) -> None:
        self._locks = [threading.Lock() for _ in range(stripes)]

    def __call__(self, uid: str) -> threading.Lock:
        return self._locks[hash(uid) % len(self._locks)]


class StudySync:
    def __init__(
        self,
        orthanc: OrthancClient,
        openmrs: OpenMRSClient,
        options: SyncOptions,
        patients: PatientCache | None = None,
        rate: RateLimit | None = None,
        uid_locks: UidLocks | None = None,
        may_render: Callable[[str], bool] = lambda _instance: True,
    ) -> None:
        self.orthanc = orthanc
        self.openmrs = openmrs
        self.options = options
        search = (
            openmrs.find_patients_fhir
            if options.lookup is PatientLookup.FHIR
            else self._rest_or_fhir
        )
        self.patients = patients or PatientCache(search)
        self.finder = RepresentativeFinder(
            orthanc,
            options.max_side,
            options.max_bytes,
            cards=options.study_cards,
            may_render=may_render,
        )
        self._uid_lock = uid_locks or UidLocks()
        self.rate = rate or RateLimit(options.rate_limit)

    def _rest_or_fhir(self, identifier: str) -> list[OpenMRSPatient]:
        """The REST search, or FHIR's for an identifier shorter than the REST search takes
        (it answers nothing at all then: "no patient" would not be true)."""
        if len(identifier) >= REST_MIN_SEARCH:
            return self.openmrs.find_patients_rest(identifier)
        try:
            return self.openmrs.find_patients_fhir(identifier)
        except OpenMRSError as exc:
            if exc.status != 404:
                raise
            raise StudyRejected(
                f"the identifier {identifier!r} cannot be looked up: OpenMRS's REST patient "
                f"search refuses queries shorter than {REST_MIN_SEARCH} characters "
                "(minSearchCharacters), and OpenMRS has no FHIR2 module, whose search has no "
                "minimum"
            ) from exc

    def sync(self, orthanc_id: str, prior: Prior | None = None) -> StudyResult:
        """One attempt at one study.

        Refused credentials and unavailable servers propagate: they stop the pass, not the study.
        """
        try:
            study = self.orthanc.study(orthanc_id)
        except OrthancNotFound:
            return StudyResult(orthanc_id, Outcome.GONE, "the study is no longer in Orthanc", False)
        except ServerError as exc:
            if isinstance(exc, CredentialsRefused) or exc.unavailable:
                raise
            return StudyResult(orthanc_id, Outcome.FAILED, exc.message, exc.retryable)
        try:
            with self._uid_lock(study.study_uid):
                result = self._sync_study(study, prior)
            if result.candidates or result.outcome is Outcome.NOT_STABLE:
                return result
            # The ledger keeps every study's identifiers, so that a patient registered, merged
            # or given an identifier in OpenMRS finds the studies it concerns.
            return replace(result, candidates=self._candidates(study))
        except OrthancNotFound:
            return _result(study, Outcome.GONE, "the study was deleted while syncing", False)
        except StudyRejected as exc:
            return _result(study, Outcome.FAILED, exc.message, retryable=False)
        except ServerError as exc:
            if isinstance(exc, CredentialsRefused) or exc.unavailable:
                raise
            return _result(study, Outcome.FAILED, exc.message, retryable=exc.retryable)

    def _sync_study(self, study: Study, prior: Prior | None) -> StudyResult:
        if not study.is_stable:
            return _result(study, Outcome.NOT_STABLE, "Orthanc is still receiving the study")
        if not captions.is_valid_uid(study.study_uid):
            reason = (
                f"invalid StudyInstanceUID {study.study_uid!r}: a link to it could open "
                "another study"
            )
            return _result(study, Outcome.FAILED, reason, retryable=False)
        verdict = self._same_uid(study, prior)
        if verdict.relation is identities.Relation.SUPERSEDED:
            return _result(study, Outcome.SUPERSEDED, verdict.reason, retryable=False)
        if verdict.relation is identities.Relation.CONFLICT and verdict.other is not None:
            both = (
                f"{verdict.other.patient_uuid} (Orthanc study {verdict.other.orthanc_id}, "
                f"PatientID {verdict.other.patient_id!r})",
            )
            return _result(study, Outcome.CONFLICT, verdict.reason, candidate_patients=both)
        patient, unmatched = self._patient(study, prior)
        if unmatched is not None:
            return unmatched
        if prior is not None and prior.synced:
            return self._recheck(study, patient, prior)
        existing = self._attachments_of_study(patient, study)
        if existing:
            return _result(
                study,
                Outcome.ALREADY_THERE,
                "OpenMRS already holds this study's attachment",
                patient_uuid=patient,
                attachment_uuid=existing[0],
            )
        chosen = self._representative(study)
        done = replace(self._planned(study, patient, chosen), created=True)
        if self.options.dry_run:
            return replace(done, reason="dry run: would attach", created=False)
        return self._upload(study, chosen, done)

    # -- steps -----------------------------------------------------------------------------
    def _same_uid(self, study: Study, prior: Prior | None) -> identities.Verdict:
        """How this study stands towards the other Orthanc studies of its UID (identities.py).

        A person's link decides for them. The ledger usually knows the other identities; asking
        Orthanc (`/tools/lookup`) costs it more than all the rest of a study's requests
        together, so it is the fallback."""
        if prior is not None and prior.manual_patient_uuid:
            return identities.Verdict(identities.Relation.PROCEED)
        known = prior.same_uid if prior and prior.study_uid == study.study_uid else None
        others = (
            list(known)
            if known is not None
            else [
                i for i in self.orthanc.lookup_study_uid(study.study_uid) if i != study.orthanc_id
            ]
        )
        present = []
        for other_id in others:
            try:
                present.append(self.orthanc.study(other_id))
            except OrthancNotFound:
                continue  # left Orthanc: the survivor wins, as after a correction
        if not present:
            return identities.Verdict(identities.Relation.PROCEED)
        this = self._identity(study)
        return identities.decide(this, [self._identity(other) for other in present])

    def _identity(self, study: Study) -> identities.Identity:
        return identities.Identity(
            orthanc_id=study.orthanc_id,
            last_update=study.last_update,
            patient_id=study.patient_id,
            patient_uuid=self._matched(study),
            made_from=self.orthanc.modified_from(study.orthanc_id),
        )

    def _matched(self, study: Study) -> str | None:
        """The one OpenMRS patient the study's identifiers match (no demographic check), if
        exactly one."""
        issued = self.orthanc.issued_ids(study.orthanc_id) if self.options.issuer_types else None
        candidates = matching.candidates(
            study.patient_tags,
            self.options.patient_tags,
            self.options.identifier_types,
            self.options.issuer_types,
            issued,
        )
        hits = {value: self.patients.lookup(value) for value in matching.values(candidates)}
        decision = matching.decide(candidates, hits)
        return decision.patient_uuid if decision.kind is matching.MatchKind.MATCHED else None

    def _candidates(self, study: Study) -> tuple[str, ...]:
        return matching.candidate_ids(study.patient_tags, self.options.patient_tags)

    def _patient(self, study: Study, prior: Prior | None) -> tuple[str, StudyResult | None]:
        if prior is not None and prior.manual_patient_uuid:
            return prior.manual_patient_uuid, None  # a person linked it: their decision stands
        # Orthanc does not index the issuers: reading them costs a request, so only when used.
        issued = self.orthanc.issued_ids(study.orthanc_id) if self.options.issuer_types else None
        candidates = matching.candidates(
            study.patient_tags,
            self.options.patient_tags,
            self.options.identifier_types,
            self.options.issuer_types,
            issued,
        )
        values = matching.values(candidates)
        hits = {value: self.patients.lookup(value) for value in values}
        decision = matching.decide(candidates, hits)
        patients = {p.uuid: p for found in hits.values() for p in found}
        if decision.kind is matching.MatchKind.MATCHED:
            uuid = decision.patient_uuid
            if prior is not None and prior.synced and prior.patient_uuid == uuid:
                return uuid, None  # attached before: a recheck does not judge it again
            check = demographics.cross_check(
                study.patient_tags, patients[uuid], self.options.demographic_checks
            )
            if not check.contradicts:
                return uuid, None
            outcome, reason = Outcome.MISMATCH, check.reason
        elif decision.kind is matching.MatchKind.UNMATCHED:
            outcome, reason = Outcome.UNMATCHED, decision.reason
        else:
            outcome, reason = Outcome.AMBIGUOUS, decision.reason
        shown = tuple(
            f"{u} {patients[u].display if u in patients else ''}".strip()
            for u in decision.patient_uuids
        )
        return "", _result(study, outcome, reason, candidates=values, candidate_patients=shown)

    def _attachments_of_study(self, patient: str, study: Study) -> list[str]:
        """This patient's attachments that name the study, newest first."""
        return [
            a.uuid
            for a in self.openmrs.attachments(patient)
            if captions.refers_to(a.comment, study.study_uid, study.orthanc_id)
        ]

    def _representative(self, study: Study) -> Representative:
        return self.finder.find(study)

    def _planned(self, study: Study, patient: str, chosen: Representative) -> StudyResult:
        link = captions.viewer_link(
            self.options.viewer,
            self.options.viewer_template,
            self.options.public_url,
            study.study_uid,
            study.orthanc_id,
        )
        text = captions.build_caption(link, chosen.modalities, study.study_date, study.description)
        if text is None:
            raise StudyRejected(f"the viewer link alone is over 255 characters: {link}")
        how = f"attached ({chosen.source.value}: {chosen.note})" if chosen.note else "attached"
        return _result(
            study,
            Outcome.SYNCED,
            how,
            patient_uuid=patient,
            instance_id=chosen.instance_id,
            caption=text,
            preview_source=chosen.source.value,
        )

    def _upload(self, study: Study, chosen: Representative, done: StudyResult) -> StudyResult:
        self.rate.acquire()
        try:
            uuid = self.openmrs.upload(done.patient_uuid, chosen.file, done.caption)
        except UploadOutcomeUnknown as exc:
            # The server may have stored it: look before anyone sends it again.
            found = self._attachments_of_study(done.patient_uuid, study)
            if found:
                reason = f"stored although the answer was lost ({exc.message})"
                return replace(done, reason=reason, attachment_uuid=found[0])
            return replace(
                done, outcome=Outcome.FAILED, reason=exc.message, retryable=True, created=False
            )
        return replace(done, attachment_uuid=uuid)

    def _recheck(self, study: Study, patient: str, prior: Prior) -> StudyResult:
        """A synced study changed in Orthanc (new series, new patient link): replace its
        attachment only if what it should show, or whose chart, changed."""
        chosen = self._representative(study)
        if patient == prior.patient_uuid and chosen.instance_id == prior.instance_id:
            return _result(
                study,
                Outcome.ALREADY_THERE,
                "unchanged",
                patient_uuid=patient,
                attachment_uuid=prior.attachment_uuid,
                instance_id=prior.instance_id,
            )
        planned = self._planned(study, patient, chosen)
        if self.options.dry_run:
            return replace(planned, outcome=Outcome.REPLACED, reason="dry run: would replace")
        # One made by a replacement that crashed half-way is adopted, not made again; so is
        # the copy a patient merge made on the surviving patient.
        mine = [a for a in self._attachments_of_study(patient, study) if a != prior.attachment_uuid]
        moved = bool(mine) and patient != prior.patient_uuid and not self._still_there(prior)
        if moved:
            reason = f"OpenMRS moved the attachment to patient {patient} (patients merged)"
            return replace(
                planned, outcome=Outcome.REPLACED, reason=reason, attachment_uuid=mine[0]
            )
        if mine:
            fresh = replace(planned, attachment_uuid=mine[0])
        else:
            fresh = self._upload(study, chosen, replace(planned, created=True))
            if fresh.outcome is Outcome.FAILED:
                return fresh
        why = (
            "the study now belongs to another patient"
            if patient != prior.patient_uuid
            else "a series that comes first arrived; the preview changed"
        )
        voided = [Voided(prior.attachment_uuid, prior.patient_uuid, why)]
        voided += [Voided(extra, patient, "duplicate of this study") for extra in mine[1:]]
        for item in voided:
            self.openmrs.void_attachment(item.attachment_uuid)
        return replace(fresh, outcome=Outcome.REPLACED, reason=why, voided=tuple(voided))

    def _still_there(self, prior: Prior) -> bool:
        """Whether the attachment the ledger knows is still live on the patient it was put on
        (a merge voids it there and makes a copy on the surviving patient)."""
        return any(
            a.uuid == prior.attachment_uuid for a in self.openmrs.attachments(prior.patient_uuid)
        )


def _result(
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
        patient_name=study.patient_name,
        birth_date=study.patient_tags.get("PatientBirthDate", ""),
        patient_sex=study.patient_tags.get("PatientSex", ""),
        study_date=study.study_date,
        description=study.description,
        **fields,  # type: ignore[arg-type]
    )
