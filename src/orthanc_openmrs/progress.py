"""Progress of a pass people can watch: a live line on a terminal, plain log lines otherwise."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import TextIO

import structlog

from orthanc_openmrs.models import Outcome, StudyResult

log = structlog.get_logger("orthanc_openmrs")

_SHORT = {
    Outcome.SYNCED: "synced",
    Outcome.ALREADY_THERE: "there",
    Outcome.REPLACED: "replaced",
    Outcome.UNMATCHED: "unmatched",
    Outcome.AMBIGUOUS: "ambiguous",
    Outcome.MISMATCH: "mismatch",
    Outcome.FAILED: "failed",
    Outcome.NOT_STABLE: "waiting",
    Outcome.GONE: "gone",
    Outcome.SUPERSEDED: "superseded",
    Outcome.CONFLICT: "conflict",
}


def describe(done: int, total: int, elapsed: float, counts: Counter[Outcome]) -> str:
    """Pure: `120/2000 studies  35.1/s  ETA 0:53  synced 110 unmatched 10`."""
    rate = done / elapsed if elapsed > 0 else 0.0
    left = max(total - done, 0)
    eta = _clock_time(left / rate) if rate > 0 and left else "-"
    parts = [f"{done}/{max(total, done)} studies", f"{rate:.1f}/s", f"ETA {eta}"]
    parts += [f"{_SHORT[o]} {n}" for o, n in sorted(counts.items(), key=lambda i: i[0].value) if n]
    return "  ".join(parts)


def _clock_time(seconds: float) -> str:
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Fed every result of a pass; redraws a terminal line at most every `redraw` seconds, or
    logs a `sync.progress` line every `interval` seconds when not on a terminal."""

    def __init__(
        self,
        total: int,
        stream: TextIO,
        *,
        terminal: bool,
        interval: float = 10.0,
        redraw: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.counts: Counter[Outcome] = Counter()
        self._stream = stream
        self._terminal = terminal
        self._every = redraw if terminal else interval
        self._clock = clock
        self._started = clock()
        self._shown = self._started

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def __call__(self, result: StudyResult) -> None:
        self.counts[result.outcome] += 1
        now = self._clock()
        if now - self._shown >= self._every:
            self._shown = now
            self._show(now)

    def add_total(self, more: int) -> None:
        """Studies found while the pass runs (the changes feed goes on)."""
        self.total += more

    def finish(self) -> None:
        if self._terminal and self.done:
            self._show(self._clock())
            self._stream.write("\n")
            self._stream.flush()

    def _show(self, now: float) -> None:
        line = describe(self.done, self.total, now - self._started, self.counts)
        if self._terminal:
            self._stream.write("\r\x1b[2K" + line)
            self._stream.flush()
        else:
            log.info("sync.progress", progress=line)
