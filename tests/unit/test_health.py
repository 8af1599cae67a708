"""Liveness and readiness decided from what the service told its monitor."""

from __future__ import annotations

from orthanc_openmrs.http.health import liveness, readiness
from orthanc_openmrs.models import Outcome, StudyResult
from orthanc_openmrs.monitor import Beat, Monitor, ServerState, ready_window


def test_alive_until_a_beat_is_late() -> None:
    """The loop is alive while its next beat is not overdue, and held counts as alive."""
    assert liveness(Beat(at=100, due_by=160), now=150).ok
    late = liveness(Beat(at=100, due_by=160), now=161)
    assert not late.ok
    assert late.checks["loop"] == "no sign of life for 61 s"
    assert liveness(Beat(at=100, due_by=float("inf"), held="refused"), now=1e9).ok


def test_ready_needs_recent_answers_without_outage() -> None:
    """Each server must have answered within the window, its last request no outage, and
    its credentials accepted."""
    fresh = ServerState(last_answer=95)
    assert readiness({"orthanc": fresh, "openmrs": fresh}, "ok", now=100, window=60).ok
    down = ServerState(last_answer=90, last_failure=95, failure="answered HTTP 503")
    verdict = readiness({"orthanc": fresh, "openmrs": down}, "ok", now=100, window=60)
    assert not verdict.ok
    assert verdict.failing == ["openmrs"]
    assert verdict.checks["openmrs"] == "OpenMRS answered HTTP 503 5 s ago"
    quiet = readiness({"orthanc": ServerState(last_answer=10)}, "ok", now=100, window=60)
    assert quiet.checks["orthanc"] == "Orthanc has not answered for 90 s"
    refused = readiness({"openmrs": ServerState(95, refused=True)}, "ok", now=100, window=60)
    assert "refuses the credentials" in refused.checks["openmrs"]
    assert not readiness({}, "the ledger cannot be read", now=100, window=60).ok


def test_window_is_three_polls_and_a_minute_at_least() -> None:
    """With the default 5 s poll the window is a minute; slower polls widen it."""
    assert ready_window(5) == 60
    assert ready_window(30) == 90


def test_monitor_tracks_answers_beats_and_latency() -> None:
    """Requests mark a server answering or failing; a StableStudy's attachment is timed."""
    now = [1000.0]
    monitor = Monitor(grace=10, clock=lambda: now[0])
    observe = monitor.observer("openmrs")
    observe(200, 0.01)
    assert monitor.servers()["openmrs"].last_answer == 1000
    assert monitor.stale(30) == ["orthanc"]
    now[0] = 1001
    observe(None, 0.5)
    assert monitor.servers()["openmrs"].failure == "no connection"
    assert "openmrs" in monitor.stale(30)
    monitor.stable_seen(["s1"])
    now[0] = 1004
    monitor.study_done(StudyResult("s1", Outcome.SYNCED, created=True))
    assert monitor.last_beat == Beat(1004, 1014)
    text = monitor.registry.get_sample_value("orthanc_openmrs_stable_to_attachment_seconds_sum")
    assert text == 3.0
    assert (
        monitor.registry.get_sample_value(
            "orthanc_openmrs_http_requests_total", {"server": "openmrs", "status_class": "error"}
        )
        == 1.0
    )
