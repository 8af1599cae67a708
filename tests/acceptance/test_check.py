"""`orthanc-openmrs check`, the installer's preflight, run as a subprocess against a real
Orthanc and the OpenMRS double: each misconfiguration is found, and named with what to do."""

from __future__ import annotations

import pytest
from test_cli import _run

from orthanc_openmrs.preflight import NEEDED_PRIVILEGES
from orthanc_openmrs_devtools.orthanc_server import OrthancServer
from support import env_for


def _lines(stdout: str) -> dict[str, str]:
    """Each item's line (and its `->` advice), by item name."""
    items: dict[str, str] = {}
    name = ""
    for line in stdout.splitlines():
        if line.startswith(" "):
            items[name] += "\n" + line.strip()
            continue
        level, rest = line.split(None, 1)
        name = next(n for n in _NAMES if rest.startswith(n))
        items[name] = f"{level} {rest[len(name) :].strip()}"
    return items


_NAMES = (
    "settings",
    "orthanc version",
    "orthanc plugins",
    "orthanc",
    "openmrs login",
    "openmrs privileges",
    "openmrs modules",
    "openmrs",
    "attachment concept",
    "identifier types",
    "viewer link",
)


def test_everything_right_passes_with_the_old_orthanc_warned(orthanc, openmrs, database) -> None:
    """A sound setup: every item ok, exit 0; Debian's Orthanc 1.10.1 gets the decoder warning."""
    done = _run(env_for(orthanc, openmrs, database), "check")
    assert done.returncode == 0, done.stdout + done.stderr
    items = _lines(done.stdout)
    assert items["orthanc version"].startswith("warn 1.10.1 is older than 1.12.11")
    assert items["orthanc plugins"].startswith("ok")
    assert items["openmrs modules"] == (
        "ok webservices.rest 2.48.0, attachments 3.6.0, fhir2 2.3.0"
    )
    assert items["viewer link"].startswith(
        "ok https://pacs.example.org/stone-webviewer/index.html?study="
    )
    others = {k: v for k, v in items.items() if k != "orthanc version"}
    assert all(text.startswith("ok") for text in others.values()), items


def test_wrong_password_is_tried_once_and_nothing_more_is_asked(orthanc, openmrs, database):
    """A refused OpenMRS login fails the check after exactly one failed login."""
    env = {**env_for(orthanc, openmrs, database), "OPENMRS_PASSWORD": "wrong"}
    done = _run(env, "check")
    assert done.returncode == 1
    items = _lines(done.stdout)
    assert items["openmrs login"].startswith("fail OpenMRS refuses user 'admin' (tried once")
    assert "correct OPENMRS_USER and OPENMRS_PASSWORD" in items["openmrs login"]
    assert openmrs.failed_logins("admin") == 1
    assert openmrs.count_requests() == 1
    assert "openmrs privileges" not in items
    assert "wrong" not in done.stdout + done.stderr


def test_missing_privilege_is_named(orthanc, openmrs, database) -> None:
    """A user without Edit Encounters (needed to void) is told which privilege to add."""
    granted = [alternatives[0] for alternatives in NEEDED_PRIVILEGES]
    openmrs.set_privileges([p for p in granted if p != "Edit Encounters"])
    done = _run(env_for(orthanc, openmrs, database), "check")
    assert done.returncode == 1
    assert _lines(done.stdout)["openmrs privileges"] == (
        "fail missing: Edit Encounters\n-> give the user a role with these privileges"
    )
    openmrs.set_privileges(granted)
    assert _run(env_for(orthanc, openmrs, database), "check").returncode == 0


def test_unknown_identifier_type_is_named(orthanc, openmrs, database) -> None:
    """SYNC_IDENTIFIER_TYPES naming a type OpenMRS does not have fails; known ones pass."""
    env = {
        **env_for(orthanc, openmrs, database),
        "SYNC_IDENTIFIER_TYPES": "OpenMRS ID,Hospital Number",
    }
    done = _run(env, "check")
    assert done.returncode == 1
    assert _lines(done.stdout)["identifier types"].startswith(
        "fail unknown to OpenMRS: 'Hospital Number'"
    )


def test_orthanc_without_gdcm_fails(tmp_path, openmrs, database) -> None:
    """An Orthanc that did not load the GDCM plugin cannot preview JPEG 2000 or JPEG-LS."""
    with OrthancServer(tmp_path / "plain", gdcm=False) as plain:
        done = _run(env_for(plain, openmrs, database), "check")
    assert done.returncode == 1
    assert _lines(done.stdout)["orthanc plugins"].startswith("fail the GDCM plugin is not loaded")


def test_wrong_orthanc_password_and_missing_module(orthanc, openmrs, database) -> None:
    """Orthanc refusing its credentials, and a stopped attachments module, are both named."""
    openmrs.stop_module("attachments")
    env = {**env_for(orthanc, openmrs, database), "ORTHANC_PASSWORD": "nope"}
    done = _run(env, "check")
    assert done.returncode == 1
    items = _lines(done.stdout)
    assert items["orthanc"].startswith("fail")
    assert "correct ORTHANC_USER and ORTHANC_PASSWORD" in items["orthanc"]
    assert items["openmrs modules"].startswith("fail not running: attachments")


@pytest.mark.parametrize("missing", ["ORTHANC_PUBLIC_URL"])
def test_invalid_settings_are_the_first_failure(orthanc, openmrs, database, missing) -> None:
    """Settings that do not load are reported as the check's failed item (exit 2)."""
    env = {k: v for k, v in env_for(orthanc, openmrs, database).items() if k != missing}
    done = _run(env, "check")
    assert done.returncode == 2
    assert done.stdout.startswith("fail  settings")
    assert missing in done.stdout
