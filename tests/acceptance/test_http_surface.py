"""`run`'s HTTP surface against a real Orthanc and the OpenMRS double: liveness that an outage
leaves alone, readiness that follows the servers, and Prometheus metrics without PHI."""

from __future__ import annotations

import httpx
from running import Run, wait_for

from orthanc_openmrs_devtools.dicom_factory import StudySpec, study_uid
from support import PUBLIC_URL, env_for, load


def _env(orthanc, openmrs, database) -> dict[str, str]:
    return {**env_for(orthanc, openmrs, database), "SYNC_POLL_INTERVAL": "0.3"}


def test_health_ready_and_metrics_follow_the_service(orthanc, openmrs, database) -> None:
    """/health and /ready answer 200 once both servers answered; /metrics counts a study
    attached from its StableStudy, with names after Prometheus's conventions and no UID,
    patient or URL in it."""
    openmrs.add_patient(["P001"])
    with Run(_env(orthanc, openmrs, database)) as run:
        assert wait_for(lambda: run.answers("/ready", 200)), run.get("/ready").text
        assert run.get("/health").json() == {"ok": True, "checks": {"loop": "ok"}, "failing": []}
        spec = StudySpec("watched", patient_id="P001")
        load(orthanc, spec)
        assert wait_for(lambda: len(openmrs.attachments()) == 1)
        assert wait_for(
            lambda: "stable_to_attachment_seconds_count 1.0" in run.get("/metrics").text
        )
        metrics = run.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    for line in (
        'orthanc_openmrs_study_outcomes_total{outcome="synced"} 1.0',
        'orthanc_openmrs_studies{state="synced"} 1.0',
        'orthanc_openmrs_studies_needing_a_person{state="unmatched"} 0.0',
        "orthanc_openmrs_backlog_studies 0.0",
        "orthanc_openmrs_changes_lag 0.0",
        'orthanc_openmrs_credentials_refused_total{server="openmrs"} 0.0',
        "orthanc_openmrs_stable_to_attachment_seconds_bucket",
        'orthanc_openmrs_http_requests_total{server="orthanc",status_class="2xx"}',
        'orthanc_openmrs_http_request_duration_seconds_bucket{le="0.005",server="openmrs"',
        "orthanc_openmrs_last_successful_pass_timestamp_seconds",
        'orthanc_openmrs_build_info{python="',
    ):
        assert line in text, line
    for private in (study_uid(spec), "P001", "Doe", PUBLIC_URL, "127.0.0.1"):
        assert private not in text


def test_openmrs_outage_turns_ready_off_and_leaves_health_on(orthanc, openmrs, database) -> None:
    """OpenMRS answering 503, at start (it starts after the service beside Ozone) or later:
    /ready is 503 naming it, /health stays 200 (a restart would not help); when it is back,
    /ready is 200 again."""
    openmrs.set_outage(503)
    with Run(_env(orthanc, openmrs, database)) as run:
        assert wait_for(lambda: run.answers("/ready", 503))
        assert run.get("/health").status_code == 200
        wait_for(lambda: False, timeout=2)
        assert run.get("/health").status_code == 200
        assert run.process.poll() is None
        openmrs.set_outage(None)
        assert wait_for(lambda: run.answers("/ready", 200), timeout=40)
        openmrs.set_outage(503)
        assert wait_for(lambda: run.answers("/ready", 503))
        ready = run.get("/ready").json()
        assert ready["failing"] == ["openmrs"]
        assert ready["checks"]["openmrs"].startswith("OpenMRS answered HTTP 503")
        assert ready["checks"]["orthanc"] == "ok"
        for _ in range(10):  # through the backoff that follows
            assert run.get("/health").status_code == 200
            wait_for(lambda: False, timeout=0.3)
        openmrs.set_outage(None)
        assert wait_for(lambda: run.answers("/ready", 200), timeout=40)


def test_the_surface_changes_nothing(orthanc, openmrs, database) -> None:
    """Only GET and HEAD are answered; other methods and paths change nothing."""
    with Run(_env(orthanc, openmrs, database)) as run:
        assert wait_for(lambda: run.answers("/health", 200))
        base = f"http://127.0.0.1:{run.port}"
        for method in ("POST", "PUT", "DELETE"):
            assert httpx.request(method, f"{base}/ready", timeout=5).status_code == 501
        assert run.get("/ledger").status_code == 404
        assert httpx.head(f"{base}/health", timeout=5).status_code == 200


def test_refused_credentials_hold_alive_and_not_ready(orthanc, openmrs, database) -> None:
    """Wrong OpenMRS credentials: one failed login, then `run` waits, alive (no restart into
    a lockout) and not ready, until stopped; it then exits 3."""
    env = {**_env(orthanc, openmrs, database), "OPENMRS_PASSWORD": "wrong"}
    with Run(env) as run:
        assert wait_for(lambda: run.answers("/ready", 503))
        assert wait_for(lambda: "refuses" in run.get("/ready").json()["checks"]["openmrs"])
        health = run.get("/health")
        assert health.status_code == 200
        assert health.json()["checks"]["loop"] == "held: openmrs refuses the credentials"
        metrics = run.get("/metrics").text
        assert 'orthanc_openmrs_credentials_refused_total{server="openmrs"} 1.0' in metrics
        wait_for(lambda: False, timeout=1.5)
        assert openmrs.failed_logins("admin") == 1
        assert run.stop() == 3
    assert "service.held" in run.stdout
