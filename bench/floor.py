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
import base64
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import httpx

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


class _NoCookies(CookieJar):
    """The service's own plumbing: Orthanc's answers carry no cookies to parse."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


class Clients:
    """One httpx client per server and per thread, set up as the service sets up its own
    (credentials as a fixed header, no cookie parsing for Orthanc), so that the floor and the
    service differ in what they do, not in how they talk HTTP."""

    def __init__(self) -> None:
        env = os.environ
        self._orthanc_headers = (
            _basic(env["ORTHANC_USER"], env["ORTHANC_PASSWORD"]) if env["ORTHANC_USER"] else {}
        )
        self._openmrs_headers = _basic(env["OPENMRS_USER"], env["OPENMRS_PASSWORD"])
        self._local = threading.local()
        self._all: list[httpx.Client] = []
        self._lock = threading.Lock()
        self.orthanc_requests = Counter()
        self.openmrs_requests = Counter()

    def _clients(self) -> tuple[httpx.Client, httpx.Client]:
        pair: tuple[httpx.Client, httpx.Client] | None = getattr(self._local, "pair", None)
        if pair is None:
            env = os.environ
            orthanc = httpx.Client(
                base_url=env["ORTHANC_URL"],
                headers=self._orthanc_headers,
                cookies=_NoCookies(),
                timeout=TIMEOUT,
                limits=httpx.Limits(
                    max_connections=2,
                    max_keepalive_connections=1,
                    keepalive_expiry=ORTHANC_KEEPALIVE_EXPIRY,
                ),
            )
            openmrs = httpx.Client(
                base_url=env["OPENMRS_URL"],
                headers=self._openmrs_headers,
                timeout=TIMEOUT,
                limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
            )
            pair = self._local.pair = (orthanc, openmrs)
            with self._lock:
                self._all.extend(pair)
        return pair

    def close(self) -> None:
        for client in self._all:
            client.close()

    def orthanc_get(self, path: str, accept: str = "application/json") -> httpx.Response:
        self.orthanc_requests.add()
        response = self._clients()[0].get(path, headers={"Accept": accept})
        response.raise_for_status()
        return response

    def openmrs_get(self, path: str, params: dict[str, str | int]) -> Any:
        self.openmrs_requests.add()
        response = self._clients()[1].get(
            path, params=params, headers={"Accept": "application/json"}
        )
        response.raise_for_status()
        return response.json()

    def openmrs_upload(self, patient: str, caption: str, image: bytes) -> None:
        self.openmrs_requests.add()
        response = self._clients()[1].post(
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
