"""The REST patient and identifier-type resources, with the platform's patient searches."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, TypeVar

from orthanc_openmrs_devtools.openmrs_double.auth import require
from orthanc_openmrs_devtools.openmrs_double.errors import (
    method_not_allowed,
    not_found,
    not_supported,
)
from orthanc_openmrs_devtools.openmrs_double.patient_views import patient_node, type_node
from orthanc_openmrs_devtools.openmrs_double.representation import (
    SPECIAL_PARAMS,
    page,
    render,
    request_context,
)
from orthanc_openmrs_devtools.openmrs_double.wire import json_response

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from orthanc_openmrs_devtools.openmrs_double.model import (
        IdType,
        Patient,
        SearchKeys,
        Store,
    )
    from orthanc_openmrs_devtools.openmrs_double.representation import Node
    from orthanc_openmrs_devtools.openmrs_double.wire import Call, Response

MIN_SEARCH_CHARACTERS = 2

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# Patient search (the platform's generic search, and the identifier-prefix variant)


def _name_matches(names: Sequence[str], tokens: Sequence[str]) -> bool:
    return all(any(token in part for part in names) for token in tokens)


def fuzzy_search(rows: Iterable[SearchKeys], query: str) -> list[Patient]:
    """Identifier hits ("anywhere" n-gram mode, exact ones first), then name hits."""
    needle = query.strip().lower()
    if len(needle) < MIN_SEARCH_CHARACTERS:
        return []
    tokens = needle.split()
    # Every hit has the first token somewhere in its keys' text: the token is part of the
    # needle, and every name token must be in a name. (After strip() there is always a token;
    # an empty probe would keep everyone, as the full comparison would.)
    probe = tokens[0] if tokens else ""
    candidates = [keys for keys in rows if probe in keys.text]
    exact: list[Patient] = []
    partial: list[Patient] = []
    by_name: list[Patient] = []
    for keys in candidates:
        if keys.patient.voided:
            continue
        if needle in keys.active_ids:
            exact.append(keys.patient)
        elif any(needle in value for value in keys.active_ids):
            partial.append(keys.patient)
        elif _name_matches(keys.names, tokens):
            by_name.append(keys.patient)
    return exact + partial + by_name


def prefix_search(rows: Iterable[SearchKeys], query: str, include_all: bool) -> list[Patient]:
    # searchType=start is a SQL LIKE 'X%' that does not look at the identifier's voided flag.
    needle = query.lower()
    # The `in` test on the text is a cheap first cut: a prefix of an identifier is in it too.
    return [
        keys.patient
        for keys in rows
        if needle in keys.text
        and (include_all or not keys.patient.voided)
        and any(value.startswith(needle) for value in keys.all_ids)
    ]


def _patient_search(store: Store, call: Call) -> list[Patient]:
    """Pick the search the REST module would pick from the non-special parameters."""
    params = set(call.req.query) - SPECIAL_PARAMS
    if not params:
        raise not_supported()
    require(call, "Get Patients")
    rows = store.search_keys()
    if params <= {"identifier", "searchType"} and "identifier" in params:
        query = call.req.param("identifier") or ""
        if call.req.param("searchType") == "start":
            include_all = (call.req.param("includeAll") or "").lower() == "true"
            return prefix_search(rows, query, include_all)
        return fuzzy_search(rows, query)
    # No handler fits: the resource's own search, which only reads q.
    q = call.req.param("q")
    return [] if q is None else fuzzy_search(rows, q)


# --------------------------------------------------------------------------------------------
# Resources


def patient_resource(store: Store, call: Call, rest: str) -> Response:
    search = partial(_patient_search, store, call)
    node = partial(patient_node, types=store.types, base=call.req.base)
    return _get_resource(call, rest, "Get Patients", store.patients.get, search, node)


def type_resource(store: Store, call: Call, rest: str) -> Response:
    search = partial(_type_search, store, call)
    node = partial(type_node, base=call.req.base, created=store.created)
    return _get_resource(call, rest, "Get Identifier Types", store.find_type, search, node)


def _type_search(store: Store, call: Call) -> list[IdType]:
    require(call, "Get Identifier Types")
    # ?q= is not implemented for this resource: it answers an empty list.
    return [] if "q" in call.req.query else list(store.types.values())


def _get_resource(
    call: Call,
    rest: str,
    privilege: str,
    find: Callable[[str], _T | None],
    search: Callable[[], list[_T]],
    node: Callable[[_T], Node],
) -> Response:
    """GET of one resource by uuid (shown as "default"), or a search (shown as "ref")."""
    if call.req.method != "GET":
        raise method_not_allowed(call)
    if rest:
        ctx = request_context(call.req, "default", call.generation)
        require(call, privilege)
        item = find(rest)
        if item is None:
            raise not_found()
        return json_response(200, render(node(item), ctx.spec))
    ctx = request_context(call.req, "ref", call.generation)
    found = search()
    return json_response(200, page(call.req, ctx, found, lambda i: render(node(i), ctx.spec)))
