from __future__ import annotations

import io
import threading
from collections import Counter

from structlog.testing import capture_logs

from orthanc_openmrs.models import Outcome, StudyResult
from orthanc_openmrs.pacing import RateLimit
from orthanc_openmrs.progress import Progress, describe


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_rate_limit_spaces_acquisitions() -> None:
    """At 2 per second, back-to-back callers wait 0, 0.5 and 1.0 s for their slots."""
    clock = _Clock()
    limit = RateLimit(2, clock=clock, sleep=clock.sleep)
    assert [limit.acquire() for _ in range(3)] == [0.0, 0.5, 1.0]
    assert clock.slept == [0.5, 1.0]


def test_rate_limit_does_not_bank_idle_time() -> None:
    """After a quiet spell the next caller goes at once, but only one slot is free."""
    clock = _Clock()
    limit = RateLimit(4, clock=clock, sleep=clock.sleep)
    limit.acquire()
    clock.now += 10
    assert limit.acquire() == 0.0
    assert limit.acquire() == 0.25


def test_zero_means_unlimited() -> None:
    """A limit of 0 never waits."""
    clock = _Clock()
    limit = RateLimit(0, clock=clock, sleep=clock.sleep)
    assert all(limit.acquire() == 0.0 for _ in range(100))
    assert clock.slept == []


def test_rate_limit_is_shared_by_threads() -> None:
    """Eight threads acquiring at once get eight distinct slots."""
    clock = _Clock()
    limit = RateLimit(10, clock=clock, sleep=clock.sleep)
    waits: list[float] = []
    threads = [threading.Thread(target=lambda: waits.append(limit.acquire())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(round(w, 3) for w in waits) == [round(i / 10, 3) for i in range(8)]


def test_describe_shows_rate_eta_and_counts() -> None:
    """The progress line has done/total, the rate, an ETA and the counts by outcome."""
    counts = Counter({Outcome.SYNCED: 90, Outcome.UNMATCHED: 10})
    line = describe(100, 1000, 20.0, counts)
    assert line.startswith("100/1000 studies  5.0/s  ETA 3:00")
    assert "synced 90" in line
    assert "unmatched 10" in line


def test_describe_before_any_result() -> None:
    """With nothing done yet there is no ETA and no division by zero."""
    assert describe(0, 10, 0.0, Counter()) == "0/10 studies  0.0/s  ETA -"


def test_terminal_progress_redraws_one_line() -> None:
    """On a terminal the line is redrawn in place and ended by finish()."""
    clock = _Clock()
    out = io.StringIO()
    progress = Progress(3, out, terminal=True, redraw=0.2, clock=clock)
    for _ in range(3):
        clock.now += 1
        progress(StudyResult("x", Outcome.SYNCED))
    progress.finish()
    text = out.getvalue()
    assert text.count("\r\x1b[2K") == 4
    assert "3/3 studies" in text
    assert text.endswith("\n")


def test_plain_progress_logs_periodically() -> None:
    """Off a terminal, a sync.progress log line every interval, none in between."""
    clock = _Clock()
    out = io.StringIO()
    progress = Progress(50, out, terminal=False, interval=10, clock=clock)
    with capture_logs() as logs:
        for _ in range(30):
            clock.now += 1
            progress(StudyResult("x", Outcome.FAILED))
    lines = [entry for entry in logs if entry["event"] == "sync.progress"]
    assert len(lines) == 3
    assert "failed 10" in lines[0]["progress"]
    assert out.getvalue() == ""
