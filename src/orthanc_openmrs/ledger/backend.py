"""What the ledger's queries need of a database connection, whichever the database."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from orthanc_openmrs.ledger.dialect import Dialect
from orthanc_openmrs.ledger.location import LedgerLocation

Row = Mapping[str, Any]
Params = Sequence[object] | Mapping[str, object]


class Result(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> list[Row]: ...

    def fetchone(self) -> Row | None: ...


class Backend(Protocol):
    @property
    def location(self) -> LedgerLocation: ...

    dialect: Dialect
    # The driver's errors, which the store re-raises as StoreError.
    errors: tuple[type[Exception], ...]
    # True when work for the whole ledger is held by a lock that dies with its process
    # (hold/let_go); False when the store leases it in the `leases` table.
    session_locks: bool

    @property
    def in_transaction(self) -> bool: ...

    def transaction(self, *, claims: bool = False) -> AbstractContextManager[None]:
        """One transaction; `claims`: one that decides who works which study, which the
        backend runs one at a time across processes so each sees the claims before it."""
        ...

    def execute(self, sql: str, params: Params = ()) -> Result: ...

    def executemany(self, sql: str, params: Iterable[Params]) -> int:
        """Runs `sql` once per set of parameters; how many rows it changed in all."""
        ...

    def hold(self, name: str) -> bool:
        """Take (or keep) the lock on the shared work `name`; False while another holds it."""
        ...

    def let_go(self, name: str) -> None: ...

    def close(self) -> None: ...

    def redact(self, error: object) -> str:
        """`text` (a driver's message) with any secret of the location taken out."""
        ...

    def transient(self, error: Exception) -> bool:
        """Whether `error` (one of `errors`) may pass by itself: the database restarting or
        unreachable, a deadlock it broke, a lock not freed in time. `run` waits those out."""
        ...
