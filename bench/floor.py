"""The floor: the requests a sync of each study needs, replayed with no logic and no state.

Usage: python floor.py PLAN.json --workers N [--no-lookup]

PLAN.json is {"studies": [[orthanc_id, patient_identifier], ...],
"patients": {identifier: uuid}}. Servers and credentials come from the service's own
environment variables (ORTHANC_URL, ORTHANC_USER, ..., OPENMRS_PASSWORD).

Per study, against Orthanc: GET /studies/{id}, /studies/{id}/series, /series/{first}/instances,
/instances/{first}/simplified-tags and /instances/{first}/rendered (JPEG); against OpenMRS:
the patient search (skipped with --no-lookup, where the uuid comes from the plan), the
patient's attachment list, and the upload of the rendered bytes. Nothing is parsed beyond the
IDs the next request needs. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from orthanc_openmrs.transport import NoCookies, ThreadClients, basic_auth

REST = "/ws/rest/v1"
# The same representation the service asks for, so the double does the same work.
PATIENT_REP = (
    "custom:(uuid,display,voided,identifiers:(identifier,voided,identifierType:(uuid,name)))"
)
# Orthanc drops idle connections after 1 s; a pooled one reused just then would fail.
ORTHANC_KEEPALIVE_EXPIRY = 0.8
TIMEOUT = 30.0


class Counter:
    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


class Clients:
    """One httpx client per server and per thread, made with the service's own plumbing
    (credentials as a fixed header, no cookie parsing for Orthanc), so that the floor and the
    service differ in what they do, not in how they talk HTTP."""

    def __init__(self) -> None:
        env = os.environ
        orthanc_headers = (
            basic_auth(env["ORTHANC_USER"], env["ORTHANC_PASSWORD"]) if env["ORTHANC_USER"] else {}
        )
        self._orthanc = ThreadClients(
            lambda: httpx.Client(
                base_url=env["ORTHANC_URL"],
                headers=orthanc_headers,
                cookies=NoCookies(),
                timeout=TIMEOUT,
                limits=httpx.Limits(
                    max_connections=2,
                    max_keepalive_connections=1,
                    keepalive_expiry=ORTHANC_KEEPALIVE_EXPIRY,
                ),
            )
        )
        self._openmrs = ThreadClients(
            lambda: httpx.Client(
                base_url=env["OPENMRS_URL"],
                headers=basic_auth(env["OPENMRS_USER"], env["OPENMRS_PASSWORD"]),
                timeout=TIMEOUT,
                limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
            )
        )
        self.orthanc_requests = Counter()
        self.openmrs_requests = Counter()

    def close(self) -> None:
        self._orthanc.close()
        self._openmrs.close()

    def orthanc_get(self, path: str, accept: str = "application/json") -> httpx.Response:
        self.orthanc_requests.add()
        response = self._orthanc.get().get(path, headers={"Accept": accept})
        response.raise_for_status()
        return response

    def openmrs_get(self, path: str, params: dict[str, str | int]) -> Any:
        self.openmrs_requests.add()
        response = self._openmrs.get().get(
            path, params=params, headers={"Accept": "application/json"}
        )
        response.raise_for_status()
        return response.json()

    def openmrs_upload(self, patient: str, caption: str, image: bytes) -> None:
        self.openmrs_requests.add()
        response = self._openmrs.get().post(
            f"{REST}/attachment",
            data={"patient": patient, "fileCaption": caption},
            files={"file": ("floor.jpg", image, "image/jpeg")},
            headers={"Accept": "application/json"},
        )
        response.raise_for_status()


def replay(clients: Clients, study_id: str, identifier: str, known_uuid: str | None) -> None:
    """One study's necessary requests, in the order the service needs their answers."""
    study = clients.orthanc_get(f"/studies/{study_id}").json()
    series = clients.orthanc_get(f"/studies/{study_id}/series").json()
    instances = clients.orthanc_get(f"/series/{series[0]['ID']}/instances").json()
    first = instances[0]["ID"]
    clients.orthanc_get(f"/instances/{first}/simplified-tags")
    image = clients.orthanc_get(f"/instances/{first}/rendered", accept="image/jpeg").content
    patient = known_uuid or lookup(clients, identifier)
    clients.openmrs_get(f"{REST}/attachment", {"patient": patient, "limit": 100, "startIndex": 0})
    caption = f"floor {study['MainDicomTags']['StudyInstanceUID']}"
    clients.openmrs_upload(patient, caption, image)


def lookup(clients: Clients, identifier: str) -> str:
    found = clients.openmrs_get(
        f"{REST}/patient",
        {"identifier": identifier, "v": PATIENT_REP, "limit": 100, "startIndex": 0},
    )
    return str(found["results"][0]["uuid"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", type=Path)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--no-lookup", action="store_true", help="take patient uuids from plan")
    args = parser.parse_args()
    plan = json.loads(args.plan.read_text(encoding="utf-8"))
    known = plan["patients"] if args.no_lookup else {}
    clients = Clients()
    started = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        jobs = [
            pool.submit(replay, clients, study_id, identifier, known.get(identifier))
            for study_id, identifier in plan["studies"]
        ]
        try:
            for job in jobs:
                job.result()
        except BaseException:
            # The first failure ends the run with its traceback; the rest are not sent.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    seconds = time.perf_counter() - started
    clients.close()
    summary = {
        "studies": len(plan["studies"]),
        "seconds": seconds,
        "requests": {
            "orthanc": clients.orthanc_requests.value,
            "openmrs": clients.openmrs_requests.value,
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
