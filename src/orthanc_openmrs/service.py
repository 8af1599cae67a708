"""The loop: find studies (catch-up, then the changes feed), schedule attempts, record results,
and reconcile the ledger with what Orthanc really holds.

Memory stays flat whatever the backlog: the ledger holds the queue, and only a bounded batch of
study IDs is in flight at once.

Several processes may share the ledger (`run` twice, a `sync` or `retry` beside `run`): every
study is worked under a lease in the ledger (see store), which the pass renews while the study
is in flight, and a person's command waits a while for another process's lease, then refuses.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace

import structlog

from orthanc_openmrs import patient_watch as watch
from orthanc_openmrs.caption import is_orthanc_id, is_valid_uid
from orthanc_openmrs.errors import (
    ConfigError,
    CredentialsRefused,
    LeaseHeld,
    RenderCrashed,
    ServerError,
    StoreError,
)
from orthanc_openmrs.logs import public_reason
from orthanc_openmrs.models import Outcome, Prior, State, StudyResult
from orthanc_openmrs.monitor import Monitor, ready_window
from orthanc_openmrs.openmrs import OpenMRSClient
from orthanc_openmrs.orthanc import OrthancClient
from orthanc_openmrs.pacing import RateLimit
from orthanc_openmrs.progress import Progress
from orthanc_openmrs.retry import UNSTABLE_RECHECK, Backoff, plan
from orthanc_openmrs.store import BACKLOG, LIVE, RENEW_EVERY, AuditRow, Lease, Store, StudyRow
from orthanc_openmrs.sync import StudySync, SyncOptions, UidLocks
from orthanc_openmrs.upkeep import SweepSummary, Upkeep

log = structlog.get_logger("orthanc_openmrs")

CHANGES_PAGE = 1000
# The shared work of following Orthanc's changes (and OpenMRS's patient changes), done by one
# process at a time among those sharing the ledger.
FEED = "changes feed"
_EXAMPLES_KEPT = 50
_PLANNED_KEPT = 500
_PROBLEMS = (
    Outcome.UNMATCHED,
    Outcome.AMBIGUOUS,
    Outcome.MISMATCH,
    Outcome.CONFLICT,
    Outcome.FAILED,
)
# How long a person's command waits for another process to finish with a study: one attempt,
# queued behind a batch of others, takes seconds; a lease left by a killed process, longer.
LEASE_WAIT = 30.0
_LEASE_POLL = 0.5

Clock = Callable[[], float]
InFlight = dict[Future[StudyResult], tuple[StudyRow, Prior]]


@dataclass
class PassSummary:
    """What a pass did: counts by outcome and, for what needs a person, some examples."""

    counts: Counter[Outcome] = field(default_factory=Counter)
    problems: list[StudyResult] = field(default_factory=list)
    planned: list[StudyResult] = field(default_factory=list)  # what a dry run would attach
    discovered: int = 0
    interrupted: str = ""

    def add(self, result: StudyResult, *, dry_run: bool = False) -> None:
        self.counts[result.outcome] += 1
        if result.outcome in _PROBLEMS and len(self.problems) < _EXAMPLES_KEPT:
            self.problems.append(result)
        if dry_run and result.caption and len(self.planned) < _PLANNED_KEPT:
            self.planned.append(result)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class ServiceOptions:
    workers: int
    backoff: Backoff
    poll_interval: float
    reconcile_interval: float = 600.0
    keep_deleted: bool = False


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
        progress: Progress | None = None,
        lease_wait: float = LEASE_WAIT,
        renew_every: float = RENEW_EVERY,
        monitor: Monitor | None = None,
    ) -> None:
        self.orthanc = orthanc
        self.openmrs = openmrs
        self.store = store
        self.sync_options = sync_options
        self.options = options
        self._clock = clock
        self._jitter = jitter
        self.progress = progress
        self.lease_wait = lease_wait
        self.renew_every = renew_every
        self.monitor = monitor or Monitor(grace=options.poll_interval, clock=clock)
        self.upkeep = Upkeep(
            orthanc, openmrs, store, clock=clock, keep_deleted=options.keep_deleted
        )
        self._pool: ThreadPoolExecutor | None = None
        self._feed_held = False
        self._patients_followed = True
        # Shared by every pass, so the rate limit and the one-worker-per-UID rule hold across
        # passes in `run`.
        self._uid_locks = UidLocks()
        self._rate = RateLimit(sync_options.rate_limit)
        # Instances Orthanc crashed on, read by the workers; replaced whole, never mutated.
        self._not_to_render = store.not_to_render()

    # -- discovery -------------------------------------------------------------------------
    def discover(self) -> int:
        """Catch up with what Orthanc already holds (first start), then follow its changes;
        nothing while another process sharing the ledger follows them."""
        if not self._follows_feed():
            return 0
        found = 0
        if self.store.cursor() is None:
            # Changes after this mark are followed; everything before is found by the catch-up.
            self.store.advance_cursor(self.orthanc.high_water_mark())
        if not self.store.catchup_done():
            found += self._catch_up()
            self.store.mark_catchup_done()
        found += self._follow_changes()
        self._follow_patients()
        return found

    def _catch_up(self) -> int:
        found = seen = 0
        now = self._clock()
        for page in self.orthanc.studies_with_uids():
            found += self.store.discover(list(page), now, priority=BACKLOG, due_at=now, uids=page)
            seen += len(page)
            self.monitor.beat()
        log.info("catchup.done", studies_seen=seen, new=found)
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
            new = [c.orthanc_id for c in page.changes if c.change_type == "NewStudy"]
            stable = [c.orthanc_id for c in page.changes if c.change_type == "StableStudy"]
            # Every study enters the ledger with its UID, so that the ledger alone can tell
            # whether a UID lives under several Orthanc identities.
            uids = self.orthanc.study_uids(
                self.store.without_uid(list(dict.fromkeys(new + stable)))
            )
            now = self._clock()
            if new:
                found += self.store.discover(
                    new, now, priority=LIVE, due_at=now + UNSTABLE_RECHECK, uids=uids
                )
            if stable:
                self.store.note_stable(stable, now, uids)
                self.monitor.stable_seen(stable)
            cursor = max(cursor, page.last)
            self.store.advance_cursor(cursor)
            self.monitor.changes_seen(page.last)
            if page.done or not page.changes:
                return found

    def _follow_patients(self) -> int:
        """Ask OpenMRS which patients changed since the last poll, and make due at once the
        studies waiting for one of their identifiers. One request per poll while few patients
        change, however many studies wait; the studies' own retry delays remain the safety net
        for what this cannot see (a server without FHIR2; see docs/openmrs-patient-changes.md).
        Returns how many studies were woken."""
        if self.sync_options.dry_run or not self._patients_followed:
            return 0
        stored = self.store.patient_watermark()
        mark = watch.Watermark.decode(stored) if stored else watch.first_watermark(self._clock())
        try:
            answer = self.openmrs.patients_changed(mark.at)
        except ServerError as exc:
            if isinstance(exc, CredentialsRefused) or exc.unavailable:
                raise
            if exc.status in (403, 404):  # no FHIR2, or no right to it: retry delays remain
                self._patients_followed = False
                log.warning("patients.unfollowed", reason=exc.message)
                return 0
            log.warning("patients.poll_failed", reason=exc.message)
            return 0
        step = watch.advance(mark, answer)
        woken = self.store.wake_for_patients(step.fresh, self._clock()) if step.fresh else 0
        if step.watermark != mark or stored is None:
            self.store.set_patient_watermark(step.watermark.encode())
        if step.fresh:
            log.info("patients.changed", patients=len(step.fresh), studies_woken=woken)
        return woken

    # -- passes ----------------------------------------------------------------------------
    def run_pass(self, stop: threading.Event | None = None) -> PassSummary:
        """Sync every due study once.

        Refused credentials and an unavailable server end the pass at once and propagate; the
        studies not yet done stay due, charged with nothing. A stop lets the attempts already
        running finish and be recorded.
        """
        started = self._clock()
        summary = PassSummary()
        summary.discovered = self.discover()
        if self.progress:
            self.progress.add_total(self.store.count_due(self._clock()))
        syncer = self._syncer()
        last_poll = renewed = self._clock()
        inflight: InFlight = {}
        pool = self._executor()
        try:
            while True:
                if stop is not None and stop.is_set():
                    self._cancel_queued(inflight)
                else:
                    if self._clock() - last_poll >= self.options.poll_interval:
                        self._poll(summary)  # new studies go before the backlog
                        last_poll = self._clock()
                    if len(inflight) <= self.options.workers:  # refill in batches, not one by one
                        for row, prior in self._claim(inflight, started):
                            inflight[pool.submit(syncer.sync, row.orthanc_id, prior)] = (row, prior)
                if not inflight:
                    break
                # Wake up to renew the leases even while every attempt is still running.
                timeout = max(0.0, renewed + self.renew_every - self._clock())
                done, _ = wait(inflight, timeout=timeout, return_when=FIRST_COMPLETED)
                if done:
                    self._record_done([(f, *inflight.pop(f)) for f in done], summary)
                if self._clock() - renewed >= self.renew_every:
                    self._renew(inflight)
                    renewed = self._clock()
        except BaseException:
            # Let the studies already in flight finish before anything else may pick them,
            # and keep what they did (an upload, a crash charged to an instance).
            for future in inflight:
                future.cancel()
            wait(inflight)
            finished = [(f, *inflight[f]) for f in inflight if not f.cancelled()]
            with contextlib.suppress(Exception):  # their own failure adds nothing to this one
                self._record_done(finished, summary)
            with contextlib.suppress(StoreError):  # unreleased leases run out by themselves
                self.store.release(row.orthanc_id for row, _ in inflight.values())
            raise
        if stop and stop.is_set():
            summary.interrupted = "stopped"
        return summary

    def _follows_feed(self) -> bool:
        """Take, keep or (another process has it) leave the feed; says when that changes, so
        the log tells which process follows it and when another took over."""
        held = self.store.claim_task(FEED, self._clock())
        if held != self._feed_held:
            self._feed_held = held
            if held:
                log.info("feed.following", owner=self.store.owner)
            else:
                log.info("feed.left", reason="another process sharing the ledger follows it")
        return held

    def _poll(self, summary: PassSummary) -> None:
        if not self._follows_feed():
            return
        found = self._follow_changes()
        self._follow_patients()
        summary.discovered += found
        if self.progress:
            self.progress.add_total(found)

    def _claim(self, inflight: InFlight, started: float) -> list[tuple[StudyRow, Prior]]:
        """The next batch of due studies, leased to this process, with what the ledger knows of
        their other Orthanc identities."""
        rows = self.store.claim_due(
            self._clock(),
            self.options.workers * 2 - len(inflight),
            exclude={row.orthanc_id for row, _ in inflight.values()},
            not_tried_since=started,
        )
        try:
            rows = self._read_missing_uids(rows)
            same_uid = self.store.same_uid(rows)
        except BaseException:
            with contextlib.suppress(StoreError):
                self.store.release(row.orthanc_id for row in rows)
            raise
        return [(row, replace(row.prior, same_uid=same_uid[row.orthanc_id])) for row in rows]

    def _read_missing_uids(self, rows: list[StudyRow]) -> list[StudyRow]:
        """A study the ledger held without its StudyInstanceUID (an older ledger, a study
        named by a person) is claimed before anyone knows which other studies share its UID:
        read it now, before any work, and give the study back if another process is working
        that UID under another Orthanc identity. One that Orthanc cannot name is worked as it
        is: its attempt reads the study first and, mostly, finds it gone."""
        unread = [row.orthanc_id for row in rows if not row.study_uid]
        if not unread:
            return rows
        uids = self.orthanc.study_uids(unread)
        given_back = self.store.learn_claimed_uids(uids, self._clock())
        return [
            replace(row, study_uid=uids.get(row.orthanc_id, row.study_uid))
            for row in rows
            if row.orthanc_id not in given_back
        ]

    def _cancel_queued(self, inflight: InFlight) -> None:
        """On a stop: attempts not started yet are dropped and their leases given up; the
        running ones are waited for, so no lease ends while its upload may still happen."""
        cancelled = [future for future in inflight if future.cancel()]
        if cancelled:
            self.store.release(inflight.pop(future)[0].orthanc_id for future in cancelled)

    def _renew(self, inflight: InFlight) -> None:
        ids = [row.orthanc_id for row, _ in inflight.values()]
        held = self.store.renew_leases(ids, self._clock()) if ids else 0
        if held < len(ids):
            # Only when this process was stuck longer than a lease: another may have taken
            # some of these studies over; the look before upload still guards each of them.
            log.warning("lease.lost", in_flight=len(ids), still_held=held)

    def _executor(self) -> ThreadPoolExecutor:
        """The workers live as long as the service: each keeps its own HTTP connections."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.options.workers, thread_name_prefix="sync")
        return self._pool

    def close(self) -> None:
        if self._feed_held:
            # Another process may follow the feed at once, not after a lease.
            with contextlib.suppress(StoreError):
                self.store.release_task(FEED)
            self._feed_held = False
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _syncer(self) -> StudySync:
        """A syncer for one pass: its patient cache starts empty, its limits are the service's."""
        return StudySync(
            self.orthanc,
            self.openmrs,
            self.sync_options,
            rate=self._rate,
            uid_locks=self._uid_locks,
            may_render=lambda instance_id: instance_id not in self._not_to_render,
        )

    # -- recording -------------------------------------------------------------------------
    def _record_done(
        self, done: list[tuple[Future[StudyResult], StudyRow, Prior]], summary: PassSummary
    ) -> None:
        """Record the attempts that finished together in one transaction; an attempt that
        ended the pass (credentials, outage) is raised once the others are recorded."""
        failure: BaseException | None = None
        with self.store.batch():
            # In the ledger's order, as discovery and the sweep write theirs: two such
            # transactions of different processes take their row locks in one order and cannot
            # deadlock each other (a single UPDATE over many rows, as a patient wake-up, can
            # still meet one; PostgreSQL then ends one transaction with an error).
            for future, claimed, prior in sorted(done, key=lambda d: d[1].orthanc_id):
                try:
                    result = future.result()
                except RenderCrashed as exc:
                    self._charge(exc, claimed.orthanc_id)
                    failure = failure or exc
                    self.store.release([claimed.orthanc_id])  # tried again by any process
                    continue
                except BaseException as exc:
                    failure = failure or exc
                    self.store.release([claimed.orthanc_id])
                    continue
                self._record(result, summary, claimed, prior)
        if failure is not None:
            raise failure

    def _record(
        self,
        result: StudyResult,
        summary: PassSummary,
        claimed: StudyRow | None = None,
        prior: Prior | None = None,
    ) -> None:
        """Record one attempt: one transaction, plus one look-up when the study is synced and
        the ledger did not know it alone with its UID.

        The workers wait on this thread, so it reads nothing it was already handed (`claimed`).
        """
        now = self._clock()
        summary.add(result, dry_run=self.sync_options.dry_run)
        if self.sync_options.dry_run:
            self.store.touch(result.orthanc_id, now)  # once per pass, even in a dry run
            self._report(result)
            return
        row = claimed if claimed is not None else self.store.get(result.orthanc_id)
        if result.outcome is Outcome.GONE and row is not None and row.prior.synced:
            # A synced study deleted from Orthanc: its attachment must go too, as in a sweep.
            self.upkeep.forget_if_deleted(row)
            self.store.release([result.orthanc_id])  # still there after all: nothing recorded
            self._report(result)
            return
        attempts = (row.attempts if row else 0) + 1
        decision = plan(result, attempts, now, self.options.backoff, self._jitter())
        if result.outcome is Outcome.NOT_STABLE:
            self.store.record_waiting(
                result.orthanc_id, decision.next_attempt_at or now, now, result.study_uid
            )
        else:
            self.store.record(
                result, decision.state, now, decision.next_attempt_at, _audits(result, now)
            )
        # An identity found after the claim is newer: it supersedes this one when it syncs.
        if decision.state is State.SYNCED and (prior is None or prior.same_uid != ()):
            self.upkeep.supersede_others(result)
        self._report(result)

    def _charge(self, crash: RenderCrashed, orthanc_id: str) -> None:
        """Orthanc went down while rendering an instance: count it against the instance, so
        that its decoders are not handed the same file in a loop."""
        crashes = self.store.charge_render_crash(crash.instance_id, orthanc_id, self._clock())
        self._not_to_render = self.store.not_to_render()
        log.error(
            "orthanc.render_crashed",
            instance_id=crash.instance_id,
            orthanc_id=orthanc_id,
            crashes=crashes,
            rendered_by_orthanc_again=crash.instance_id not in self._not_to_render,
        )

    def _report(self, result: StudyResult) -> None:
        event = "study." + result.outcome.value.replace(" ", "_")
        fields = {
            "orthanc_id": result.orthanc_id,
            "study_uid": result.study_uid,  # shown at DEBUG only (see logs.py)
            "patient_uuid": result.patient_uuid or None,
            "attachment_uuid": result.attachment_uuid or None,
        }
        # The log travels to central stores: its reason names no patient; the ledger's does.
        code, reason = public_reason(result)
        if result.outcome in _PROBLEMS:
            log.warning(event, reason_code=code, reason=reason, **fields)
        else:
            log.info(event, **fields)
        self.monitor.study_done(result)
        if self.progress:
            self.progress(result)

    # -- one study, by a person ------------------------------------------------------------
    def resolve(self, reference: str) -> list[str]:
        """Orthanc IDs for an Orthanc ID or a StudyInstanceUID (the ledger's and Orthanc's)."""
        if is_orthanc_id(reference):
            return [reference]
        if not is_valid_uid(reference):
            raise ConfigError(f"{reference!r} is neither an Orthanc ID nor a StudyInstanceUID")
        ids = [row.orthanc_id for row in self.store.find(reference)]
        ids += [i for i in self.orthanc.lookup_study_uid(reference) if i not in ids]
        if not ids:
            raise ConfigError(
                f"no study with StudyInstanceUID {reference} in Orthanc or the ledger"
            )
        return ids

    def sync_now(self, reference: str, *, reset: bool = False) -> list[StudyResult]:
        """One study now, whatever its schedule; `reset` also brings back an ignored study."""
        ids = self.resolve(reference)
        with self._leased(ids):
            syncer = self._syncer()
            return [self._sync_one(syncer, orthanc_id, reset=reset) for orthanc_id in ids]

    def _sync_one(self, syncer: StudySync, orthanc_id: str, *, reset: bool) -> StudyResult:
        self.store.make_due(orthanc_id, self._clock(), reset=reset)
        row = self.store.get(orthanc_id)
        if row is not None and row.state in (State.IGNORED, State.SUPERSEDED):
            return StudyResult(
                orthanc_id,
                Outcome.ALREADY_THERE,
                f"{row.state.value}: {row.reason}",
                study_uid=row.study_uid,
            )
        try:
            result = syncer.sync(orthanc_id, row.prior if row else None)
        except RenderCrashed as exc:
            self._charge(exc, orthanc_id)
            raise
        # In one transaction with the lease's end, as in a pass: no other process can pick up
        # an older identity between this study's result and its supersession.
        with self.store.batch():
            self._record(result, PassSummary())
        return result

    def link(self, reference: str, patient_uuid: str, by: str) -> list[StudyResult]:
        """A person's decision: this study belongs to that patient."""
        self.openmrs.get_patient(patient_uuid)  # refuses an unknown uuid before anything changes
        ids = self.resolve(reference)
        with self._leased(ids):
            for orthanc_id in ids:
                self.store.link_manually(orthanc_id, patient_uuid, by, self._clock())
                row = self.store.get(orthanc_id)
                self.upkeep.audit(
                    (orthanc_id, row.study_uid if row else ""),
                    "link",
                    "",
                    patient_uuid,
                    f"linked by {by}",
                )
            syncer = self._syncer()
            return [self._sync_one(syncer, orthanc_id, reset=False) for orthanc_id in ids]

    def retry(self, reference: str, by: str) -> list[StudyResult]:
        """A person's decision: try the study again now (an ignored one too), in the audit
        trail with who asked."""
        ids = self.resolve(reference)
        with self._leased(ids):
            for orthanc_id in ids:
                row = self.store.get(orthanc_id)
                uid = row.study_uid if row else ""
                self.upkeep.audit((orthanc_id, uid), "retry", "", "", f"retried by {by}")
            syncer = self._syncer()
            return [self._sync_one(syncer, orthanc_id, reset=True) for orthanc_id in ids]

    def ignore(self, reference: str, by: str, reason: str) -> list[StudyRow]:
        rows = []
        ids = self.resolve(reference)
        with self._leased(ids):
            for orthanc_id in ids:
                self.store.make_due(orthanc_id, self._clock())
                self.store.set_state(
                    orthanc_id, State.IGNORED, f"ignored by {by}: {reason}", self._clock()
                )
                row = self.store.get(orthanc_id)
                if row:
                    self.upkeep.audit(
                        (orthanc_id, row.study_uid),
                        "ignore",
                        row.attachment_uuid,
                        row.patient_uuid,
                        row.reason,
                    )
                    rows.append(row)
        return rows

    @contextlib.contextmanager
    def _leased(self, orthanc_ids: list[str]) -> Iterator[None]:
        """Hold these studies' leases for a person's command, given up at the end. Waits up to
        `lease_wait` for another process to finish with one, then refuses (LeaseHeld) having
        changed nothing: never two processes on one study."""
        held: list[str] = []
        try:
            for orthanc_id in orthanc_ids:
                self._wait_for_lease(orthanc_id)
                held.append(orthanc_id)
            yield
        finally:
            self.store.release(held)

    def _wait_for_lease(self, orthanc_id: str) -> None:
        row = self.store.get(orthanc_id)
        uid = row.study_uid if row is not None else ""
        if not uid:  # the lease must cover every identity of the UID, so it must be known
            uid = self.orthanc.study_uids([orthanc_id]).get(orthanc_id, "")
        deadline = time.monotonic() + self.lease_wait
        while (held := self.store.claim_study(orthanc_id, self._clock(), uid)) is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LeaseHeld(_busy(uid or orthanc_id, orthanc_id, held, self._clock()))
            time.sleep(min(_LEASE_POLL, left))

    def reconcile(self) -> SweepSummary:
        """One sweep of Orthanc's study list against the ledger (see Upkeep.reconcile), asked
        for by a person: waits up to `lease_wait` while another process sweeps."""
        deadline = time.monotonic() + self.lease_wait
        while (summary := self.upkeep.reconcile()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LeaseHeld(
                    "another process sharing the ledger is sweeping it now; nothing was done: "
                    "its sweep does the same, or try again once it is over"
                )
            time.sleep(min(_LEASE_POLL, left))
        return summary

    # -- long-running ----------------------------------------------------------------------
    def run_forever(self, stop: threading.Event) -> None:
        """Poll, sync what is due, reconcile now and then, sleep; back off while a server is
        unavailable; never busy-loop, never exit but on a stop or refused credentials."""
        failures = 0
        while not stop.is_set():
            try:
                if self._clock() - self.store.last_reconcile() >= self.options.reconcile_interval:
                    self.upkeep.reconcile()  # skipped while another process sweeps
                self.run_pass(stop)
                self.monitor.pass_done()
                self._ask_quiet_servers()
                failures = 0
                delay = self.options.poll_interval
            except CredentialsRefused:
                raise
            except (ServerError, StoreError) as exc:
                # A ledger that restarts (PostgreSQL failing over, a deadlock it broke) is
                # waited out like a server outage: the pass's leases are ours to take again,
                # and an upload whose result was not recorded is found by the next attempt.
                if isinstance(exc, StoreError) and not exc.retryable:
                    raise
                failures += 1
                backoff = Backoff(max(self.options.poll_interval, 1.0), 300.0)
                delay = backoff.delay(failures, self._jitter())
                log.warning("service.backoff", reason=exc.message, retry_in=round(delay, 1))
            self.monitor.beat(delay)  # alive, and says how long it sleeps: no restart for that
            stop.wait(delay)

    def _ask_quiet_servers(self) -> None:
        """One cheap request to a server the passes have not heard from lately (OpenMRS when
        no FHIR2 answers the patient polls), so that readiness tells how it is now."""
        for server in self.monitor.stale(ready_window(self.options.poll_interval) / 2):
            if server == "orthanc":
                self.monitor.changes_seen(self.orthanc.high_water_mark())
            else:
                self.openmrs.check_credentials()


def _busy(reference: str, orthanc_id: str, held: Lease, now: float) -> str:
    """Why a person's command on a study was refused, and when to try again."""
    which = "" if held.orthanc_id == orthanc_id else f" (as Orthanc study {held.orthanc_id})"
    return (
        f"study {reference} is being worked by another process{which}: {held.owner}, whose "
        f"lease ends in {max(1, math.ceil(held.until - now))} s unless it renews it; "
        "nothing was done: try again once it has finished"
    )


def _audits(result: StudyResult, now: float) -> list[AuditRow]:
    """The changes an attempt made in OpenMRS, for the audit trail."""
    rows = []
    if result.created:
        rows.append(
            AuditRow(
                now,
                result.orthanc_id,
                result.study_uid,
                "create",
                result.patient_uuid,
                result.attachment_uuid,
                result.reason,
            )
        )
    rows += [
        AuditRow(
            now,
            result.orthanc_id,
            result.study_uid,
            "void",
            v.patient_uuid,
            v.attachment_uuid,
            v.reason,
        )
        for v in result.voided
    ]
    return rows


__all__ = ["PassSummary", "Service", "ServiceOptions", "SweepSummary"]
