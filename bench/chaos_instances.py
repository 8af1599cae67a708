"""Chaos test of several instances: 3 `run`s on one PostgreSQL ledger, any of them SIGKILLed.

Usage: python bench/chaos_instances.py [--studies 200] [--seeds 1,2,3,4,5] [--kills 10]
                                       [--instances 3] [--latency 0.01]

For each seed: a real Orthanc (fresh storage), the OpenMRS double in this process, a new
database on a real PostgreSQL (started once, from Debian's packages), the studies uploaded, then
--instances `orthanc-openmrs run` processes on that ledger. --kills times, one of them chosen at
random is SIGKILLed and started again, while the double loses upload answers after storing
them and expires sessions (bench/chaos.py's faults). At the end every study must be attached
exactly once, to its own patient, and every process must stop with exit code 0 on SIGTERM.

When the killed process followed the changes feed, the time until one of the survivors holds
the feed is measured from the kill, in PostgreSQL's own view (pg_locks: the feed's advisory lock
held by another process's session); the killed one is started again only then. The settings
are bench/chaos.py's (SYNC_POLL_INTERVAL=0.5, 4 workers, retries within a second); the lease is
the product's: the studies a killed process held wait out its 90 s, so a seed lasts minutes.

random.Random(seed) drives every random choice. Exit code 0 only when every seed comes out clean.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from chaos import (
    KILL_WAIT,
    POLL,
    SETTLE_GRACE,
    SETTLE_TIMEOUT,
    Corpus,
    FaultLog,
    Saboteur,
    ServiceProcess,
    inject,
    make_corpus,
    observed_faults,
    quiet_resets,
    register,
    service_env,
    upload,
)

from orthanc_openmrs.ledger.postgres import lock_key
from orthanc_openmrs.service import FEED
from orthanc_openmrs_devtools.dicom_factory import study_uid
from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble
from orthanc_openmrs_devtools.orthanc_server import OrthancServer
from orthanc_openmrs_devtools.postgres_server import PostgresServer
from orthanc_openmrs_devtools.tally import Tally, captions_by_uid, tally

TAKEOVER_TIMEOUT = 60.0
# The feed's advisory lock as pg_locks shows a bigint key: its high and low 32 bits.
_FEED_KEY = lock_key(FEED) & (1 << 64) - 1
_FEED_HOLDER = """
SELECT a.application_name FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s
AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database WHERE datname = %s)
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200, help="studies per seed")
    parser.add_argument("--seeds", type=_seeds, default=[1, 2, 3, 4, 5], help="e.g. 1,2,3")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs per seed")
    parser.add_argument("--instances", type=int, default=3, help="`run` processes")
    parser.add_argument("--latency", type=float, default=0.01, help="double's latency (s)")
    args = parser.parse_args(argv)
    if args.studies < 1 or args.kills < 0 or args.latency < 0 or args.instances < 2:
        parser.error("--studies positive, --instances 2 or more, --kills, --latency not negative")
    return args


