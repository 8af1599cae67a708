"""One real Orthanc, one OpenMRS double and one `orthanc-openmrs run` for the whole browser
module, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from orthanc_openmrs.models import State
from orthanc_openmrs.store import Store
from orthanc_openmrs.web.people import Privilege
from orthanc_openmrs_devtools.dicom_factory import StudySpec
from orthanc_openmrs_devtools.openmrs_double import Identifier, OpenMRSDouble
from orthanc_openmrs_devtools.orthanc_server import OrthancServer
from support import env_for, load

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "build" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CLERK, CLERK_PASSWORD = "clerk", "Clerk123"
VIEWER, VIEWER_PASSWORD = "viewer", "Viewer123"
SCRIPT = "<script>alert(1)</script>"

STUDIES = {
    # Unmatched: the modality typed 0 for O; the patient is registered as UN-4O4.
    "lost": StudySpec("lost", patient_id="UN-404", patient_name="Lost^Lena",
                      birth_date="19850203", sex="F", description="XR HAND"),
    # Ambiguous: two patients carry TW-1.
    "twins": StudySpec("twins", patient_id="TW-1", patient_name="Twin^Ada",
                       birth_date="19991231", sex="F", description="CT HEAD"),
    # Mismatch: MM-7 is one patient, but OpenMRS has another birth date.
    "mismatch": StudySpec("mismatch", patient_id="MM-7", patient_name="Moss^Max",
                          birth_date="19700506", sex="M", description="MR KNEE"),
    # Orthanc keeps names and descriptions verbatim, tags included.
    "script": StudySpec("script", patient_id="XSS-1", patient_name=f"{SCRIPT}^Eve",
                        description=f"{SCRIPT} CT ABDOMEN"),
}  # fmt: skip


@dataclass
class Stack:
    orthanc: OrthancServer
    openmrs: OpenMRSDouble
    database: Path
    base: str
    ids: dict[str, str]
    patients: dict[str, str]
    browser: Browser

    def state(self, key: str) -> State:
        store = Store(self.database, read_only=True)
        try:
            row = store.get(self.ids[key])
        finally:
            store.close()
        assert row is not None
        return row.state


def _seed(openmrs: OpenMRSDouble) -> dict[str, str]:
    openmrs.add_user(CLERK, CLERK_PASSWORD, privileges=[p.value for p in Privilege],
                     role="Imaging Clerk")  # fmt: skip
    openmrs.add_user(VIEWER, VIEWER_PASSWORD, privileges=[Privilege.VIEW.value],
                     role="Imaging Viewer")  # fmt: skip
    return {
        "lena": openmrs.add_patient(["UN-4O4"], given="Lena", family="Lost", gender="F",
                                    birthdate=date(1985, 2, 3)),
        "ada": openmrs.add_patient([Identifier("TW-1")], given="Ada", family="Twin", gender="F",
                                   birthdate=date(1999, 12, 31)),
        "bea": openmrs.add_patient([Identifier("TW-1", type_name="ID Card")], given="Bea",
                                   family="Twin", gender="F", birthdate=date(2001, 3, 4)),
        "max": openmrs.add_patient(["MM-7"], given="Max", family="Moss", gender="M",
                                   birthdate=date(1970, 5, 5)),
    }  # fmt: skip


def _command() -> list[str]:
    script = Path(sys.executable).with_name("orthanc-openmrs")
    return [str(script)] if script.exists() else [sys.executable, "-m", "orthanc_openmrs"]


def _wait(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except (httpx.TransportError, AssertionError):
            pass
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The studies loaded, `run` started with default settings (the servers, credentials,
    ledger and a port of its own given), and its first pass done."""
    tmp = tmp_path_factory.mktemp("browser")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    orthanc = OrthancServer(tmp / "orthanc", stable_age=1)
    orthanc.start()
    openmrs = OpenMRSDouble()
    openmrs.start()
    process = None
    log = (tmp / "service.log").open("w")
    try:
        patients = _seed(openmrs)
        ids = load(orthanc, *STUDIES.values())
        database = tmp / "ledger.sqlite3"
        env = env_for(orthanc, openmrs, database)
        for default in ("SYNC_RETRY_MIN", "SYNC_RETRY_MAX"):
            env.pop(default)
        prefixes = ("ORTHANC_", "OPENMRS_", "SYNC_", "EIP_", "OAUTH_")
        clean = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
        process = subprocess.Popen([*_command(), "run"], env={**clean, **env}, stdout=log,
                                   stderr=subprocess.STDOUT)  # fmt: skip
        base = f"http://127.0.0.1:{env['SYNC_HTTP_PORT']}"
        assert _wait(lambda: httpx.get(f"{base}/ready", timeout=5).status_code == 200)
        stack_ = Stack(orthanc, openmrs, database, base, ids, patients, None)  # type: ignore[arg-type]
        assert _wait(lambda: all(stack_.state(k) is not State.PENDING for k in STUDIES))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            stack_.browser = browser
            try:
                yield stack_
            finally:
                browser.close()
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        log.close()
        openmrs.stop()
        orthanc.kill()


def shot(page, name: str) -> None:
    """Keep a screenshot of the page as a test artifact."""
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
