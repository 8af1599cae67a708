from __future__ import annotations

import pytest

from orthanc_openmrs.models import Outcome, State, StudyResult
from orthanc_openmrs.retry import UNSTABLE_RECHECK, Backoff, plan

B = Backoff(60, 3600)


def test_backoff_doubles_and_caps() -> None:
    """Delays double from the base and stop at the cap; jitter spans the upper half."""
    assert B.delay(1, 0.999999) == pytest.approx(60, rel=1e-3)
    assert B.delay(1, 0.0) == 30
    assert B.delay(3, 0.0) == 120
    assert B.delay(50, 0.999999) == pytest.approx(3600, rel=1e-3)


def test_zero_base_means_immediately() -> None:
    """A zero base retries at once (used by tests and one-shot runs)."""
    assert Backoff(0, 0).delay(5, 0.5) == 0


@pytest.mark.parametrize(
    ("outcome", "retryable", "state", "due"),
    [
        (Outcome.SYNCED, True, State.SYNCED, False),
        (Outcome.ALREADY_THERE, True, State.SYNCED, False),
        (Outcome.GONE, False, State.GONE, False),
        (Outcome.UNMATCHED, True, State.UNMATCHED, True),
        (Outcome.AMBIGUOUS, True, State.AMBIGUOUS, True),
        (Outcome.FAILED, True, State.FAILED, True),
        (Outcome.FAILED, False, State.FAILED, False),
    ],
)
def test_plan(outcome: Outcome, retryable: bool, state: State, due: bool) -> None:
    """Each outcome maps to its ledger state; only retryable ones get a next attempt."""
    decision = plan(StudyResult("x", outcome, retryable=retryable), 2, 1000.0, B, 0.5)
    assert decision.state is state
    assert (decision.next_attempt_at is not None) is due
    if due:
        assert decision.next_attempt_at == 1000.0 + B.delay(2, 0.5)


def test_not_stable_is_looked_at_again() -> None:
    """A study still arriving stays pending and is looked at again later."""
    decision = plan(StudyResult("x", Outcome.NOT_STABLE), 1, 10.0, B, 0.5)
    assert decision.state is State.PENDING
    assert decision.next_attempt_at == 10.0 + UNSTABLE_RECHECK
