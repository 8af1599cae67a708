"""Chaos test: the service is SIGKILLed and its answers are lost, yet each study is attached once.

Usage: python bench/chaos.py [--studies 200] [--seeds 1,2,3,4,5] [--kills 10] [--latency 0.01]

For each seed: a real Orthanc (fresh storage) and the OpenMRS double in this process, one
patient per study (a few registered only late), the studies uploaded, then `orthanc-openmrs run`
started, killed with SIGKILL and restarted --kills times while the double loses upload answers
after storing them and expires sessions. At the end the service must attach every study exactly
once, to its own patient, and stop with exit code 0 on SIGTERM.

random.Random(seed) drives every random choice. Everything runs on loopback, and every loop is
bounded by a count and a deadline. Exit code 0 only when every seed comes out clean.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import server_env

from orthanc_openmrs.store import LEASE
from orthanc_openmrs_devtools.dicom_factory import (
    InstanceSpec,
    SeriesSpec,
    StudySpec,
    build_study,
    study_uid,
)
from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble
from orthanc_openmrs_devtools.orthanc_server import OrthancServer
from orthanc_openmrs_devtools.tally import Tally, captions_by_uid, tally

LATE_SHARE = 0.05
KILL_WAIT = (0.1, 1.5)
# Between two armed drops while the service runs; short enough to hit many uploads.
DROP_GAP = (0.1, 1.0)
# One background action in this many expires the sessions instead of arming a drop.
EXPIRE_ONE_IN = 8
CHAOS_MAX_ACTIONS = 100_000
# A killed service's studies wait for their lease to run out before the restarted one takes
# them over, so the wait for the last of them is a lease and then some.
SETTLE_TIMEOUT = LEASE + 60.0
# After the last study shows up, watch a little longer: a duplicate can land just after it.
SETTLE_GRACE = 2.0
POLL = 0.25
STOP_TIMEOUT = 30.0
STABLE_TIMEOUT = 120.0
LOG_TAIL_LINES = 40


# -- arguments -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200, help="studies per seed")
    parser.add_argument("--seeds", type=_seeds, default=[1, 2, 3, 4, 5], help="e.g. 1,2,3")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs per seed")
    parser.add_argument("--latency", type=float, default=0.01, help="double's latency (s)")
    args = parser.parse_args(argv)
    if args.studies < 1 or args.kills < 0 or args.latency < 0:
        parser.error("--studies must be positive, --kills and --latency not negative")
    return args


def _seeds(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


# -- the corpus ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Corpus:
    specs: list[StudySpec]
    late: frozenset[int]  # indexes of studies whose patient is registered after the kills


def make_corpus(rng: random.Random, seed: int, count: int) -> Corpus:
    specs = [_study_spec(rng, seed, i) for i in range(count)]
    late_count = max(1, round(count * LATE_SHARE))
    late = frozenset(rng.sample(range(count), min(late_count, count)))
    return Corpus(specs, late)


def _study_spec(rng: random.Random, seed: int, index: int) -> StudySpec:
    series = tuple(
        SeriesSpec(
            number=n + 1,
            description=f"AXIAL {n + 1}",
            instances=tuple(InstanceSpec(number=k + 1) for k in range(rng.randint(2, 4))),
        )
        for n in range(rng.randint(1, 2))
    )
    return StudySpec(
        key=f"chaos-{seed}-{index}",
        patient_id=patient_id(seed, index),
        patient_name=f"Chaos^Patient{index}",
        study_date=f"2024{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
        description=rng.choice(("CT CHEST", "CT HEAD", "CT ABDOMEN", "CT SPINE")),
        accession=f"ACC{seed}-{index}",
        series=series,
    )


def patient_id(seed: int, index: int) -> str:
    # Not zero-padded on purpose: the double's fuzzy search then returns neighbours
    # (CH-1-1 also finds CH-1-10), which the service must filter out.
    return f"CH-{seed}-{index}"


def register(double: OpenMRSDouble, seed: int, indexes: list[int]) -> dict[int, str]:
    """Each study's patient in OpenMRS; index -> patient uuid."""
    return {i: double.add_patient([patient_id(seed, i)], family=f"Chaos{i}") for i in indexes}


