"""Leases in the ledger: several stores (processes) on one file never work one study at once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from orthanc_openmrs.ledger.location import LedgerLocation
from orthanc_openmrs.models import Outcome, State, StudyResult
from orthanc_openmrs.store import BACKLOG, LEASE, LIVE, Store

# The `database` fixture: each test runs on SQLite and on PostgreSQL.
Ledger = LedgerLocation | str
NOW = 1_000.0

# Claims batches until nothing is left, never giving a study back; prints what it got. The
# pause between claims (as between a pass's refills) keeps both claiming for a while, however
# late the machine's load lets the second one start.
_CLAIMER = """
import json, sys, time
from pathlib import Path
from orthanc_openmrs.store import Store
store = Store(sys.argv[1])
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
got = []
for _ in range(1000):  # bounded: a claim that leased nothing would never run dry
    batch = store.claim_due(1000.0, 5, exclude=set(), not_tried_since=1000.0)
    if not batch:
        break
    got += [row.orthanc_id for row in batch]
    time.sleep(0.005)
print(json.dumps(got))
"""


def _store(database: Ledger, owner: str) -> Store:
    return Store(database, owner=owner)


def _ids(rows: list) -> list[str]:
    return sorted(row.orthanc_id for row in rows)


def _claim(store: Store, now: float = NOW, limit: int = 10) -> list[str]:
    return _ids(store.claim_due(now, limit, exclude=set(), not_tried_since=now))


def test_two_processes_never_claim_the_same_study(database: Ledger) -> None:
    """Two processes claiming batches from one ledger at the same moment get disjoint sets
    that together hold every due study."""
    first = _store(database, "seed")
    ids = [f"s{i:04d}" for i in range(2000)]
    first.discover(ids, 1.0, priority=BACKLOG, due_at=1.0)
    first.close()
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, str(database)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for claimer in claimers:
        assert claimer.stdout is not None
        assert claimer.stdout.readline() == "ready\n"
    for claimer in claimers:  # both start claiming together
        assert claimer.stdin is not None
        claimer.stdin.write("go\n")
        claimer.stdin.flush()
    got = [json.loads(claimer.communicate(timeout=60)[0]) for claimer in claimers]
    assert all(got), "each process claimed a share"
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == ids


def test_two_threads_with_their_own_stores_never_claim_the_same_study(database: Ledger) -> None:
    """Threads each with a store on one file, claiming in small batches at once, never get
    the same study twice."""
    _store(database, "seed").discover(
        [f"t{i:03d}" for i in range(200)], 1.0, priority=BACKLOG, due_at=1.0
    )
    start = threading.Barrier(4)
    got: dict[str, list[str]] = {}

    def claim_all(owner: str) -> None:
        store = _store(database, owner)
        start.wait()
        mine: list[str] = []
        for _ in range(1000):  # bounded, as above
            batch = _claim(store, limit=3)
            if not batch:
                break
            mine += batch
        got[owner] = mine

    threads = [threading.Thread(target=claim_all, args=(f"o{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [oid for mine in got.values() for oid in mine]
    assert len(everything) == len(set(everything)) == 200


def test_a_live_lease_is_kept_and_an_expired_one_taken_over(database: Ledger) -> None:
    """Another owner cannot claim a study whose lease still runs; once it has run out (its
    process was killed), the study is claimed again."""
    dead, alive = _store(database, "dead"), _store(database, "alive")
    dead.discover(["a", "b"], 1.0, priority=LIVE, due_at=1.0)
    assert _claim(dead) == ["a", "b"]
    assert _claim(alive, NOW + LEASE - 1) == []
    assert _claim(alive, NOW + LEASE) == ["a", "b"]


def test_one_uid_is_worked_by_one_process(database: Ledger) -> None:
    """While one process holds an Orthanc identity of a StudyInstanceUID, another is not
    handed a second identity of it; unread UIDs do not count as one UID."""
    one, two = _store(database, "one"), _store(database, "two")
    one.discover(
        ["old", "new", "x", "y"], 1.0, priority=LIVE, due_at=1.0, uids={"old": "1.2", "new": "1.2"}
    )
    assert one.claim_study("old", NOW) is None
    assert _claim(two) == ["x", "y"]
    held = two.claim_study("new", NOW)
    assert held is not None
    assert (held.orthanc_id, held.owner, held.until) == ("old", "one", NOW + LEASE)
    one.record(StudyResult("old", Outcome.SYNCED, study_uid="1.2"), State.SYNCED, NOW, None)
    assert _claim(two) == ["new"]


def test_recording_a_result_gives_the_lease_up(database: Ledger) -> None:
    """A result recorded, a study still arriving, a final state or a dry-run look each end the
    owner's lease at once, so another process may take the study when it is next due."""
    one, two = _store(database, "one"), _store(database, "two")
    one.discover(["r", "w", "f", "t"], 1.0, priority=LIVE, due_at=1.0)
    assert _claim(one) == ["f", "r", "t", "w"]
    one.record(StudyResult("r", Outcome.UNMATCHED), State.UNMATCHED, NOW, NOW)
    one.record_waiting("w", NOW, NOW)
    one.set_state("f", State.IGNORED, "by a person", NOW)
    one.touch("t", NOW)
    one.make_due("f", NOW, reset=True)
    assert _claim(two, NOW + 1) == ["f", "r", "t", "w"]


def test_an_old_owners_result_leaves_the_new_owners_lease(database: Ledger) -> None:
    """A process that lost its lease (stuck past it) and records late does not end the lease
    of the process that took the study over."""
    stuck, taker = _store(database, "stuck"), _store(database, "taker")
    stuck.discover(["s"], 1.0, priority=LIVE, due_at=1.0)
    assert _claim(stuck) == ["s"]
    assert _claim(taker, NOW + LEASE) == ["s"]
    stuck.record(StudyResult("s", Outcome.FAILED), State.FAILED, NOW + LEASE, NOW + LEASE)
    held = stuck.claim_study("s", NOW + LEASE + 1)
    assert held is not None
    assert held.owner == "taker"


