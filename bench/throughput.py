"""Throughput of one `orthanc-openmrs sync` pass, next to the floor of the same requests.

Usage: python bench/throughput.py [--studies N[,N...]] [--latency S] [--workers LIST] [--no-floor]

Starts a real Orthanc (fresh temporary storage) and the OpenMRS double, loads N synthetic
studies, then for each worker count runs the service's `sync --json` pass and the floor
client (bench/floor.py) as subprocesses, each against a fresh double and, for the service,
a fresh ledger. With several sizes, the corpus grows to each in turn and everything is
measured again, ending with the service's peak RSS at each size against the smallest.
See bench/README.md for what each figure means.
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
from uuid import uuid4

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
from orthanc_openmrs_devtools.dicom_factory import InstanceSpec, SeriesSpec, StudySpec, build_study
from orthanc_openmrs_devtools.orthanc_server import OrthancServer

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
def patient_of(index: int, block: int) -> int:
    """The patient of study `index`: each block of studies has its own patients, each with
    STUDIES_PER_PATIENT studies spread through the block (so that concurrent workers rarely
    share a patient), and loading more blocks leaves the earlier studies' patients as they were.
    """
    per_block = max(1, math.ceil(block / STUDIES_PER_PATIENT))
    return (index // block) * per_block + index % per_block


def study_spec(index: int, block: int) -> StudySpec:
    slices = tuple(
        InstanceSpec("ct", n, rows=64, columns=64) for n in range(1, SLICES_PER_SERIES + 1)
    )
    return StudySpec(
        f"bench-throughput-{index}",
        patient_id=patient_id(patient_of(index, block)),
        accession=f"BT{index}",
        series=tuple(SeriesSpec(n, instances=slices) for n in range(1, SERIES_PER_STUDY + 1)),
    )


def load_one(client: httpx.Client, index: int, block: int) -> tuple[int, str, str]:
    spec = study_spec(index, block)
    study_id = ""
    for dicom in build_study(spec):
        response = client.post("/instances", content=dicom)
        if response.status_code != httpx.codes.OK:
            raise BenchError(f"POST /instances: HTTP {response.status_code}: {response.text}")
        study_id = response.json()["ParentStudy"]
    return index, study_id, spec.patient_id


def load_corpus(orthanc: OrthancServer, corpus: Corpus, count: int, block: int) -> Corpus:
    """Add studies up to `count` in all, built and uploaded by a few threads sharing one
    pooled client."""
    first = len(corpus.studies)
    loaded: list[tuple[int, str, str]] = []
    step = max(1, (count - first) // 10)
    started = time.perf_counter()
    with orthanc.client() as client, ThreadPoolExecutor(LOAD_THREADS) as pool:
        pending: set[Future[tuple[int, str, str]]] = set()
        for index in range(first, count):
            # A bounded window: the built files of at most this many studies wait in memory.
            if len(pending) >= 2 * LOAD_THREADS:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                loaded.extend(f.result() for f in done)
            pending.add(pool.submit(load_one, client, index, block))
            if (index + 1 - first) % step == 0:
                rate = (index + 1 - first) / (time.perf_counter() - started)
                print(f"  loading: {index + 1}/{count} studies ({rate:.0f} studies/s)", flush=True)
        loaded.extend(f.result() for f in wait(pending).done)
    loaded.sort()
    studies = corpus.studies + [(study_id, pid) for _, study_id, pid in loaded]
    return Corpus(studies=studies, patients=sorted({pid for _, pid in studies}))


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
        # A new ledger for every run: a ledger that already knows the studies has nothing to do.
        ledger = (
            bench.workdir / f"ledger-{len(bench.corpus.studies)}-{workers}-{uuid4().hex}.sqlite3"
        )
        env = server_env(bench.orthanc, double, database=ledger, workers=workers)
        measured = run_measured(
            ["-m", "orthanc_openmrs", "sync", "--json"],
            env=env,
            workdir=bench.workdir,
            name=f"service-{len(bench.corpus.studies)}-{workers}",
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
    kind = "floor" if lookup else "floor-warm"
    name = f"{kind}-{len(bench.corpus.studies)}-{workers}"
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
    parser.add_argument(
        "--studies",
        default="2000",
        help="studies to load (2000); several sizes, e.g. 2000,20000, are loaded one after the "
        "other into the same Orthanc and measured in turn",
    )
    parser.add_argument(
        "--latency", type=float, default=0.02, help="seconds the double waits per request (0.02)"
    )
    parser.add_argument(
        "--workers", default="4,8,16,24", help="comma-separated worker counts (4,8,16,24)"
    )
    parser.add_argument(
        "--no-floor", action="store_true", help="measure the service only (e.g. peak RSS)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs of each kind per worker count, interleaved; the fastest counts (2)",
    )
    args = parser.parse_args()
    try:
        args.studies = sorted({int(n) for n in args.studies.split(",") if n.strip()})
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error("--studies and --workers take comma-separated whole numbers")
    if not args.studies or min(args.studies) < 1 or not args.workers or min(args.workers) < 1:
        parser.error("every --studies and --workers value must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def load(orthanc: OrthancServer, corpus: Corpus, count: int, block: int) -> Corpus:
    started = time.perf_counter()
    corpus = load_corpus(orthanc, corpus, count, block)
    loaded = time.perf_counter() - started
    wait_until_stable(orthanc, {s for s, _ in corpus.studies}, 120 + 0.02 * count)
    stable = time.perf_counter() - started
    print(
        f"load: {count} studies ({count * SERIES_PER_STUDY * SLICES_PER_SERIES} instances, "
        f"{len(corpus.patients)} patients) in Orthanc; this part uploaded in {loaded:.1f} s, "
        f"all stable after {stable:.1f} s",
        flush=True,
    )
    return corpus


def measure_size(bench: Bench, args: argparse.Namespace) -> dict[int, Run]:
    """Every worker count at one corpus size; the service's runs by worker count."""
    write_plan(bench.corpus, bench.plan)
    services: dict[int, Run] = {}
    results = {}
    if not args.no_floor:
        # Whatever runs first reads a cold Orthanc; one unmeasured replay warms it for all.
        warm_up = run_floor(bench, max(args.workers), lookup=False)
        print(f"warm-up: one unmeasured floor replay ({warm_up.rate:.1f} studies/s)", flush=True)
    for workers in args.workers:
        service = services[workers] = run_service(bench, workers)
        if args.no_floor:
            print(
                f"workers {workers}: service {service.rate:.1f} studies/s, "
                f"peak RSS {mib(service.measured.peak_rss_kib):.1f} MiB, "
                f"orthanc requests/study {service.orthanc_requests / service.studies:.2f}, "
                f"openmrs requests/study {service.openmrs_requests / service.studies:.2f}",
                flush=True,
            )
            continue
        rounds = [
            (
                service,
                run_floor(bench, workers, lookup=True),
                run_floor(bench, workers, lookup=False),
            )
        ]
        for _ in range(args.repeat - 1):
            # Interleaved, so a slow spell of the machine hits every kind of run alike.
            rounds.append(
                (
                    run_service(bench, workers),
                    run_floor(bench, workers, lookup=True),
                    run_floor(bench, workers, lookup=False),
                )
            )
        service, floor, warm = (
            max(runs, key=lambda run: run.rate) for runs in zip(*rounds, strict=True)
        )
        services[workers] = service
        results[workers] = (service, floor, warm)
        report(workers, service, floor, warm)
    if results:
        report_best(results)
    return services


