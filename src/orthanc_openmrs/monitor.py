"""What the running service tells about itself: that its loop turns, how each server answered
lately, and the counts and timings `/metrics` shows.

The loop and every worker's HTTP client write here; the HTTP surface's threads read. Nothing
here names a study's UID, a patient or a URL: these values leave the machine.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from orthanc_openmrs.models import Outcome, StudyResult
from orthanc_openmrs.transport import RequestObserver

SERVERS = ("orthanc", "openmrs")
# Studies whose StableStudy was seen and that are not attached yet, for the latency histogram;
# the oldest are forgotten first when many wait for a patient.
_STABLE_KEPT = 10_000
_LATENCY_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 21600)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class ServerState:
    """How a server answered lately, as the service's own requests found it."""

    last_answer: float | None = None  # any answer that was not an outage (5xx, 429)
    last_failure: float | None = None
    failure: str = ""  # PHI-free: a status or "no connection"
    refused: bool = False  # the credentials were refused: nothing is retried


@dataclass(frozen=True)
class Beat:
    """The loop's last sign of life and by when the next one is due."""

    at: float
    due_by: float
    held: str = ""  # the loop stopped on purpose (refused credentials) and waits for a person


def ready_window(poll_interval: float) -> float:
    """How recent a server's last answer must be for /ready: three polls, a minute at least
    (an idle `run` asks each server once a poll)."""
    return max(60.0, 3 * poll_interval)


def status_class(status: int | None) -> str:
    return "error" if status is None else f"{status // 100}xx"


class Monitor:
    def __init__(
        self, *, grace: float, clock: Callable[[], float] = time.time, version: str = ""
    ) -> None:
        """`grace`: how long past its announced time a loop's beat may be late before the
        loop counts as hung (a study held up by slow requests delays the next beat)."""
        self._clock = clock
        self._grace = grace
        self._lock = threading.Lock()
        now = clock()
        self._beat = Beat(now, now + grace)
        self._servers = {name: ServerState() for name in SERVERS}
        self._stable: OrderedDict[str, float] = OrderedDict()
        self.last_pass: float | None = None
        self.orthanc_last_change: int | None = None
        self.version = version
        self.registry = CollectorRegistry(auto_describe=True)
        self._outcomes = Counter(
            "orthanc_openmrs_study_outcomes",
            "Attempts at studies, by what they came to",
            ["outcome"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "orthanc_openmrs_stable_to_attachment_seconds",
            "Seconds from Orthanc's StableStudy to the study's attachment in OpenMRS",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._requests = Counter(
            "orthanc_openmrs_http_requests",
            "Requests to the servers, by server and status class (error: no answer)",
            ["server", "status_class"],
            registry=self.registry,
        )
        self._durations = Histogram(
            "orthanc_openmrs_http_request_duration_seconds",
            "Seconds until a server's answer began, by server and status class",
            ["server", "status_class"],
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        )
        self._refusals = Counter(
            "orthanc_openmrs_credentials_refused",
            "Times a server refused the configured credentials",
            ["server"],
            registry=self.registry,
        )
        for outcome in Outcome:
            self._outcomes.labels(outcome=label(outcome))
        for server in SERVERS:
            self._refusals.labels(server=server)

    # -- the loop ------------------------------------------------------------------------------
    def beat(self, next_within: float = 0.0) -> None:
        """The loop turns; it will beat again within `next_within` seconds (its sleep)."""
        now = self._clock()
        with self._lock:
            self._beat = Beat(now, now + next_within + self._grace, self._beat.held)

    def hold(self, why: str) -> None:
        """The loop stopped on purpose and waits for a person: alive, never ready."""
        with self._lock:
            self._beat = Beat(self._clock(), float("inf"), why)

    @property
    def last_beat(self) -> Beat:
        with self._lock:
            return self._beat

    def pass_done(self) -> None:
        self.last_pass = self._clock()

    def changes_seen(self, last: int) -> None:
        """The newest change sequence number Orthanc has reported."""
        self.orthanc_last_change = max(last, self.orthanc_last_change or 0)
        self.beat()

    # -- studies -------------------------------------------------------------------------------
    def stable_seen(self, orthanc_ids: Iterable[str]) -> None:
        now = self._clock()
        with self._lock:
            for orthanc_id in orthanc_ids:
                self._stable.setdefault(orthanc_id, now)
            while len(self._stable) > _STABLE_KEPT:
                self._stable.popitem(last=False)

    def study_done(self, result: StudyResult) -> None:
        """One attempt finished; the loop turns."""
        self._outcomes.labels(outcome=label(result.outcome)).inc()
        with self._lock:
            since = self._stable.pop(result.orthanc_id, None) if result.created else None
        if since is not None:
            self._latency.observe(max(self._clock() - since, 0.0))
        self.beat()

    # -- the servers ---------------------------------------------------------------------------
    def observer(self, server: str) -> RequestObserver:
        """What a client calls after each request to `server`."""

        def observe(status: int | None, seconds: float) -> None:
            kind = status_class(status)
            self._requests.labels(server=server, status_class=kind).inc()
            self._durations.labels(server=server, status_class=kind).observe(seconds)
            now = self._clock()
            with self._lock:
                state = self._servers[server]
                if status is None or status >= 500 or status == 429:
                    failure = "no connection" if status is None else f"answered HTTP {status}"
                    state = ServerState(state.last_answer, now, failure, state.refused)
                else:
                    state = ServerState(now, state.last_failure, state.failure, state.refused)
                self._servers[server] = state

        return observe

    def credentials_refused(self, server: str) -> None:
        self._refusals.labels(server=server).inc()
        with self._lock:
            state = self._servers[server]
            self._servers[server] = ServerState(
                state.last_answer, state.last_failure, state.failure, refused=True
            )

    def servers(self) -> dict[str, ServerState]:
        with self._lock:
            return dict(self._servers)

    def stale(self, window: float) -> list[str]:
        """The servers that gave no answer within `window` seconds, or whose last request
        failed: worth one cheap request so that readiness says how they are now."""
        now = self._clock()
        return [
            name
            for name, state in self.servers().items()
            if not state.refused
            and (
                state.last_answer is None
                or now - state.last_answer > window
                or (state.last_failure or 0) > state.last_answer
            )
        ]


def label(outcome: Outcome) -> str:
    return outcome.value.replace(" ", "_")