def upload(orthanc: OrthancServer, corpus: Corpus) -> None:
    for spec in corpus.specs:
        orthanc.upload_many(build_study(spec))
    orthanc.wait_until_stable(STABLE_TIMEOUT)


# -- the service under test ------------------------------------------------------------------
class ServiceProcess:
    """`python -m orthanc_openmrs run`, restarted on the same ledger, logging to one file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.crashes = 0  # times it had exited before we killed it

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "orthanc_openmrs", "run"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C at the terminal reaches only this script, which then
                # stops the service itself in its finally blocks.
                start_new_session=True,
            )

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is not None:
            self.crashes += 1
            self._note(f"service had exited by itself with code {self.process.returncode}")
        else:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
        self.process = None

    def terminate(self) -> int | None:
        """SIGTERM and its exit code; None when it had to be killed after STOP_TIMEOUT."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is not None:
            return process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
            return None

    def _note(self, text: str) -> None:
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"--- chaos: {text}\n")

    def log_tail(self) -> str:
        if not self.log_path.exists():
            return "(no log: the service never started)"
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


def service_env(orthanc: OrthancServer, double: OpenMRSDouble, ledger: Path) -> dict[str, str]:
    # Retries at once: a lost answer or an unmatched study is looked at again next pass.
    return server_env(
        orthanc, double, database=ledger, workers=4, poll_interval=0.5, retry=(0.0, 1.0)
    )


def quiet_resets(double: OpenMRSDouble) -> None:
    """Keep the double's HTTP server from printing a traceback for every reset connection.

    A SIGKILLed service resets its kept-alive connections: that is the test working, and a
    hundred tracebacks would bury the report. Other errors are still printed.
    """
    server = getattr(double, "_server", None)
    if server is None:
        return
    default = server.handle_error

    def handle_error(request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            default(request, client_address)

    server.handle_error = handle_error


# -- faults ----------------------------------------------------------------------------------
@dataclass
class FaultLog:
    kills: int = 0
    drops_armed: int = 0
    expiries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, drops: int = 0, expiries: int = 0) -> None:
        with self.lock:
            self.drops_armed += drops
            self.expiries += expiries


def inject(double: OpenMRSDouble, faults: FaultLog, choice: str) -> None:
    if choice == "drop":
        double.drop_after_commit(1)
        faults.add(drops=1)
    elif choice == "expire":
        double.expire_sessions()
        faults.add(expiries=1)


class Saboteur(threading.Thread):
    """While the service runs: now and then lose the next upload's answer, or expire sessions."""

    def __init__(self, double: OpenMRSDouble, faults: FaultLog, rng: random.Random) -> None:
        super().__init__(name="chaos-saboteur", daemon=True)
        self.double = double
        self.faults = faults
        # Its own generator (seeded from the seed's): thread timing must not shift the
        # main sequence of choices.
        self.rng = rng
        self.halt = threading.Event()

    def run(self) -> None:
        for _ in range(CHAOS_MAX_ACTIONS):
            if self.halt.wait(self.rng.uniform(*DROP_GAP)):
                return
            expire = self.rng.randrange(EXPIRE_ONE_IN) == 0
            inject(self.double, self.faults, "expire" if expire else "drop")

    def stop(self) -> None:
        self.halt.set()
        self.join(STOP_TIMEOUT)


def kill_loop(
    rng: random.Random,
    service: ServiceProcess,
    double: OpenMRSDouble,
    faults: FaultLog,
    kills: int,
) -> None:
    for _ in range(kills):
        time.sleep(rng.uniform(*KILL_WAIT))
        service.kill()
        faults.kills += 1
        inject(double, faults, rng.choice(("drop", "expire", "none")))
        service.start()


