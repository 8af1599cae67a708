"""Pure: liveness and readiness from what the service last told its monitor. No clock inside."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from orthanc_openmrs.monitor import Beat, ServerState

OK = "ok"
_NAMES = {"orthanc": "Orthanc", "openmrs": "OpenMRS"}


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checks: dict[str, str]  # name -> "ok" or what is wrong

    @property
    def failing(self) -> list[str]:
        return [name for name, text in self.checks.items() if text != OK]


def liveness(beat: Beat, now: float) -> Verdict:
    """Alive while the loop beats when it said it would. Never about the servers: an outage
    makes the loop wait longer, and it says so before it waits."""
    if beat.held:
        return Verdict(True, {"loop": f"held: {beat.held}"})
    if now <= beat.due_by:
        return Verdict(True, {"loop": OK})
    return Verdict(False, {"loop": f"no sign of life for {now - beat.at:.0f} s"})


def readiness(
    servers: Mapping[str, ServerState], ledger: str, now: float, window: float
) -> Verdict:
    """Ready when the ledger can be read and each server answered, and accepted the
    credentials, within `window` seconds, its last request not an outage. The settings were
    checked at start: a service with invalid settings does not run."""
    checks = {"settings": OK, "ledger": ledger}
    for name, state in servers.items():
        checks[name] = _server(_NAMES.get(name, name), state, now, window)
    return Verdict(all(text == OK for text in checks.values()), checks)


def _server(name: str, state: ServerState, now: float, window: float) -> str:
    if state.refused:
        return f"{name} refuses the credentials (not retried; fix them and restart)"
    if state.last_failure is not None and (state.last_answer or 0) < state.last_failure:
        return f"{name} {state.failure} {now - state.last_failure:.0f} s ago"
    if state.last_answer is None:
        return f"{name} has not answered yet"
    if now - state.last_answer > window:
        return f"{name} has not answered for {now - state.last_answer:.0f} s"
    return OK
