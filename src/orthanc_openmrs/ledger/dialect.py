"""The few SQL fragments SQLite and PostgreSQL spell differently; the ledger's queries
(store.py) are otherwise one text for both.

JSON arrays carry lists of values into a statement as one parameter, so a statement's text does
not depend on how many values it is given.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dialect:
    name: str
    # Rows of a JSON array of strings, one column `value`; {} is the array (a parameter, a column).
    each_template: str
    # Rows of a JSON array of [patient uuid, identifier] pairs, columns `uuid`, `identifier`.
    pairs_template: str
    # The uuid of a candidate patient stored as "uuid display", from `c.value`.
    candidate_uuid: str
    # Appended to the claim's inner SELECT: rows another transaction is writing are passed over
    # rather than waited for.
    skip_locked: str

    def each(self, array: str) -> str:
        return self.each_template.format(array)

    def pairs(self, array: str) -> str:
        return self.pairs_template.format(array)


SQLITE = Dialect(
    name="sqlite",
    each_template="json_each({})",
    pairs_template=(
        "(SELECT json_extract(value, '$[0]') AS uuid, json_extract(value, '$[1]') AS identifier "
        "FROM json_each({}))"
    ),
    candidate_uuid="substr(c.value, 1, instr(c.value || ' ', ' ') - 1)",
    # One writer at a time (BEGIN IMMEDIATE): nothing is being written while a claim runs.
    skip_locked="",
)

POSTGRES = Dialect(
    name="postgresql",
    each_template="json_array_elements_text(CAST({} AS json))",
    pairs_template=(
        "(SELECT value->>0 AS uuid, value->>1 AS identifier "
        "FROM json_array_elements(CAST({} AS json)))"
    ),
    candidate_uuid="split_part(c.value, ' ', 1)",
    skip_locked="FOR UPDATE OF s SKIP LOCKED",
)
