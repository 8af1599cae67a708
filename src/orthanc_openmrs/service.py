"""The loop: find studies (catch-up, then the changes feed), schedule attempts, record results.

Memory stays flat whatever the backlog: the ledger holds the queue, and only a bounded batch of
study IDs is in flight at once.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import structlog

from orthanc_openmrs.caption import is_orthanc_id, is_valid_uid
from orthanc_openmrs.errors import ConfigError, CredentialsRefused, ServerError
from orthanc_openmrs.models import Outcome, StudyResult
from orthanc_openmrs.openmrs import OpenMRSClient
from orthanc_openmrs.orthanc import OrthancClient
from orthanc_openmrs.retry import UNSTABLE_RECHECK, Backoff, plan
from orthanc_openmrs.store import BACKLOG, LIVE, Store
from orthanc_openmrs.sync import PatientCache, StudySync, SyncOptions

log = structlog.get_logger("orthanc_openmrs")

CHANGES_PAGE = 1000
STUDIES_PAGE = 1000
_EXAMPLES_KEPT = 50

Clock = Callable[[], float]


@dataclass
class PassSummary:
    """What a pass did: counts by outcome and, for what needs a person, some examples."""

    counts: Counter[Outcome] = field(default_factory=Counter)
    problems: list[StudyResult] = field(default_factory=list)
    discovered: int = 0
    interrupted: str = ""

    def add(self, result: StudyResult) -> None:
        self.counts[result.outcome] += 1
        if result.outcome in (Outcome.UNMATCHED, Outcome.AMBIGUOUS, Outcome.FAILED) and (
            len(self.problems) < _EXAMPLES_KEPT
        ):
            self.problems.append(result)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class ServiceOptions:
    workers: int
    backoff: Backoff
    poll_interval: float


class Service:
    def __init__(
        self,
        orthanc: OrthancClient,
        openmrs: OpenMRSClient,
        store: Store,
        sync_options: SyncOptions,
        options: ServiceOptions,
        *,
        clock: Clock = time.time,
        jitter: Callable[[], float] = random.random,
        on_result: Callable[[StudyResult], None] | None = None,
    ) -> None:
        self.orthanc = orthanc
        self.openmrs = openmrs
        self.store = store
        self.sync_options = sync_options
        self.options = options
        self._clock = clock
        self._jitter = jitter
        self._on_result = on_result

    # -- discovery -------------------------------------------------------------------------
    def discover(self) -> int:
        """Catch up with what Orthanc already holds (first start), then follow its changes."""
        found = 0
        cursor = self.store.cursor()
        if cursor is None:
            # Changes after this mark are followed; everything before is found by the catch-up.
            self.store.advance_cursor(self.orthanc.high_water_mark())
        if not self.store.catchup_done():
            found += self._catch_up()
            self.store.mark_catchup_done()
        found += self._follow_changes()
        return found

    def _catch_up(self) -> int:
        found, offset, now = 0, 0, self._clock()
        while True:
            ids = self.orthanc.study_ids(offset, STUDIES_PAGE)
            if not ids:
                break
            found += self.store.discover(ids, now, priority=BACKLOG, due_at=now)
            offset += len(ids)
        log.info("catchup.done", studies_seen=offset, new=found)
        return found

    def _follow_changes(self) -> int:
        found = 0
        cursor = self.store.cursor() or 0
        while True:
            page = self.orthanc.changes(cursor, CHANGES_PAGE)
            if page.last < cursor:
                # Orthanc's log restarted below our cursor (a new database): look at everything.
                log.warning("changes.reset", cursor=cursor, orthanc_last=page.last)
                self.store.reset_cursor(page.last)
                return found + self._catch_up()
            now = self._clock()
            new = [c.orthanc_id for c in page.changes if c.change_type == "NewStudy"]
            stable = [c.orthanc_id for c in page.changes if c.change_type == "StableStudy"]
            if new:
                found += self.store.discover(new, now, priority=LIVE, due_at=now + UNSTABLE_RECHECK)
            if stable:
                self.store.note_stable(stable, now)
            cursor = max(cursor, page.last)
            self.store.advance_cursor(cursor)
            if page.done or not page.changes:
                return found

    # -- passes ----------------------------------------------------------------------------
    def run_pass(self, stop: threading.Event | None = None) -> PassSummary:
        """Sync every due study once. Credential refusals end the pass at once and propagate."""
        started = self._clock()
        summary = PassSummary()
        summary.discovered = self.discover()
        syncer = self._syncer()
        last_poll = self._clock()
        inflight: dict[Future[StudyResult], str] = {}
        window = self.options.workers * 2
        with ThreadPoolExecutor(self.options.workers, thread_name_prefix="sync") as pool:
            try:
                while not (stop and stop.is_set()):
                    if self._clock() - last_poll >= self.options.poll_interval:
                        summary.discovered += self._follow_changes()
                        last_poll = self._clock()
                    if len(inflight) < window:
                        for orthanc_id in self.store.claim_due(
                            self._clock(),
                            window - len(inflight),
                            exclude=set(inflight.values()),
                            not_tried_since=started,
                        ):
                            inflight[pool.submit(syncer.sync, orthanc_id)] = orthanc_id
                    if not inflight:
                        break
                    done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    for future in done:
                        del inflight[future]
                        self._record(future.result(), summary)
            except BaseException:
                for future in inflight:
                    future.cancel()
                raise
        if stop and stop.is_set():
            summary.interrupted = "stopped"
        return summary

    def sync_now(self, reference: str) -> list[StudyResult]:
        """One study now, by Orthanc ID or StudyInstanceUID, whatever its schedule."""
        if is_orthanc_id(reference):
            ids = [reference]
        elif is_valid_uid(reference):
            ids = self.orthanc.lookup_study_uid(reference)
            if not ids:
                raise ConfigError(f"--study: Orthanc holds no study with UID {reference}")
        else:
            raise ConfigError(f"--study: {reference!r} is neither an Orthanc ID nor a DICOM UID")
        syncer = self._syncer()
        results = []
        for orthanc_id in ids:
            row = self.store.get(orthanc_id)
            self.store.make_due(orthanc_id, self._clock())
            if row is not None and row.attachment_uuid and row.state.value == "synced":
                result = StudyResult(
                    orthanc_id,
                    Outcome.ALREADY_THERE,
                    "already synced",
                    study_uid=row.study_uid,
                    patient_uuid=row.patient_uuid,
                    attachment_uuid=row.attachment_uuid,
                    caption=row.caption,
                    instance_id=row.instance_id,
                )
            else:
                result = syncer.sync(orthanc_id)
            self._record(result, PassSummary())
            results.append(result)
        return results

    def _syncer(self) -> StudySync:
        search = (
            self.openmrs.find_patients_fhir
            if self.sync_options.lookup.value == "fhir"
            else self.openmrs.find_patients_rest
        )
        return StudySync(self.orthanc, self.openmrs, self.sync_options, PatientCache(search))

    def _record(self, result: StudyResult, summary: PassSummary) -> None:
        now = self._clock()
        if self.sync_options.dry_run:
            summary.add(result)
            self.store.record_waiting(result.orthanc_id, now + UNSTABLE_RECHECK, now)
            self._report(result)
            return
        row = self.store.get(result.orthanc_id)
        attempts = (row.attempts if row else 0) + 1
        decision = plan(result, attempts, now, self.options.backoff, self._jitter())
        if result.outcome is Outcome.NOT_STABLE:
            self.store.record_waiting(result.orthanc_id, decision.next_attempt_at or now, now)
        else:
            self.store.record(result, decision.state, now, decision.next_attempt_at)
        summary.add(result)
        self._report(result)

    def _report(self, result: StudyResult) -> None:
        event = "study." + result.outcome.value.replace(" ", "_")
        fields = {
            "orthanc_id": result.orthanc_id,
            "study_uid": result.study_uid,
            "patient_uuid": result.patient_uuid or None,
            "attachment_uuid": result.attachment_uuid or None,
        }
        if result.outcome in (Outcome.SYNCED, Outcome.ALREADY_THERE, Outcome.NOT_STABLE):
            log.info(event, **fields)
        else:
            log.warning(event, reason=result.reason, **fields)
        if self._on_result:
            self._on_result(result)

    # -- long-running ----------------------------------------------------------------------
    def run_forever(self, stop: threading.Event) -> None:
        """Poll, sync what is due, sleep; back off while a server is down; never busy-loop."""
        failures = 0
        while not stop.is_set():
            try:
                self.run_pass(stop)
                failures = 0
                delay = self.options.poll_interval
            except CredentialsRefused:
                raise
            except ServerError as exc:
                failures += 1
                delay = max(
                    self.options.poll_interval,
                    Backoff(self.options.poll_interval, 300.0).delay(failures, self._jitter()),
                )
                log.warning("service.backoff", reason=exc.message, retry_in=round(delay, 1))
            stop.wait(delay)


def check_openmrs(openmrs: OpenMRSClient) -> None:
    """Refused credentials stop everything before the first study (no lockout by retries)."""
    openmrs.check_credentials()
