"""Every DICOM file pydicom and pydicom-data ship, one study each, through a real Orthanc (with
GDCM, supervised: it is started again when a file crashes it) and the service; prints the
table of outcomes and how each preview was made. Figures are printed, never asserted.

    .venv/bin/python bench/real_files.py [--details]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from orthanc_openmrs.cli import build_service
from orthanc_openmrs.config import load_settings
from orthanc_openmrs.errors import ServerError
from orthanc_openmrs.store import Store
from orthanc_openmrs_devtools import real_file_run as run
from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble
from orthanc_openmrs_devtools.orthanc_server import OrthancServer
from orthanc_openmrs_devtools.real_files import real_files

MAX_PASSES = 20


def sync_until_done(settings) -> int:
    """Passes until one completes: a pass ends early each time Orthanc goes down."""
    for passes in range(1, MAX_PASSES + 1):
        with build_service(settings) as service:
            service.openmrs.check_credentials()
            try:
                service.run_pass()
            except ServerError as exc:
                if not exc.unavailable:
                    raise
                time.sleep(0.5)  # Orthanc is being started again
                continue
        return passes
    raise SystemExit(f"no pass completed in {MAX_PASSES}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--details", action="store_true", help="one line per file")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, OpenMRSDouble() as openmrs:
        orthanc = OrthancServer(Path(tmp) / "orthanc", stable_age=1)
        orthanc.start()
        orthanc.supervise()
        try:
            files = list(real_files())
            uploaded = run.upload(orthanc, files)
            for item in uploaded:
                if item.orthanc_id:
                    openmrs.add_patient([item.file.patient_id])
            orthanc.wait_until_stable(timeout=120)
            settings = load_settings(
                None,
                orthanc_url=orthanc.url,
                orthanc_user=orthanc.username,
                orthanc_password=orthanc.password,
                orthanc_public_url="https://pacs.example.org",
                openmrs_url=openmrs.url,
                openmrs_user="admin",
                openmrs_password="Admin123",
                sync_database=Path(tmp) / "ledger.sqlite3",
                sync_retry_min=0,
                sync_retry_max=0,
                sync_workers=2,
            )
            passes = sync_until_done(settings)
            store = Store(settings.sync_database)
            verdicts = run.judge(orthanc, openmrs.attachments(include_voided=True), store, uploaded)
            print(run.table(verdicts))
            print(f"passes until one completed: {passes}; Orthanc restarted {orthanc.restarts}x")
            print(f"instances Orthanc is no longer asked to render: {len(store.not_to_render())}")
            low = [v for v in verdicts if v.correlation is not None and v.correlation < run.AGREES]
            print(f"images below r={run.AGREES} with the other party's rendering: {len(low)}")
            if args.details:
                print(run.details(verdicts))
        finally:
            orthanc.kill()
    print(f"wall time {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
