"""The installed command, run as a subprocess, as an operator would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orthanc_openmrs.config import Settings
from orthanc_openmrs_devtools.dicom_factory import StudySpec, study_uid
from orthanc_openmrs_devtools.keycloak_double import KeycloakDouble
from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble
from orthanc_openmrs_devtools.orthanc_server import OrthancServer, TokenGuard
from support import env_for, load

ROOT = Path(__file__).resolve().parents[2]


def _command() -> list[str]:
    script = Path(sys.executable).with_name("orthanc-openmrs")
    return [str(script)] if script.exists() else [sys.executable, "-m", "orthanc_openmrs"]


def _clean_environment() -> dict[str, str]:
    prefixes = ("ORTHANC_", "OPENMRS_", "SYNC_", "EIP_", "OAUTH_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def _run(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_command(), *args],
        env={**_clean_environment(), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sync_prints_summary_and_second_pass_adds_nothing(orthanc, openmrs, database) -> None:
    """`sync` syncs and summarises; a second `sync` only retries the unmatched study."""
    openmrs.add_patient(["P001"])
    load(orthanc, StudySpec("a"), StudySpec("b"), StudySpec("u", patient_id="NOBODY"))
    env = env_for(orthanc, openmrs, database)
    first = _run(env, "sync")
    assert first.returncode == 0, first.stderr
    assert "Pass complete: 3 studies looked at" in first.stdout
    assert "synced              2" in first.stdout
    assert "unmatched           1" in first.stdout
    assert "no OpenMRS patient has the identifier 'NOBODY'" in first.stdout
    second = _run(env, "sync")
    assert second.returncode == 0
    assert "Pass complete: 1 studies looked at" in second.stdout
    assert "synced              0" in second.stdout
    assert len(openmrs.attachments()) == 2


def test_sync_one_study_by_uid_or_orthanc_id(orthanc, openmrs, database) -> None:
    """`sync --study` takes a StudyInstanceUID or an Orthanc ID and reports that study."""
    patient = openmrs.add_patient(["P001"])
    spec, other = StudySpec("one"), StudySpec("two")
    ids = load(orthanc, spec, other)
    env = env_for(orthanc, openmrs, database)
    by_uid = _run(env, "sync", "--study", study_uid(spec))
    assert by_uid.returncode == 0, by_uid.stderr
    assert by_uid.stdout.startswith(f"synced: {study_uid(spec)}")
    assert f"patient: {patient}" in by_uid.stdout
    assert len(openmrs.attachments()) == 1
    by_id = _run(env, "sync", "--study", ids["two"])
    assert by_id.stdout.startswith(f"synced: {study_uid(other)}")
    again = _run(env, "sync", "--study", ids["two"])
    assert again.stdout.startswith("already there")
    assert len(openmrs.attachments()) == 2
    bad = _run(env, "sync", "--study", "1.2&3")
    assert bad.returncode == 2
    assert "neither an Orthanc ID nor a StudyInstanceUID" in bad.stderr


def test_status_json_lists_what_needs_a_person(orthanc, openmrs, database) -> None:
    """`status --json` gives counts by state and each problem study with its reason."""
    openmrs.add_patient(["P001"])
    load(orthanc, StudySpec("ok"), StudySpec("lost", patient_id="GHOST"))
    env = env_for(orthanc, openmrs, database)
    assert _run(env, "sync").returncode == 0
    status = _run(env, "status", "--json")
    assert status.returncode == 0
    data = json.loads(status.stdout)
    assert data["counts"]["synced"] == 1
    assert data["counts"]["unmatched"] == 1
    (problem,) = data["needs_a_person"]
    assert problem["patient_id"] == "GHOST"
    assert "GHOST" in problem["reason"]
    text = _run(env, "status")
    assert "unmatched" in text.stdout
    assert "GHOST" in text.stdout


def test_missing_setting_is_named(tmp_path: Path) -> None:
    """Without ORTHANC_PUBLIC_URL the command stops at start-up, naming it (exit 2)."""
    done = _run({"OPENMRS_USER": "a", "OPENMRS_PASSWORD": "secret-pw"}, "sync", cwd=tmp_path)
    assert done.returncode == 2
    assert "ORTHANC_PUBLIC_URL" in done.stderr
    assert "secret-pw" not in done.stderr + done.stdout
    assert not (tmp_path / "orthanc-openmrs.sqlite3").exists()


def test_invalid_flag_value_is_named(orthanc, openmrs, database) -> None:
    """A bad flag value is reported against its variable name."""
    done = _run(env_for(orthanc, openmrs, database), "sync", "--sync-workers", "0")
    assert done.returncode == 2
    assert "SYNC_WORKERS" in done.stderr


def test_wrong_openmrs_password_stops_after_one_try(orthanc, openmrs, database) -> None:
    """Refused credentials stop the pass at once (exit 3), after a single failed login."""
    openmrs.add_patient(["P001"])
    load(orthanc, *[StudySpec(f"s{i}") for i in range(5)])
    env = {**env_for(orthanc, openmrs, database), "OPENMRS_PASSWORD": "wrong"}
    done = _run(env, "sync")
    assert done.returncode == 3
    assert "OPENMRS_PASSWORD" in done.stderr
    assert openmrs.failed_logins("admin") == 1
    assert openmrs.attachments() == []
    assert not openmrs.is_locked("admin")


def test_wrong_client_secret_stops_with_exit_3(orthanc, database) -> None:
    """Under SSO, a client secret Keycloak refuses stops `sync` at once with exit 3, naming
    Keycloak's answer and the OAUTH_ settings, after one token request."""
    with (
        KeycloakDouble({"eip": "right"}) as keycloak,
        OpenMRSDouble(sso_keys_url=keycloak.certs_url) as sso,
    ):
        sso.add_patient(["P001"])
        load(orthanc, StudySpec("a"))
        env = {
            **env_for(orthanc, sso, database),
            "OPENMRS_USER": "",
            "OPENMRS_PASSWORD": "",
            "OAUTH_ENABLED": "true",
            "OAUTH_ACCESS_TOKEN_URL": keycloak.token_url,
            "OAUTH_CLIENT_ID": "eip",
            "OAUTH_CLIENT_SECRET": "not-the-secret-x9",
        }
        done = _run(env, "sync")
        assert done.returncode == 3, done.stderr
        assert "Invalid client or Invalid client credentials" in done.stderr
        assert "OAUTH_CLIENT_SECRET" in done.stderr
        assert "not-the-secret-x9" not in done.stderr
        assert keycloak.refused == 1
        assert sso.attachments() == []
        right = _run({**env, "OAUTH_CLIENT_SECRET": "right"}, "sync")
        assert right.returncode == 0, right.stderr
        assert len(sso.attachments()) == 1