# -- waiting and counting --------------------------------------------------------------------
def wait_for_all(double: OpenMRSDouble, uids: set[str], service: ServiceProcess) -> None:
    """Until every study has an attachment (then a short grace), a timeout, or a crash."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    complete_at: float | None = None
    for _ in range(int(SETTLE_TIMEOUT / POLL) + 1):
        now = time.monotonic()
        if now >= deadline or service.exited() is not None:
            return
        if complete_at is None and uids <= captions_by_uid(double)[0].keys():
            complete_at = now
        if complete_at is not None and now - complete_at >= SETTLE_GRACE:
            return
        time.sleep(POLL)


def observed_faults(double: OpenMRSDouble) -> tuple[int, int]:
    """Upload answers really lost (status stays 0), and stale-session 401s really sent."""
    drops = stale = 0
    for request in double.requests:
        if request.method == "POST" and request.path.endswith("/attachment"):
            drops += request.status == 0
        stale += request.status == 401
    return drops, stale


# -- one seed --------------------------------------------------------------------------------
@dataclass
class SeedReport:
    seed: int
    tally: Tally
    faults: FaultLog
    drops_seen: int = 0
    stale_seen: int = 0
    crashes: int = 0
    exit_code: int | None = None
    error: str = ""

    @property
    def clean(self) -> bool:
        return self.tally.clean and self.exit_code == 0 and not self.crashes and not self.error


def run_seed(args: argparse.Namespace, seed: int) -> SeedReport:
    rng = random.Random(seed)
    corpus = make_corpus(rng, seed, args.studies)
    report = SeedReport(seed, Tally(studies=len(corpus.specs)), FaultLog())
    with tempfile.TemporaryDirectory(prefix=f"chaos-{seed}-") as tmp:
        workdir = Path(tmp)
        orthanc = OrthancServer(workdir / "orthanc", stable_age=1)
        double = OpenMRSDouble(latency=args.latency)
        try:
            orthanc.start()
            double.start()
            quiet_resets(double)
            _exercise(args, rng, seed, corpus, orthanc, double, workdir, report)
        finally:
            orthanc.kill()
            double.stop()
    return report


def _exercise(
    args: argparse.Namespace,
    rng: random.Random,
    seed: int,
    corpus: Corpus,
    orthanc: OrthancServer,
    double: OpenMRSDouble,
    workdir: Path,
    report: SeedReport,
) -> None:
    on_time = [i for i in range(len(corpus.specs)) if i not in corpus.late]
    patients = register(double, seed, on_time)
    upload(orthanc, corpus)
    env = service_env(orthanc, double, workdir / "ledger.sqlite3")
    service = ServiceProcess(env, workdir / "service.log")
    saboteur = Saboteur(double, report.faults, random.Random(rng.getrandbits(64)))
    try:
        service.start()
        saboteur.start()
        kill_loop(rng, service, double, report.faults, args.kills)
        patients |= register(double, seed, sorted(corpus.late))
        expected = {study_uid(corpus.specs[i]): patients[i] for i in range(len(corpus.specs))}
        wait_for_all(double, set(expected), service)
        saboteur.stop()
        report.exit_code = service.terminate()
        report.tally = tally(double, expected)
    except Exception as exc:  # reported with this seed's log; the other seeds still run
        report.error = f"{type(exc).__name__}: {exc}"
    finally:
        if saboteur.is_alive():
            saboteur.stop()
        service.kill()
    report.crashes = service.crashes
    report.drops_seen, report.stale_seen = observed_faults(double)
    # Not in the finally: after a Ctrl-C the log would only bury the interruption.
    if not report.clean:
        print(f"--- service log of seed {seed} (tail):\n{service.log_tail()}", flush=True)


# -- main ------------------------------------------------------------------------------------
def print_seed(report: SeedReport) -> None:
    faults = report.faults
    print(report.tally.line(f"seed {report.seed}"))
    print(
        f"  kills {faults.kills}, drops {report.drops_seen} (armed {faults.drops_armed}), "
        f"session expiries {faults.expiries} ({report.stale_seen} stale-session 401s), "
        f"stray attachments {report.tally.stray}, crashes {report.crashes}, "
        f"exit code on SIGTERM {report.exit_code}"
        + (f", error: {report.error}" if report.error else ""),
        flush=True,
    )


def _sigterm_to_exit(signum: int, _frame: object) -> None:
    # So that a SIGTERM to this script runs the finally blocks that stop Orthanc and the service.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm_to_exit)
    total = Tally()
    clean = True
    for seed in args.seeds:
        try:
            report = run_seed(args, seed)
        except Exception as exc:  # one broken seed must not hide the results of the others
            report = SeedReport(seed, Tally(), FaultLog(), error=f"{type(exc).__name__}: {exc}")
        print_seed(report)
        total.add(report.tally)
        clean = clean and report.clean
    print(total.line("total"))
    return 0 if clean else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
