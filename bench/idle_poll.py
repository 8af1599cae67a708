"""What an idle poll costs OpenMRS with many studies waiting for their patients.

A ledger holds N unmatched studies (default 10,000), each waiting for its own identifier, and
the service polls a real (empty) Orthanc and the OpenMRS double with nothing changing. The
script prints the OpenMRS requests of each idle pass, then registers one of the awaited
patients and prints what the next pass cost and how many studies it woke.

    .venv/bin/python bench/idle_poll.py [--waiting 10000] [--passes 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchlib import OPENMRS_PASSWORD, OPENMRS_USER, start_orthanc

from orthanc_openmrs.cli import build_service
from orthanc_openmrs.config import load_settings
from orthanc_openmrs.models import Outcome, State, StudyResult
from orthanc_openmrs.store import BACKLOG, Store
from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble


def _seed(path: Path, waiting: int, now: float) -> None:
    store = Store(path)
    ids = [f"{i:08x}-00000000-00000000-00000000-00000000" for i in range(waiting)]
    store.advance_cursor(0)
    store.mark_catchup_done()
    store.discover(ids, now, priority=BACKLOG, due_at=now)
    with store.batch():
        for i, orthanc_id in enumerate(ids):
            result = StudyResult(orthanc_id, Outcome.UNMATCHED, candidates=(f"WAIT{i:07d}",))
            store.record(result, State.UNMATCHED, now, now + 3600)
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, OpenMRSDouble() as openmrs:
        orthanc = start_orthanc(Path(tmp))
        try:
            ledger = Path(tmp) / "ledger.sqlite3"
            _seed(ledger, args.waiting, time.time())
            settings = load_settings(
                None,
                orthanc_url=orthanc.url,
                orthanc_user=orthanc.username,
                orthanc_password=orthanc.password,
                orthanc_public_url="https://pacs.example.org",
                openmrs_url=openmrs.url,
                openmrs_user=OPENMRS_USER,
                openmrs_password=OPENMRS_PASSWORD,
                sync_database=ledger,
            )
            print(f"ledger: {args.waiting} unmatched studies waiting, nothing due for an hour")
            with build_service(settings) as service:
                service.openmrs.check_credentials()
                for n in range(1, args.passes + 1):
                    openmrs.reset_requests()
                    summary = service.run_pass()
                    polls = sum(1 for r in openmrs.requests if "_lastUpdated" in r.query)
                    print(
                        f"idle pass {n}: OpenMRS requests {openmrs.count_requests()} "
                        f"(patient polls {polls}), studies attempted {summary.total}"
                    )
                openmrs.add_patient([f"WAIT{args.waiting // 2:07d}"])
                openmrs.reset_requests()
                woken = service._follow_patients()
                print(
                    f"after one registration: poll cost {openmrs.count_requests()} OpenMRS "
                    f"request(s), studies woken {woken}"
                )
        finally:
            orthanc.kill()


if __name__ == "__main__":
    main()