def test_basic_credentials_against_sso_exit_3_naming_oauth(orthanc, database) -> None:
    """Basic credentials against an OpenMRS behind SSO stop `sync` with exit 3 and a message
    that SSO is probably on, naming the OAUTH_ settings."""
    with KeycloakDouble() as keycloak, OpenMRSDouble(sso_keys_url=keycloak.certs_url) as sso:
        done = _run(env_for(orthanc, sso, database), "sync")
    assert done.returncode == 3
    assert "single sign-on" in done.stderr
    assert "OAUTH_ENABLED=true" in done.stderr


def test_orthanc_403_exits_3_and_a_token_header_syncs(openmrs, database, tmp_path) -> None:
    """A token-guarded Orthanc: without a token `sync` exits 3 naming the token settings;
    with ORTHANC_TOKEN_HEADER and the key it syncs."""
    openmrs.add_patient(["P001"])
    guarded = OrthancServer(tmp_path / "guarded", token_guard=TokenGuard("token", ("k-1",)))
    guarded.start()
    try:
        load(guarded, StudySpec("a"))
        env = env_for(guarded, openmrs, database)
        refused = _run(env, "sync")
        assert refused.returncode == 3
        assert "HTTP 403" in refused.stderr
        assert "ORTHANC_TOKEN_HEADER" in refused.stderr
        keyed = _run({**env, "ORTHANC_TOKEN_HEADER": "token", "ORTHANC_API_KEY": "k-1"}, "sync")
        assert keyed.returncode == 0, keyed.stderr
    finally:
        guarded.kill()
    assert len(openmrs.attachments()) == 1


def test_run_follows_changes_and_stops_on_sigterm(orthanc, openmrs, database) -> None:
    """`run` attaches a study uploaded while it runs, then exits 0 on SIGTERM; its log is
    on stdout, one JSON object a line (not a terminal)."""
    openmrs.add_patient(["P001"])
    env = {**env_for(orthanc, openmrs, database), "SYNC_POLL_INTERVAL": "0.5"}
    process = subprocess.Popen(
        [*_command(), "run"],
        env={**_clean_environment(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        load(orthanc, StudySpec("live"))
        deadline = time.monotonic() + 30
        while not openmrs.attachments() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(openmrs.attachments()) == 1
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    assert [e["message"] for e in events][-1] == "service.stopped"
    assert "study.synced" in [e["message"] for e in events]


def test_help_lists_every_setting() -> None:
    """`sync --help` names every setting's environment variable (passwords have no flag)."""
    done = _run({}, "sync", "--help")
    assert done.returncode == 0
    for name in Settings.model_fields:
        assert name.upper() in done.stdout or name.endswith(("password", "secret", "api_key"))


@pytest.mark.parametrize(
    "command",
    ["run", "sync", "status", "reconcile", "review", "link", "retry", "ignore", "audit", "check"],
)
def test_every_command_is_documented(command: str) -> None:
    """Each command has --help and appears in the README."""
    assert _run({}, command, "--help").returncode == 0
    assert f"orthanc-openmrs {command}" in (ROOT / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    """The README's settings table names every setting."""
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in readme
