"""Pure retry timing: capped exponential backoff with jitter. No clock, no randomness inside."""

from __future__ import annotations

from dataclasses import dataclass

from orthanc_openmrs.models import Outcome, State, StudyResult


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt number `attempt + 1`, doubling from `base` up to `cap`."""

    base: float
    cap: float

    def delay(self, attempt: int, jitter: float) -> float:
        """`jitter` in [0, 1) spreads retries over the upper half of the window."""
        if self.base <= 0:
            return 0.0
        exponent = max(0, min(attempt - 1, 30))
        window = min(self.cap, self.base * float(2**exponent))
        return float(window * (0.5 + jitter / 2))


@dataclass(frozen=True)
class Plan:
    """Where a study goes after an attempt, and when it is next tried (None: not by itself)."""

    state: State
    next_attempt_at: float | None


# A study Orthanc is still receiving is looked at again after this long, in case the StableStudy
# change never comes (Orthanc restarted within StableAge of its last instance).
UNSTABLE_RECHECK = 60.0


def plan(result: StudyResult, attempts: int, now: float, backoff: Backoff, jitter: float) -> Plan:
    """Pure: the ledger state and next attempt time for an attempt's result.

    `attempts` counts this attempt. Unmatched, ambiguous and mismatched studies are tried again
    more and more rarely (a patient is often registered, or corrected, after the imaging);
    permanent failures wait until Orthanc reports the study changed.
    """
    later = now + backoff.delay(attempts, jitter)
    match result.outcome:
        case Outcome.SYNCED | Outcome.ALREADY_THERE | Outcome.REPLACED:
            return Plan(State.SYNCED, None)
        case Outcome.GONE:
            return Plan(State.GONE, None)
        case Outcome.SUPERSEDED:
            return Plan(State.SUPERSEDED, None)
        case Outcome.CONFLICT:
            # Tried again: once one of the two identities leaves Orthanc, the survivor wins.
            return Plan(State.CONFLICT, later)
        case Outcome.UNMATCHED:
            return Plan(State.UNMATCHED, later)
        case Outcome.AMBIGUOUS:
            return Plan(State.AMBIGUOUS, later)
        case Outcome.MISMATCH:
            # The record may be corrected in OpenMRS (or the study in the PACS).
            return Plan(State.MISMATCH, later)
        case Outcome.NOT_STABLE:
            return Plan(State.PENDING, now + UNSTABLE_RECHECK)
        case Outcome.FAILED:
            return Plan(State.FAILED, later if result.retryable else None)
    raise AssertionError(f"no plan for {result.outcome}")  # pragma: no cover
