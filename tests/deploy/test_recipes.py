"""The deployment recipes kept in the repository: the compose file that replaces Ozone's
service, the systemd unit, and the alert rules, each checked against what the service reads
and exposes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orthanc_openmrs.config import Settings
from orthanc_openmrs.http.metrics import LedgerReader, Metrics
from orthanc_openmrs.monitor import Monitor
from orthanc_openmrs.store import Store

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _variables_read() -> set[str]:
    """Every environment variable the settings read, Ozone's aliases included."""
    names = set()
    for name, info in Settings.model_fields.items():
        names.add(name.upper())
        choices = getattr(info.validation_alias, "choices", ())
        names.update(str(choice).upper() for choice in choices)
    return names


def test_compose_replaces_ozones_service_with_variables_the_service_reads() -> None:
    """deploy/compose.yaml defines Ozone's service name, sets only variables the service
    reads, keeps the ledger on a named volume, restarts unless stopped, and checks /health."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    service = compose["services"]["eip-openmrs-orthanc"]
    environment = service["environment"]
    unknown = set(environment) - _variables_read()
    assert not unknown, f"set but never read: {sorted(unknown)}"
    for ozone_name in ("ORTHANC_URL", "ORTHANC_PUBLIC_URL", "OPENMRS_URL", "EIP_FHIR_USERNAME"):
        assert ozone_name in environment
    assert service["restart"] == "unless-stopped"
    (volume,) = service["volumes"]
    name, _, target = volume.partition(":")
    assert target == "/var/lib/orthanc-openmrs"
    assert name in compose["volumes"]
    assert "/health" in " ".join(service["healthcheck"]["test"])


def test_dockerfile_sets_only_variables_the_service_reads() -> None:
    """The image's ENV names settings the service reads (plus PATH and Python's own)."""
    text = (ROOT / "Dockerfile").read_text()
    block = re.search(r"^ENV (.*?)(?=^\S)", text, re.MULTILINE | re.DOTALL)
    assert block is not None
    names = set(re.findall(r"([A-Z_]+)=", block.group(1)))
    assert names - _variables_read() == {"PATH", "PYTHONDONTWRITEBYTECODE"}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit (pointed at this installation's command), and
    it runs as a dynamic user in a state directory, without new privileges, the system
    read-only."""
    unit = (DEPLOY / "orthanc-openmrs.service").read_text()
    for setting in (
        "DynamicUser=yes",
        "StateDirectory=orthanc-openmrs",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "UMask=0077",
        "RestartPreventExitStatus=2 3",
    ):
        assert setting in unit.splitlines(), setting
    command = Path(sys.executable).with_name("orthanc-openmrs")
    local = tmp_path / "orthanc-openmrs.service"
    local.write_text(unit.replace("/opt/orthanc-openmrs/bin/orthanc-openmrs", str(command)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(local)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""
    variables = set(re.findall(r"^Environment=([A-Z_]+)=", unit, re.MULTILINE))
    assert variables <= _variables_read()


def test_alert_rules_use_metrics_the_service_exposes(tmp_path: Path) -> None:
    """Every metric an alert rule names is one /metrics shows."""
    store = Store(tmp_path / "ledger.sqlite3")
    store.advance_cursor(1)
    monitor = Monitor(grace=10)
    monitor.pass_done()
    monitor.changes_seen(1)
    reader = LedgerReader(Store(tmp_path / "ledger.sqlite3", read_only=True))
    try:
        exposed = Metrics(monitor, reader).render().decode()
    finally:
        reader.close()
        store.close()
    names = set(re.findall(r"^(orthanc_openmrs_\w+?)(?:_bucket|_count|_sum)?[{ ]", exposed, re.M))
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yaml").read_text())
    used = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in re.findall(r"orthanc_openmrs_\w+", rule["expr"])
    }
    assert used
    assert used <= names, used - names
