"""Keeping OpenMRS in step with what Orthanc really holds: the reconciliation sweep, deleted
studies, one attachment per StudyInstanceUID, voiding, and the audit trail of every change."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import structlog

from orthanc_openmrs.errors import CredentialsRefused, OrthancNotFound, ServerError
from orthanc_openmrs.models import Outcome, State, StudyResult
from orthanc_openmrs.openmrs import OpenMRSClient
from orthanc_openmrs.orthanc import OrthancClient
from orthanc_openmrs.store import RENEW_EVERY, AuditRow, Store, StudyRow

log = structlog.get_logger("orthanc_openmrs")

# Ten FHIR requests a sweep: with the default sweep every 10 minutes, 144,000 patient checks a
# day at about one request a minute.
PATIENTS_CHECKED_PER_SWEEP = 1000
# The name of the sweep's lease: one process at a time sweeps a ledger. Two at once would each
# take the studies only the other had marked seen for gone (and look them up in Orthanc).
SWEEP = "sweep"


@dataclass(frozen=True)
class SweepSummary:
    seen: int
    new: int
    deleted: int
    voided: int


class Upkeep:
    def __init__(
        self,
        orthanc: OrthancClient,
        openmrs: OpenMRSClient,
        store: Store,
        *,
        clock: Callable[[], float],
        keep_deleted: bool,
    ) -> None:
        self.orthanc = orthanc
        self.openmrs = openmrs
        self.store = store
        self._clock = clock
        self.keep_deleted = keep_deleted
        self._renewed = 0.0  # when this process last renewed the sweep's lease

    def audit(
        self, study: tuple[str, str], action: str, attachment: str, patient: str, reason: str
    ) -> None:
        """One change made in OpenMRS, or a person's decision, for `orthanc-openmrs audit`.

        `study` is (Orthanc ID, StudyInstanceUID)."""
        orthanc_id, study_uid = study
        self.store.add_audit(
            AuditRow(
                self._clock(),
                orthanc_id,
                study_uid,
                action,
                patient,
                attachment,
                reason,
            )
        )

    def supersede_others(self, result: StudyResult) -> None:
        """One StudyInstanceUID, one attachment: older Orthanc identities of the same study (a
        corrected PatientID) give up theirs, voided when it sits on another chart."""
        for other in self.store.synced_with_uid(result.study_uid, besides=result.orthanc_id):
            reason = f"superseded by Orthanc study {result.orthanc_id}"
            voided = bool(other.attachment_uuid) and other.attachment_uuid != result.attachment_uuid
            if voided:
                why = f"the study now belongs to patient {result.patient_uuid}"
                self.void(other.attachment_uuid, other.patient_uuid)
                self.audit(
                    (other.orthanc_id, other.study_uid),
                    "void",
                    other.attachment_uuid,
                    other.patient_uuid,
                    why,
                )
            self.store.set_state(
                other.orthanc_id, State.SUPERSEDED, reason, self._clock(), voided=voided
            )
            log.info(
                "study.superseded",
                orthanc_id=other.orthanc_id,
                study_uid=other.study_uid,
                by=result.orthanc_id,
            )

    def void(self, attachment_uuid: str, patient_uuid: str) -> None:
        try:
            self.openmrs.void_attachment(attachment_uuid)
        except ServerError as exc:
            # An attachment someone already purged gives a 500 too: gone is what we wanted.
            if exc.status != 500 or any(
                a.uuid == attachment_uuid for a in self.openmrs.attachments(patient_uuid)
            ):
                raise

    # -- reconciliation --------------------------------------------------------------------
    def reconcile(self) -> SweepSummary | None:
        """One sweep of Orthanc's study list against the ledger: finds studies the changes feed
        missed, studies waiting for a StableStudy that will never come, and deleted studies
        (their attachments are voided unless SYNC_KEEP_DELETED). One request per 1000 studies,
        plus one per study that has disappeared and one per study whose UID the ledger lacks.

        None when another process sharing the ledger is sweeping, or took the sweep over
        because this one stalled longer than a lease: then this one changes nothing more."""
        if not self.store.claim_task(SWEEP, self._clock()):
            # Debug: `run` asks every poll and a waiting `reconcile` twice a second.
            log.debug("reconcile.skipped", reason="another process is sweeping the ledger")
            return None
        self._renewed = self._clock()
        try:
            summary = self._sweep()
        finally:
            self.store.release_task(SWEEP)
        if summary is None:
            log.warning("reconcile.abandoned", reason="the sweep's lease was taken over")
        return summary

    def _sweep(self) -> SweepSummary | None:
        sweep = self.store.begin_sweep()
        seen = new = 0
        for ids in self.orthanc.study_id_pages():
            if not self._still_sweeping():
                return None
            uids = self.orthanc.study_uids(self.store.without_uid(ids))
            new += self.store.mark_seen(ids, sweep, self._clock(), uids)
            seen += len(ids)
        deleted = voided = 0
        for unseen in self.store.unseen(sweep):
            if not self._still_sweeping():
                return None
            with self._holding(unseen.orthanc_id) as row:
                # Read again under the lease: another process may have recorded it meanwhile.
                if row is not None and row.state not in (State.GONE, State.SUPERSEDED):
                    gone, void = self.forget_if_deleted(row)
                    deleted += gone
                    voided += void
        for uid in self.store.uids_synced_twice():
            with self._holding(self.store.synced_with_uid(uid)[0].orthanc_id) as newest:
                if newest is not None and newest.state is State.SYNCED:
                    self.supersede_others(
                        StudyResult(
                            newest.orthanc_id,
                            Outcome.SYNCED,
                            study_uid=uid,
                            patient_uuid=newest.patient_uuid,
                            attachment_uuid=newest.attachment_uuid,
                        )
                    )
        rechecked = self.check_patients()
        self.store.finish_sweep(self._clock())
        summary = SweepSummary(seen=seen, new=new, deleted=deleted, voided=voided)
        log.info(
            "reconcile.done",
            seen=seen,
            new=new,
            deleted=deleted,
            voided=voided,
            rechecked=rechecked,
        )
        return summary

    def check_patients(self) -> int:
        """The safety net for patient merges and voided duplicates, which OpenMRS's change times
        do not show: each sweep asks whether a slice of the patients holding synced studies, or
        named by ambiguous ones, are still live (one request per 100). The studies of a voided
        one are looked at again: a synced one finds the attachment the merge moved to the
        surviving patient and the ledger follows; an ambiguous one may now have one patient.
        Returns how many studies were rechecked."""
        after = self.store.patient_check_mark()
        patients = self.store.patients_to_check(after, PATIENTS_CHECKED_PER_SWEEP)
        try:
            live = self.openmrs.live_patients(patients) if patients else set()
        except ServerError as exc:
            if isinstance(exc, CredentialsRefused) or exc.unavailable:
                raise
            log.warning("patients.check_failed", reason=exc.message)
            return 0
        gone = [p for p in patients if p not in live]
        rechecked = self.store.recheck_studies_of(gone, self._clock()) if gone else 0
        # A short slice means the end was reached: start again from the first patient.
        full = len(patients) == PATIENTS_CHECKED_PER_SWEEP
        self.store.set_patient_check_mark(patients[-1] if full else "")
        if gone:
            log.info("patients.voided", patients=len(gone), studies_rechecked=rechecked)
        return rechecked

    def _still_sweeping(self) -> bool:
        """Renew the sweep's lease now and then; False once another process holds it."""
        now = self._clock()
        if now - self._renewed < RENEW_EVERY:
            return True
        self._renewed = now
        return self.store.claim_task(SWEEP, now)

    @contextmanager
    def _holding(self, orthanc_id: str) -> Iterator[StudyRow | None]:
        """The study's row as it is once leased to this process (and with it every identity of
        its UID); None, and nothing to do, while another process works it: the next sweep
        looks again."""
        if self.store.claim_study(orthanc_id, self._clock()) is not None:
            yield None
            return
        try:
            yield self.store.get(orthanc_id)
        finally:
            self.store.release([orthanc_id])

    def forget_if_deleted(self, row: StudyRow) -> tuple[int, int]:
        """If Orthanc no longer has the study: gone, its attachment voided (unless kept).
        Returns (deleted, voided) as 0/1 counts."""
        try:
            self.orthanc.study(row.orthanc_id)
        except OrthancNotFound:
            pass
        else:
            return 0, 0  # added after the sweep listed its page
        voided = 0
        reason = "deleted from Orthanc"
        if row.attachment_uuid and not self.keep_deleted:
            self.void(row.attachment_uuid, row.patient_uuid)
            self.audit(
                (row.orthanc_id, row.study_uid),
                "void",
                row.attachment_uuid,
                row.patient_uuid,
                reason,
            )
            voided = 1
        elif row.attachment_uuid:
            reason += "; its attachment is kept (SYNC_KEEP_DELETED)"
        self.store.set_state(row.orthanc_id, State.GONE, reason, self._clock(), voided=bool(voided))
        log.info(
            "study.deleted", orthanc_id=row.orthanc_id, study_uid=row.study_uid, voided=bool(voided)
        )
        return 1, voided
