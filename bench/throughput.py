"""Throughput of one `orthanc-openmrs sync` pass, next to the floor of the same requests.

Usage: python bench/throughput.py [--studies N] [--latency S] [--workers LIST]

Starts a real Orthanc (fresh temporary storage) and the OpenMRS double, loads N synthetic
studies, then for each worker count runs the service's `sync --json` pass and the floor
client (bench/floor.py) as subprocesses, each against a fresh double and, for the service,
a fresh ledger. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from benchlib import (
    BENCH_DIR,
    BenchError,
    Measured,
    double_round_trip,
    mib,
    patient_id,
    patient_uuid,
    run_measured,
    server_env,
    start_double,
    start_orthanc,
    wait_until_stable,
)

from orthanc_openmrs.config import Settings
from orthanc_openmrs.devtools.dicom_factory import InstanceSpec, SeriesSpec, StudySpec, build_study
from orthanc_openmrs.devtools.orthanc_server import OrthancServer

STUDIES_PER_PATIENT = 4  # several studies per patient, so the service's patient cache can help
SERIES_PER_STUDY = 3
SLICES_PER_SERIES = 2
# A few uploaders: Orthanc ingests on about one core, and building the files needs the other.
LOAD_THREADS = 4
FLOOR = BENCH_DIR / "floor.py"


@dataclass(frozen=True)
class Corpus:
    studies: list[tuple[str, str]]  # (Orthanc study ID, patient identifier), in load order
    patients: list[str]


@dataclass(frozen=True)
class Run:
    """One measured subprocess: the service's pass or a floor replay."""

    measured: Measured
    studies: int
    orthanc_requests: int
    openmrs_requests: int
    double_saw: int  # requests the double recorded, to cross-check the client's own count

    @property
    def rate(self) -> float:
        return self.studies / self.measured.seconds


@dataclass(frozen=True)
class Bench:
    orthanc: OrthancServer
    corpus: Corpus
    workdir: Path
    latency: float
    plan: Path  # the floor's input

    @property
    def timeout(self) -> float:
        # Generous (0.5 s a study even with one worker) but finite.
        return 120 + 0.5 * len(self.corpus.studies)


# -- loading ---------------------------------------------------------------------------------
def study_spec(index: int, patients: int) -> StudySpec:
    slices = tuple(
        InstanceSpec("ct", n, rows=64, columns=64) for n in range(1, SLICES_PER_SERIES + 1)
    )
    return StudySpec(
        f"bench-throughput-{index}",
        patient_id=patient_id(index % patients),
        accession=f"BT{index}",
        series=tuple(SeriesSpec(n, instances=slices) for n in range(1, SERIES_PER_STUDY + 1)),
    )


def load_one(client: httpx.Client, index: int, patients: int) -> tuple[int, str, str]:
    spec = study_spec(index, patients)
    study_id = ""
    for dicom in build_study(spec):
        response = client.post("/instances", content=dicom)
        if response.status_code != httpx.codes.OK:
            raise BenchError(f"POST /instances: HTTP {response.status_code}: {response.text}")
        study_id = response.json()["ParentStudy"]
    return index, study_id, spec.patient_id