def _seeds(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


class FeedWatch:
    """Which process holds the changes feed of one ledger, as PostgreSQL sees it."""

    def __init__(self, postgres: PostgresServer, database: str) -> None:
        self._conn = psycopg.connect(postgres.url("postgres"), autocommit=True)
        self._database = database

    def holder(self) -> int | None:
        """The OS pid of the process whose session holds the feed's lock."""
        row = self._conn.execute(
            _FEED_HOLDER, (_FEED_KEY >> 32, _FEED_KEY & 0xFFFFFFFF, self._database)
        ).fetchone()
        return int(row[0].rsplit(":", 1)[1]) if row else None

    def taken_over(self, killed: int, since: float) -> float | None:
        """Seconds from `since` until a process other than `killed` holds the feed."""
        deadline = since + TAKEOVER_TIMEOUT
        while time.monotonic() < deadline:
            holder = self.holder()
            if holder is not None and holder != killed:
                return time.monotonic() - since
            time.sleep(0.02)
        return None

    def close(self) -> None:
        self._conn.close()


@dataclass
class SeedReport:
    seed: int
    tally: Tally
    faults: FaultLog
    takeovers: list[float] = field(default_factory=list)
    missed_takeovers: int = 0
    drops_seen: int = 0
    stale_seen: int = 0
    crashes: int = 0
    exit_codes: list[int | None] = field(default_factory=list)
    error: str = ""

    @property
    def clean(self) -> bool:
        return (
            self.tally.clean
            and all(code == 0 for code in self.exit_codes)
            and not self.crashes
            and not self.missed_takeovers
            and not self.error
        )


def run_seed(args: argparse.Namespace, postgres: PostgresServer, seed: int) -> SeedReport:
    rng = random.Random(seed)
    corpus = make_corpus(rng, seed, args.studies)
    report = SeedReport(seed, Tally(studies=len(corpus.specs)), FaultLog())
    with tempfile.TemporaryDirectory(prefix=f"chaos-instances-{seed}-") as tmp:
        workdir = Path(tmp)
        orthanc = OrthancServer(workdir / "orthanc", stable_age=1)
        double = OpenMRSDouble(latency=args.latency)
        try:
            orthanc.start()
            double.start()
            quiet_resets(double)
            _exercise(args, rng, seed, corpus, (orthanc, double, postgres), workdir, report)
        finally:
            orthanc.kill()
            double.stop()
    return report


def _exercise(
    args: argparse.Namespace,
    rng: random.Random,
    seed: int,
    corpus: Corpus,
    servers: tuple[OrthancServer, OpenMRSDouble, PostgresServer],
    workdir: Path,
    report: SeedReport,
) -> None:
    orthanc, double, postgres = servers
    on_time = [i for i in range(len(corpus.specs)) if i not in corpus.late]
    patients = register(double, seed, on_time)
    upload(orthanc, corpus)
    url = postgres.create_database()
    env = {**service_env(orthanc, double, Path("unused")), "SYNC_DATABASE": url}
    env["SYNC_HTTP_PORT"] = "0"  # three on one host: no surface rather than three ports
    services = [ServiceProcess(env, workdir / f"service-{i}.log") for i in range(args.instances)]
    watch = FeedWatch(postgres, url.rsplit("/", 1)[1])
    saboteur = Saboteur(double, report.faults, random.Random(rng.getrandbits(64)))
    try:
        for service in services:
            service.start()
        saboteur.start()
        for _ in range(args.kills):
            time.sleep(rng.uniform(*KILL_WAIT))
            victim = rng.choice(services)
            pid = victim.process.pid if victim.process else None
            followed = pid is not None and watch.holder() == pid
            victim.kill()
            killed_at = time.monotonic()
            report.faults.kills += 1
            inject(double, report.faults, rng.choice(("drop", "expire", "none")))
            if followed:
                # Restarted only once a survivor holds the feed: the time is theirs alone.
                assert pid is not None
                took = watch.taken_over(pid, killed_at)
                if took is None:
                    report.missed_takeovers += 1
                else:
                    report.takeovers.append(took)
            victim.start()
        patients |= register(double, seed, sorted(corpus.late))
        expected = {study_uid(corpus.specs[i]): patients[i] for i in range(len(corpus.specs))}
        _wait_for_all(double, set(expected), services)
        saboteur.stop()
        report.exit_codes = [service.terminate() for service in services]
        report.tally = tally(double, expected)
    except Exception as exc:  # reported with this seed's logs; the other seeds still run
        report.error = f"{type(exc).__name__}: {exc}"
    finally:
        if saboteur.is_alive():
            saboteur.stop()
        for service in services:
            service.kill()
        watch.close()
    report.crashes = sum(service.crashes for service in services)
    report.drops_seen, report.stale_seen = observed_faults(double)
    if not report.clean:
        for i, service in enumerate(services):
            print(f"--- log of service {i}, seed {seed} (tail):\n{service.log_tail()}", flush=True)


def _wait_for_all(double: OpenMRSDouble, uids: set[str], services: list[ServiceProcess]) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    complete_at: float | None = None
    for _ in range(int(SETTLE_TIMEOUT / POLL) + 1):
        now = time.monotonic()
        if now >= deadline or any(s.exited() is not None for s in services):
            return
        if complete_at is None and uids <= captions_by_uid(double)[0].keys():
            complete_at = now
        if complete_at is not None and now - complete_at >= SETTLE_GRACE:
            return
        time.sleep(POLL)


def print_seed(report: SeedReport) -> None:
    faults = report.faults
    print(report.tally.line(f"seed {report.seed}"))
    takeovers = ", ".join(f"{t:.2f}" for t in report.takeovers) or "none"
    print(
        f"  kills {faults.kills}, of the feed's follower {len(report.takeovers)}: feed taken "
        f"over after {takeovers} s (not within {TAKEOVER_TIMEOUT:.0f} s: "
        f"{report.missed_takeovers}); drops {report.drops_seen} (armed {faults.drops_armed}), "
        f"session expiries {faults.expiries} ({report.stale_seen} stale-session 401s), "
        f"stray attachments {report.tally.stray}, crashes {report.crashes}, "
        f"exit codes on SIGTERM {report.exit_codes}"
        + (f", error: {report.error}" if report.error else ""),
        flush=True,
    )


def _sigterm_to_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm_to_exit)
    total = Tally()
    clean = True
    takeovers: list[float] = []
    with PostgresServer() as postgres:
        for seed in args.seeds:
            try:
                report = run_seed(args, postgres, seed)
            except Exception as exc:  # one broken seed must not hide the others' results
                report = SeedReport(seed, Tally(), FaultLog(), error=f"{type(exc).__name__}: {exc}")
            print_seed(report)
            total.add(report.tally)
            takeovers += report.takeovers
            clean = clean and report.clean
    print(total.line("total"))
    if takeovers:
        print(
            f"feed take-over after its follower was killed: {len(takeovers)} times, "
            f"max {max(takeovers):.2f} s, mean {sum(takeovers) / len(takeovers):.2f} s"
        )
    return 0 if clean else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
