"""Pure: following OpenMRS's patient changes with a watermark, so a poll asks for what changed
since the last one and each change is acted on once.

The watermark is the newest `lastUpdated` the server has shown, in the server's own clock
(never ours: the two machines' clocks may differ). The search includes the watermark itself,
since another patient may change within the same instant after a poll; the patients already
seen at that instant are remembered so they are not acted on again at every poll.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from orthanc_openmrs.models import PatientChange

# A first poll looks this far back in our clock, which covers modest clock skew between this
# machine and OpenMRS; every study is tried on the first pass anyway.
FIRST_LOOKBACK = timedelta(minutes=10)


@dataclass(frozen=True)
class Watermark:
    at: str  # ISO 8601, as the server wrote it
    seen: frozenset[str] = frozenset()  # patients already acted on whose change is `at`

    def encode(self) -> str:
        return "\n".join([self.at, *sorted(self.seen)])

    @classmethod
    def decode(cls, text: str) -> Watermark:
        at, *seen = text.split("\n")
        return cls(at, frozenset(seen))


@dataclass(frozen=True)
class Step:
    """What a poll's answer means: the changes to act on, and the watermark to keep."""

    fresh: tuple[PatientChange, ...]
    watermark: Watermark


def first_watermark(now: float) -> Watermark:
    start = datetime.fromtimestamp(now, UTC) - FIRST_LOOKBACK
    return Watermark(start.isoformat(timespec="seconds"))


def parse_instant(text: str) -> datetime | None:
    """An ISO 8601 instant with a zone (FHIR `instant`); None for anything else."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


def advance(mark: Watermark, answer: Sequence[PatientChange]) -> Step:
    """The changes not yet acted on, and the watermark after them.

    A change without a readable `lastUpdated` is acted on, and leaves the watermark alone."""
    current = parse_instant(mark.at)
    fresh = [
        c for c in answer if not (c.uuid in mark.seen and parse_instant(c.last_updated) == current)
    ]
    dated = [(t, c) for c in answer if (t := parse_instant(c.last_updated)) is not None]
    newest = max((t for t, _ in dated), default=None)
    if newest is None or (current is not None and newest <= current):
        seen = mark.seen | {c.uuid for t, c in dated if t == current}
        return Step(tuple(fresh), Watermark(mark.at, frozenset(seen)))
    at = next(c.last_updated for t, c in dated if t == newest)
    return Step(tuple(fresh), Watermark(at, frozenset(c.uuid for t, c in dated if t == newest)))