def report_memory(by_size: dict[int, dict[int, Run]]) -> None:
    """Peak RSS of the service at each size, against the smallest, worker count by worker count."""
    smallest = min(by_size)
    for workers in by_size[smallest]:
        base = by_size[smallest][workers].measured.peak_rss_kib
        for size, services in sorted(by_size.items()):
            rss = services[workers].measured.peak_rss_kib
            print(
                f"peak RSS of the service, workers {workers}: {size} studies {mib(rss):.1f} MiB, "
                f"{rss / base:.3f} of {smallest} studies ({mib(base):.1f} MiB)"
            )


def measure(args: argparse.Namespace, workdir: Path) -> None:
    orthanc = start_orthanc(workdir)
    try:
        print(f"Orthanc {orthanc.url}; corpus sizes {args.studies}", flush=True)
        trip = double_round_trip(args.latency)
        print(
            f"OpenMRS double: latency setting {args.latency * 1000:.0f} ms, "
            f"measured round trip {trip * 1000:.1f} ms per request",
            flush=True,
        )
        corpus = Corpus(studies=[], patients=[])
        by_size: dict[int, dict[int, Run]] = {}
        for size in args.studies:
            corpus = load(orthanc, corpus, size, block=args.studies[0])
            bench = Bench(orthanc, corpus, workdir, args.latency, workdir / "plan.json")
            by_size[size] = measure_size(bench, args)
        if len(by_size) > 1:
            report_memory(by_size)
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
