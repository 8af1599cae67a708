"""Run-mode latency: from Orthanc's StableStudy change to the attachment stored in OpenMRS.

Usage: python bench/latency.py [--duration S] [--rate R] [--poll-interval S] [--latency S]

Starts a real Orthanc (StableAge 1 s) and the OpenMRS double, starts `orthanc-openmrs run`,
waits until it has caught up on the empty PACS, then uploads one small single-instance CT
study every 1/R s for S seconds. A background thread polls Orthanc's /changes every 100 ms
and notes when it first sees each study's StableStudy change; the double notes when it
stores each attachment. Latency = stored_at - StableStudy seen. Finally the service gets
SIGTERM and must exit 0. The exit status is 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from benchlib import (
    BenchError,
    ChangesFeed,
    double_round_trip,
    patient_id,
    patient_uuid,
    percentile,
    server_env,
    start_double,
    start_orthanc,
    tail,
)

from orthanc_openmrs_devtools.dicom_factory import InstanceSpec, SeriesSpec, StudySpec, build_study
from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble
from orthanc_openmrs_devtools.orthanc_server import OrthancServer

CHANGES_POLL = 0.1  # the bench's own view of StableStudy is at most this late
CATCH_UP_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# The service logs this once its first pass has read all Orthanc holds (nothing, here).
CAUGHT_UP_EVENT = b"catchup.done"


# -- the service -----------------------------------------------------------------------------
class ServiceProcess:
    """`orthanc-openmrs run` as a subprocess; its log goes to a file, read as it comes."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.caught_up = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orthanc_openmrs", "run"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self.process.stderr is not None
        # Reading the pipe all along also keeps a chatty service from blocking on it.
        self._reader = threading.Thread(
            target=self._read_log, args=(self.process.stderr,), daemon=True
        )
        self._reader.start()

    def _read_log(self, stream: IO[bytes]) -> None:
        with self.log_path.open("wb") as log:
            # Ends at EOF, that is when the service exits.
            for line in stream:
                log.write(line)
                log.flush()
                if CAUGHT_UP_EVENT in line:
                    self.caught_up.set()

    def wait_caught_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.caught_up.wait(0.1):
            if self.process.poll() is not None:
                raise BenchError(f"the service exited with code {self.process.returncode}")
            if time.monotonic() >= deadline:
                raise BenchError(f"the service did not catch up within {timeout:.0f} s")

    def terminate(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM, then wait; (exit code or None if it had to be killed, seconds it took)."""
        started = time.perf_counter()
        self.process.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            code = None
        self._reader.join(5.0)
        return code, time.perf_counter() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# -- the bench's view of Orthanc -------------------------------------------------------------
class StableWatcher(threading.Thread):
    """Polls /changes and notes when each StableStudy change is first seen (time.time())."""

    def __init__(self, orthanc: OrthancServer, max_seconds: float) -> None:
        super().__init__(name="stable-watcher", daemon=True)
        self.seen: dict[str, float] = {}
        self.error: BaseException | None = None
        self._orthanc = orthanc
        self._stop_event = threading.Event()
        self._deadline = time.monotonic() + max_seconds

    def run(self) -> None:
        try:
            with self._orthanc.client() as client:
                feed = ChangesFeed(client)
                while time.monotonic() < self._deadline:
                    self._note(feed.read())
                    if self._stop_event.wait(CHANGES_POLL):
                        return
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _note(self, changes: list[dict[str, object]]) -> None:
        now = time.time()
        for change in changes:
            if change.get("ChangeType") == "StableStudy":
                self.seen.setdefault(str(change["ID"]), now)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10.0)


# -- load ------------------------------------------------------------------------------------
def build_files(count: int) -> list[bytes]:
    """One single-instance study per patient, so an attachment's patient names its study."""
    run = f"{time.time_ns()}"  # fresh UIDs each run, though the storage is fresh anyway
    slice_ = (InstanceSpec("ct", 1, rows=64, columns=64),)
    return [
        build_study(
            StudySpec(
                f"bench-latency-{run}-{i}",
                patient_id=patient_id(i),
                accession=f"BL{i}",
                series=(SeriesSpec(1, instances=slice_),),
            )
        )[0]
        for i in range(count)
    ]


def upload_steadily(orthanc: OrthancServer, files: list[bytes], rate: float) -> list[str]:
    """Upload file i at start + i/rate; the Orthanc study IDs, in order."""
    study_ids = []
    with orthanc.client() as client:
        started = time.monotonic()
        for index, dicom in enumerate(files):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            response = client.post("/instances", content=dicom)
            response.raise_for_status()
            study_ids.append(str(response.json()["ParentStudy"]))
        elapsed = time.monotonic() - started
    print(f"uploaded {len(files)} studies in {elapsed:.1f} s ({len(files) / elapsed:.1f}/s)")
    return study_ids


def wait_for_attachments(double: OpenMRSDouble, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(double.attachments()) < count and time.monotonic() < deadline:
        time.sleep(0.2)


# -- figures ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    latencies: list[float]
    missing: int  # studies without an attachment
    unseen: int  # attachments whose StableStudy the bench never saw
    duplicates: int


def latencies(
    double: OpenMRSDouble, study_ids: list[str], identifiers: list[str], seen: dict[str, float]
) -> Outcome:
    study_of = {patient_uuid(pid): sid for pid, sid in zip(identifiers, study_ids, strict=True)}
    attachments = double.attachments()
    per_patient = Counter(a.patient_uuid for a in attachments)
    values, unseen = [], 0
    for attachment in attachments:
        stable = seen.get(study_of.get(attachment.patient_uuid, ""))
        if stable is None:
            unseen += 1
            continue
        values.append(attachment.stored_at - stable)
    return Outcome(
        latencies=values,
        missing=len(study_ids) - len(per_patient),
        unseen=unseen,
        duplicates=sum(n - 1 for n in per_patient.values()),
    )


def report(outcome: Outcome, poll_interval: float) -> bool:
    values = outcome.latencies
    ok = outcome.missing == 0 and outcome.unseen == 0 and outcome.duplicates == 0
    print(
        f"attachments: {len(values)} measured, {outcome.missing} missing, "
        f"{outcome.unseen} without a StableStudy seen, {outcome.duplicates} duplicates"
    )
    if not values:
        return False
    p95 = percentile(values, 0.95)
    print(f"count {len(values)}")
    print(f"p50 {percentile(values, 0.5):.3f} s")
    print(f"p95 {p95:.3f} s")
    print(f"max {max(values):.3f} s")
    print(f"min {min(values):.3f} s")
    bound = poll_interval + 1.0
    print(f"p95 < poll interval + 1 s ({bound:.1f} s): {'yes' if p95 < bound else 'NO'}")
    return ok and p95 < bound


# -- main ------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of uploads (30)")
    parser.add_argument("--rate", type=float, default=10.0, help="studies per second (10)")
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, help="the service's SYNC_POLL_INTERVAL (1)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.02, help="seconds the double waits per request (0.02)"
    )
    args = parser.parse_args()
    if args.duration <= 0 or args.rate <= 0 or args.poll_interval <= 0:
        parser.error("--duration, --rate and --poll-interval must be positive")
    return args


def measure(args: argparse.Namespace, workdir: Path) -> bool:
    count = max(1, round(args.duration * args.rate))
    identifiers = [patient_id(i) for i in range(count)]
    files = build_files(count)  # before any timing
    trip = double_round_trip(args.latency)
    print(
        f"OpenMRS double: latency setting {args.latency * 1000:.0f} ms, "
        f"measured round trip {trip * 1000:.1f} ms per request"
    )
    orthanc = start_orthanc(workdir)
    double = start_double(args.latency, identifiers)
    service = None
    try:
        env = server_env(
            orthanc,
            double,
            database=workdir / "ledger.sqlite3",
            workers=4,
            poll_interval=args.poll_interval,
        )
        started = time.perf_counter()
        service = ServiceProcess(env, workdir / "service.log")
        service.wait_caught_up(CATCH_UP_TIMEOUT)
        print(
            f"service caught up on the empty PACS {time.perf_counter() - started:.1f} s after start"
        )
        watcher = StableWatcher(orthanc, args.duration + args.poll_interval + 120)
        watcher.start()
        study_ids = upload_steadily(orthanc, files, args.rate)
        wait_for_attachments(double, count, args.poll_interval + 60)
        watcher.stop()
        if watcher.error is not None:
            raise BenchError(f"polling /changes failed: {watcher.error!r}")
        code, took = service.terminate(STOP_TIMEOUT)
        print(f"service exit code after SIGTERM: {code} (stopped in {took:.1f} s)")
        ok = report(latencies(double, study_ids, identifiers, watcher.seen), args.poll_interval)
        if code != 0:
            print(tail(service.log_path), file=sys.stderr)
        return ok and code == 0
    finally:
        if service is not None:
            service.kill()
        double.stop()
        orthanc.kill()


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        try:
            return 0 if measure(args, Path(tmp)) else 1
        except BenchError as exc:
            print(f"latency: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