def load_corpus(orthanc: OrthancServer, count: int) -> Corpus:
    """Build and upload the studies with a few threads sharing one pooled client."""
    patients = max(1, math.ceil(count / STUDIES_PER_PATIENT))
    loaded: list[tuple[int, str, str]] = []
    step = max(1, count // 10)
    started = time.perf_counter()
    with orthanc.client() as client, ThreadPoolExecutor(LOAD_THREADS) as pool:
        pending: set[Future[tuple[int, str, str]]] = set()
        for index in range(count):
            # A bounded window: the built files of at most this many studies wait in memory.
            if len(pending) >= 2 * LOAD_THREADS:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                loaded.extend(f.result() for f in done)
            pending.add(pool.submit(load_one, client, index, patients))
            if (index + 1) % step == 0:
                rate = (index + 1) / (time.perf_counter() - started)
                print(f"  loading: {index + 1}/{count} studies ({rate:.0f} studies/s)", flush=True)
        loaded.extend(f.result() for f in wait(pending).done)
    loaded.sort()
    return Corpus(
        studies=[(study_id, pid) for _, study_id, pid in loaded],
        patients=[patient_id(i) for i in range(patients)],
    )


def write_plan(corpus: Corpus, path: Path) -> None:
    plan = {
        "studies": corpus.studies,
        "patients": {pid: patient_uuid(pid) for pid in corpus.patients},
    }
    path.write_text(json.dumps(plan), encoding="utf-8")


# -- runs ------------------------------------------------------------------------------------
def run_service(bench: Bench, workers: int) -> Run:
    double = start_double(bench.latency, bench.corpus.patients)
    try:
        ledger = bench.workdir / f"ledger-{workers}.sqlite3"
        env = server_env(bench.orthanc, double, database=ledger, workers=workers)
        measured = run_measured(
            ["-m", "orthanc_openmrs", "sync", "--json"],
            env=env,
            workdir=bench.workdir,
            name=f"service-{workers}",
            timeout=bench.timeout,
        )
        double_saw = double.count_requests()
    finally:
        double.stop()
    summary = json.loads(measured.stdout)
    check_synced(summary, len(bench.corpus.studies))
    requests = summary["requests"]
    return Run(measured, summary["studies"], requests["orthanc"], requests["openmrs"], double_saw)


def check_synced(summary: dict[str, Any], expected: int) -> None:
    synced = summary["counts"].get("synced", 0)
    if synced != expected:
        problems = json.dumps(summary["needs_a_person"][:5], indent=2)
        raise BenchError(f"the service synced {synced} of {expected} studies: {problems}")


def run_floor(bench: Bench, workers: int, *, lookup: bool) -> Run:
    double = start_double(bench.latency, bench.corpus.patients)
    name = f"floor-{workers}" if lookup else f"floor-warm-{workers}"
    try:
        env = server_env(bench.orthanc, double, database=bench.workdir / "unused", workers=workers)
        target = [str(FLOOR), str(bench.plan), "--workers", str(workers)]
        measured = run_measured(
            [*target] if lookup else [*target, "--no-lookup"],
            env=env,
            workdir=bench.workdir,
            name=name,
            timeout=bench.timeout,
        )
        double_saw = double.count_requests()
        stored = len(double.attachments())
    finally:
        double.stop()
    summary = json.loads(measured.stdout)
    if stored != summary["studies"]:
        raise BenchError(f"{name}: the double holds {stored} of {summary['studies']} uploads")
    requests = summary["requests"]
    return Run(measured, summary["studies"], requests["orthanc"], requests["openmrs"], double_saw)


# -- report ----------------------------------------------------------------------------------
def report(workers: int, service: Run, floor: Run, warm: Run) -> None:
    n = service.studies
    head = f"workers {workers}:"
    print(
        f"{head} service {service.rate:.1f} studies/s ({service.measured.seconds:.1f} s), "
        f"floor {floor.rate:.1f} studies/s, ratio {service.rate / floor.rate:.2f}"
    )
    print(
        f"{head} warm-cache floor (no patient lookup) {warm.rate:.1f} studies/s, "
        f"ratio {service.rate / warm.rate:.2f}"
    )
    print(
        f"{head} peak RSS service {mib(service.measured.peak_rss_kib):.1f} MiB, "
        f"floor {mib(floor.measured.peak_rss_kib):.1f} MiB, "
        f"warm-cache floor {mib(warm.measured.peak_rss_kib):.1f} MiB"
    )
    print(
        f"{head} orthanc requests/study {service.orthanc_requests / n:.2f} "
        f"(floor {floor.orthanc_requests / floor.studies:.2f})"
    )
    print(
        f"{head} openmrs requests/study {service.openmrs_requests / n:.2f}, "
        f"double saw {service.double_saw / n:.2f} "
        f"(floor {floor.openmrs_requests / floor.studies:.2f}, "
        f"warm-cache floor {warm.openmrs_requests / warm.studies:.2f})",
        flush=True,
    )
    for label, run in (("service", service), ("floor", floor), ("warm-cache floor", warm)):
        if run.openmrs_requests != run.double_saw:
            print(
                f"{head} WARNING: {label} counted {run.openmrs_requests} OpenMRS requests, "
                f"the double saw {run.double_saw}"
            )


def report_best(results: dict[int, tuple[Run, Run, Run]]) -> None:
    default = Settings.model_fields["sync_workers"].default
    for index, label in ((1, "floor"), (2, "warm-cache floor")):
        best = max(results, key=lambda w: results[w][index].rate)
        service, floor = results[best][0], results[best][index]
        print(f"best {label} concurrency: {best} workers ({floor.rate:.1f} studies/s)")
        print(
            f"service / {label} at best {label} concurrency: {service.rate / floor.rate:.2f} "
            f"(service {service.rate:.1f} studies/s at {best} workers)"
        )
        if default in results:
            mine = results[default][0]
            print(
                f"service with the default SYNC_WORKERS={default} / best {label}: "
                f"{mine.rate / floor.rate:.2f} ({mine.rate:.1f} vs {floor.rate:.1f} studies/s)"
            )


# -- main ------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=2000, help="studies to load (2000)")
    parser.add_argument(
        "--latency", type=float, default=0.02, help="seconds the double waits per request (0.02)"
    )
    parser.add_argument(
        "--workers", default="1,2,4,8", help="comma-separated worker counts (1,2,4,8)"
    )
    parser.add_argument(
        "--no-floor", action="store_true", help="measure the service only (e.g. peak RSS)"
    )
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    if args.studies < 1 or not args.workers or min(args.workers) < 1:
        parser.error("--studies and every --workers value must be at least 1")
    return args


def measure(args: argparse.Namespace, workdir: Path) -> None:
    orthanc = start_orthanc(workdir)
    try:
        print(f"Orthanc {orthanc.url}; loading {args.studies} studies", flush=True)
        started = time.perf_counter()
        corpus = load_corpus(orthanc, args.studies)
        loaded = time.perf_counter() - started
        wait_until_stable(orthanc, {s for s, _ in corpus.studies}, 120 + 0.02 * args.studies)
        stable = time.perf_counter() - started
        print(
            f"load: {args.studies} studies ({args.studies * SERIES_PER_STUDY * SLICES_PER_SERIES}"
            f" instances, {len(corpus.patients)} patients) uploaded in {loaded:.1f} s, "
            f"all stable after {stable:.1f} s",
            flush=True,
        )
        trip = double_round_trip(args.latency)
        print(
            f"OpenMRS double: latency setting {args.latency * 1000:.0f} ms, "
            f"measured round trip {trip * 1000:.1f} ms per request",
            flush=True,
        )
        bench = Bench(orthanc, corpus, workdir, args.latency, workdir / "plan.json")
        write_plan(corpus, bench.plan)
        results = {}
        for workers in args.workers:
            service = run_service(bench, workers)
            if args.no_floor:
                print(
                    f"workers {workers}: service {service.rate:.1f} studies/s, "
                    f"peak RSS {mib(service.measured.peak_rss_kib):.1f} MiB",
                    flush=True,
                )
                continue
            results[workers] = (
                service,
                run_floor(bench, workers, lookup=True),
                run_floor(bench, workers, lookup=False),
            )
            report(workers, *results[workers])
        if results:
            report_best(results)
    finally:
        orthanc.kill()  # its storage is thrown away with the temporary directory


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        try:
            measure(args, Path(tmp))
        except BenchError as exc:
            print(f"throughput: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