def test_renewal_extends_the_lease(database: Ledger) -> None:
    """A renewed lease keeps the study from others past its first end; renewal reports the
    leases the owner no longer holds."""
    owner, other = _store(database, "owner"), _store(database, "other")
    owner.discover(["a", "b"], 1.0, priority=LIVE, due_at=1.0)
    assert _claim(owner) == ["a", "b"]
    renewed = NOW + LEASE - 1
    assert owner.renew_leases(["a"], renewed) == 1
    assert _claim(other, NOW + LEASE) == ["b"]
    assert _claim(other, renewed + LEASE - 1) == []
    assert owner.renew_leases(["a", "b"], renewed + 1) == 1  # b was taken over


def test_release_lets_another_claim_at_once(database: Ledger) -> None:
    """Leases given back (a pass that stopped) are claimable by another process at once."""
    one, two = _store(database, "one"), _store(database, "two")
    one.discover(["a", "b"], 1.0, priority=LIVE, due_at=1.0)
    assert _claim(one) == ["a", "b"]
    one.release(["a"])
    two.release(["b"])  # not its lease: nothing happens
    assert _claim(two) == ["a"]


def test_a_uid_read_after_the_claim_gives_the_study_back_if_another_works_it(
    database: Ledger,
) -> None:
    """A study claimed before its UID was known is given back once the UID read shows another
    process working that UID; one whose UID is free is kept."""
    one, two = _store(database, "one"), _store(database, "two")
    one.discover(["known", "x", "z"], 1.0, priority=LIVE, due_at=1.0, uids={"known": "1.7"})
    assert one.claim_study("known", NOW) is None
    assert _claim(two) == ["x", "z"]
    assert two.learn_claimed_uids({"x": "1.7", "z": "1.8"}, NOW) == {"x"}
    assert _claim(one) == ["x"]
    assert [row.study_uid for row in one.find("z")] == ["1.8"]


def test_claim_study_adds_an_unknown_study_due_now(database: Ledger) -> None:
    """A person's command on a study the ledger lacks adds it with its UID, leased."""
    one, two = _store(database, "one"), _store(database, "two")
    assert one.claim_study("new", NOW, "1.9") is None
    (row,) = one.find("1.9")
    assert (row.orthanc_id, row.next_attempt_at) == ("new", NOW)
    assert _claim(two) == []
    assert _claim(one) == []  # held for the command, not handed to a pass as well
    assert one.claim_study("new", NOW + 1) is None  # the command's own lease does not stop it


def test_shared_work_is_held_by_one_owner_at_a_time(database: Ledger) -> None:
    """Only one owner at a time holds a named task; it keeps its own, and another takes it once
    released."""
    one, two = _store(database, "one"), _store(database, "two")
    assert one.claim_task("sweep", NOW)
    assert not two.claim_task("sweep", NOW + 1)
    assert one.claim_task("sweep", NOW + LEASE - 1)  # renewed
    assert not two.claim_task("sweep", NOW + LEASE - 1)
    one.release_task("sweep")
    assert two.claim_task("sweep", NOW + LEASE)
    one.release_task("sweep")  # no longer its task: nothing happens
    assert not one.claim_task("sweep", NOW + LEASE)


def test_sqlite_shared_work_is_taken_over_when_its_lease_runs_out(sqlite_database: Path) -> None:
    """SQLite: a task whose owner stopped renewing (killed) is taken once its lease runs out."""
    one, two = _store(sqlite_database, "one"), _store(sqlite_database, "two")
    assert one.claim_task("sweep", NOW)
    assert not two.claim_task("sweep", NOW + LEASE - 1)
    assert two.claim_task("sweep", NOW + LEASE)
    assert not one.claim_task("sweep", NOW + LEASE + 1)


def test_postgres_shared_work_is_free_the_moment_its_holder_is_gone(postgres_database: str) -> None:
    """PostgreSQL: a task is held by its owner's connection, whatever the clock says, and is
    free as soon as that connection is gone (its process died), without waiting for a lease."""
    one, two = _store(postgres_database, "one"), _store(postgres_database, "two")
    assert one.claim_task("sweep", NOW)
    assert not two.claim_task("sweep", NOW + 10 * LEASE)
    one.close()
    assert two.claim_task("sweep", NOW)
    assert two.claim_task("changes feed", NOW)  # tasks are held by name, apart


def test_cursor_only_advances_whoever_moves_it(database: Ledger) -> None:
    """Two processes following the changes feed: the cursor keeps the highest sequence
    either has reached, whatever the order of their writes."""
    one, two = _store(database, "one"), _store(database, "two")
    one.advance_cursor(100)
    two.advance_cursor(250)
    one.advance_cursor(180)  # a page read before the other's write lands after it
    assert (one.cursor(), two.cursor()) == (250, 250)


def test_sweeps_are_numbered_apart_and_seen_marks_only_rise(database: Ledger) -> None:
    """Each sweep gets a new number, and a study marked seen by a later sweep is not made to
    look unseen to it by an earlier one finishing after."""
    one, two = _store(database, "one"), _store(database, "two")
    one.discover(["a"], 1.0, priority=BACKLOG, due_at=1.0)
    early, late = one.begin_sweep(), two.begin_sweep()
    assert late == early + 1
    two.mark_seen(["a"], late, NOW)
    one.mark_seen(["a"], early, NOW)
    assert two.unseen(late) == []
