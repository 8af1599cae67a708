"""What both benchmarks share: servers, the service's environment, measured subprocesses.

Everything runs on loopback. Every loop here is bounded by a count or a deadline.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble
from orthanc_openmrs_devtools.orthanc_server import OrthancServer

BENCH_DIR = Path(__file__).resolve().parent
PEAK_RSS = BENCH_DIR / "peak_rss.py"

# The OpenMRS reference distro's demo login, which the double accepts.
OPENMRS_USER = "admin"
OPENMRS_PASSWORD = "Admin123"

CHANGES_PAGE = 1000
# 2,000 pages of 1,000 is far more than any run here produces; it only bounds the loop.
CHANGES_MAX_PAGES = 2000
_LOG_TAIL_CHARS = 3000
# Inherited settings would silently change what is measured; the bench sets all it needs.
_SETTING_PREFIXES = ("ORTHANC_", "OPENMRS_", "SYNC_", "EIP_FHIR_")


class BenchError(RuntimeError):
    """A server or a measured process did not do what the benchmark needs."""


# -- servers ---------------------------------------------------------------------------------
def patient_id(index: int) -> str:
    # Fixed width: the double's identifier search is fuzzy (substring), so "BP1" would also
    # find "BP10"; equal lengths keep every search to its one patient.
    return f"BP{index:07d}"


def patient_uuid(identifier: str) -> str:
    """A uuid derived from the identifier, so every fresh double holds the same patients."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"orthanc-openmrs-bench/{identifier}"))


def start_orthanc(workdir: Path) -> OrthancServer:
    server = OrthancServer(workdir / "orthanc", stable_age=1)
    server.start()
    return server


def start_double(latency: float, identifiers: list[str]) -> OpenMRSDouble:
    """A new double holding exactly these patients and no attachments."""
    double = OpenMRSDouble(latency=latency)
    for identifier in identifiers:
        double.add_patient([identifier], uuid=patient_uuid(identifier))
    double.start()
    return double


def double_round_trip(latency: float, samples: int = 20) -> float:
    """Median seconds of one small request to a fresh double: its latency plus the transport.

    Printed next to the configured latency, so that any cost the transport adds on top of the
    latency setting shows in the figures rather than hiding inside them.
    """
    double = start_double(latency, [])
    times = []
    try:
        with httpx.Client(base_url=double.url, auth=(OPENMRS_USER, OPENMRS_PASSWORD)) as client:
            for _ in range(samples):
                started = time.perf_counter()
                client.get("/ws/rest/v1/session").raise_for_status()
                times.append(time.perf_counter() - started)
    finally:
        double.stop()
    return percentile(times, 0.5)


def server_env(
    orthanc: OrthancServer,
    double: OpenMRSDouble,
    *,
    database: Path,
    workers: int,
    poll_interval: float = 1.0,
    retry: tuple[float, float] = (600.0, 600.0),
) -> dict[str, str]:
    """The environment of the service (and of the floor client, which reads the same names).

    `retry` is (SYNC_RETRY_MIN, SYNC_RETRY_MAX): by default nothing that fails is retried within
    a run, since nothing should fail."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    env.update(
        ORTHANC_URL=orthanc.url,
        ORTHANC_USER=orthanc.username,
        ORTHANC_PASSWORD=orthanc.password,
        ORTHANC_PUBLIC_URL=orthanc.url,
        OPENMRS_URL=double.url,
        OPENMRS_USER=OPENMRS_USER,
        OPENMRS_PASSWORD=OPENMRS_PASSWORD,
        SYNC_DATABASE=str(database),
        SYNC_WORKERS=str(workers),
        SYNC_POLL_INTERVAL=str(poll_interval),
        SYNC_RETRY_MIN=str(retry[0]),
        SYNC_RETRY_MAX=str(retry[1]),
    )
    return env


# -- Orthanc's changes -----------------------------------------------------------------------
class ChangesFeed:
    """Reads Orthanc's /changes from a cursor on, and remembers where it stopped."""

    def __init__(self, client: httpx.Client, since: int = 0) -> None:
        self._client = client
        self.cursor = since

    def read(self) -> list[dict[str, Any]]:
        """Every change after the cursor, oldest first."""
        found: list[dict[str, Any]] = []
        for _ in range(CHANGES_MAX_PAGES):
            response = self._client.get(
                "/changes", params={"since": self.cursor, "limit": CHANGES_PAGE}
            )
            response.raise_for_status()
            page = response.json()
            changes = page.get("Changes", [])
            found.extend(changes)
            # An empty page's Last is the high-water mark, not a change we have seen.
            if changes:
                self.cursor = max(self.cursor, int(page["Last"]))
            if page.get("Done") or not changes:
                break
        return found


def wait_until_stable(orthanc: OrthancServer, study_ids: set[str], timeout: float) -> None:
    """Wait for a StableStudy change of every study; reads the feed once, incrementally."""
    stable: set[str] = set()
    deadline = time.monotonic() + timeout
    with orthanc.client() as client:
        feed = ChangesFeed(client)
        while True:
            stable.update(c["ID"] for c in feed.read() if c.get("ChangeType") == "StableStudy")
            missing = study_ids - stable
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise BenchError(f"{len(missing)} studies still not stable after {timeout:.0f} s")
            time.sleep(0.25)


# -- measured subprocesses -------------------------------------------------------------------
@dataclass(frozen=True)
class Measured:
    seconds: float  # wall time from spawn to exit, interpreter start-up included
    stdout: str
    peak_rss_kib: int


def run_measured(
    target: list[str], *, env: dict[str, str], workdir: Path, name: str, timeout: float
) -> Measured:
    """Run `python <target>` under the peak-RSS wrapper; raise unless it exits 0 in time.

    target is what follows `python`: ["-m", "module", ...] or ["script.py", ...].
    """
    report = workdir / f"{name}.peak-rss"
    log = workdir / f"{name}.stderr.log"
    argv = [sys.executable, str(PEAK_RSS), str(report), *target]
    with log.open("wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
        )
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise BenchError(f"{name}: no exit within {timeout:.0f} s\n{tail(log)}") from None
        except BaseException:
            # Ctrl-C or any other failure here: the measured process must not outlive us.
            process.kill()
            process.wait()
            raise
        seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise BenchError(f"{name}: exit code {process.returncode}\n{tail(log)}")
    return Measured(seconds, out.decode(), int(report.read_text(encoding="ascii")))


def tail(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-_LOG_TAIL_CHARS:]
    except FileNotFoundError:
        return ""


# -- figures ---------------------------------------------------------------------------------
def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that was actually observed."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def mib(kib: int) -> float:
    return kib / 1024
