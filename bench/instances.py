"""Backfill throughput of several instances on one PostgreSQL ledger, against one on SQLite.

Usage: python bench/instances.py [--studies 300] [--latencies 0.05,0.2] [--processes 1,2,4]

Starts a real Orthanc (fresh storage) holding --studies synthetic studies (bench/throughput.py's
corpus) and a real PostgreSQL (Debian's packages). For each OpenMRS latency, with a fresh
OpenMRS double and a fresh ledger each time: one `run` on SQLite, then 1, 2 and 4 `run`
processes on one PostgreSQL database, all with default settings but the servers. Measured: the
wall time from the first spawn until the double holds an attachment for every study (then the
processes are stopped), studies/s over it and from the first quarter of the studies on (once
every process is at work), and the CPU seconds each party used meanwhile (the `run`
processes, Orthanc, PostgreSQL, and this process, which hosts the double), from /proc.

The CPU figures tell the two limits apart: when the parties together keep both cores busy
(CPU s / wall s near the machine's core count), more processes cannot help on this machine;
when the cores idle and the rate still stops growing, the limit is in the design (or in a
server). With a higher OpenMRS latency each process waits more and burns less, so more
processes help further before the cores run out.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import BenchError, server_env, start_double, start_orthanc
from throughput import Corpus, load_corpus

from orthanc_openmrs.config import Settings
from orthanc_openmrs_devtools.orthanc_server import OrthancServer
from orthanc_openmrs_devtools.postgres_server import PostgresServer

TICKS = os.sysconf("SC_CLK_TCK")
POLL = 0.1
STOP_TIMEOUT = 30.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--latencies", type=_floats, default=[0.05, 0.2])
    parser.add_argument("--processes", type=_ints, default=[1, 2, 4])
    return parser.parse_args()


def _floats(text: str) -> list[float]:
    return [float(p) for p in text.split(",") if p.strip()]


def _ints(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip()]


# -- CPU accounting --------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process, and of its children it has waited for."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # After the name: state is fields[0]; utime, stime, cutime, cstime are fields 11..14.
    return sum(int(v) for v in fields[11:15]) / TICKS


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


class PostgresCpu:
    """The CPU of a PostgreSQL cluster: the postmaster, its live processes, and those that
    exited (the postmaster waits for its children, so their time lands in its cutime)."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster

    def now(self) -> float:
        return cpu_seconds(self.postmaster) + sum(
            cpu_seconds(child) for child in children_of(self.postmaster)
        )


# -- one measurement -------------------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    label: str
    processes: int
    seconds: float
    studies: int
    # From the first quarter of the studies attached to the last: the rate once every process
    # is at work (a process that found nothing due at its start sleeps a poll interval).
    steady_seconds: float
    run_cpu: list[float]
    orthanc_cpu: float
    postgres_cpu: float
    bench_cpu: float

    @property
    def rate(self) -> float:
        return self.studies / self.seconds

    @property
    def steady_rate(self) -> float:
        return (self.studies - self.studies // 4) / self.steady_seconds

    @property
    def busy(self) -> float:
        total = sum(self.run_cpu) + self.orthanc_cpu + self.postgres_cpu + self.bench_cpu
        return total / self.seconds


def measure(
    label: str,
    count: int,
    ledger: str,
    orthanc: OrthancServer,
    corpus: Corpus,
    latency: float,
    pg: PostgresCpu,
    workdir: Path,
) -> Result:
    double = start_double(latency, corpus.patients)
    workers = int(Settings.model_fields["sync_workers"].default)
    env = {**server_env(orthanc, double, database=Path("unused"), workers=workers)}
    env.update(SYNC_DATABASE=ledger, SYNC_HTTP_PORT="0")
    # The defaults but for these: every instance's poll and retry timing as shipped.
    for name in ("SYNC_POLL_INTERVAL", "SYNC_RETRY_MIN", "SYNC_RETRY_MAX"):
        env.pop(name)
    orthanc_pid = orthanc._process.pid if orthanc._process else 0
    before = (cpu_seconds(orthanc_pid), pg.now(), time.process_time())
    started = time.perf_counter()
    logs = [(workdir / f"{label}-{count}-{i}.log").open("wb") for i in range(count)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "orthanc_openmrs", "run"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for log in logs
    ]
    try:
        deadline = started + 120 + 2.0 * len(corpus.studies)
        quarter_at = 0.0
        while (attached := len(double.attachments())) < len(corpus.studies):
            if time.perf_counter() > deadline or any(p.poll() is not None for p in processes):
                raise BenchError(f"{label} x{count}: not every study was attached")
            if not quarter_at and attached >= len(corpus.studies) // 4:
                quarter_at = time.perf_counter()
            time.sleep(POLL)
        seconds = time.perf_counter() - started
        steady = time.perf_counter() - (quarter_at or started)
        run_cpu = [cpu_seconds(p.pid) for p in processes]
        after = (cpu_seconds(orthanc_pid), pg.now(), time.process_time())
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()
    duplicates = len(double.attachments()) - len(corpus.studies)
    double.stop()
    if duplicates:
        raise BenchError(f"{label} x{count}: {duplicates} attachments too many")
    return Result(
        label,
        count,
        seconds,
        len(corpus.studies),
        steady,
        run_cpu,
        after[0] - before[0],
        after[1] - before[1],
        after[2] - before[2],
    )


def show(result: Result) -> None:
    per_run = "+".join(f"{c:.1f}" for c in result.run_cpu)
    print(
        f"  {result.label:<10} x{result.processes}: {result.rate:6.1f} studies/s "
        f"({result.seconds:.1f} s; from the first quarter on {result.steady_rate:.1f}/s); "
        f"CPU s: runs {per_run}, Orthanc {result.orthanc_cpu:.1f}, "
        f"PostgreSQL {result.postgres_cpu:.1f}, double {result.bench_cpu:.1f}; "
        f"cores busy {result.busy:.2f} of {os.cpu_count()}",
        flush=True,
    )


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-instances-") as tmp:
        workdir = Path(tmp)
        orthanc = start_orthanc(workdir)
        try:
            with PostgresServer() as postgres:
                assert postgres._process is not None
                pg = PostgresCpu(postgres._process.pid)
                corpus = load_corpus(orthanc, Corpus([], []), args.studies, args.studies)
                print(f"{len(corpus.studies)} studies, {len(corpus.patients)} patients")
                for latency in args.latencies:
                    print(f"OpenMRS latency {latency * 1000:.0f} ms:", flush=True)
                    sqlite = str(workdir / f"ledger-{latency}.sqlite3")
                    show(measure("sqlite", 1, sqlite, orthanc, corpus, latency, pg, workdir))
                    for count in args.processes:
                        url = postgres.create_database()
                        show(
                            measure("postgresql", count, url, orthanc, corpus, latency, pg, workdir)
                        )
        finally:
            orthanc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
