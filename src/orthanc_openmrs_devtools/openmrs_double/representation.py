"""What a REST read shows: ?v=ref/default/full/custom:(...) and the paging parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import quote_plus

from orthanc_openmrs_devtools.openmrs_double.errors import (
    CODE_CONTEXT,
    CODE_CONVERSION,
    CODE_RESTUTIL,
    RestError,
)
from orthanc_openmrs_devtools.openmrs_double.wire import int_param

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from orthanc_openmrs_devtools.openmrs_double.wire import Generation, Request

# Defaults of the REST module's global properties.
DEFAULT_LIMIT = 50
ABSOLUTE_LIMIT = 100
# Query parameters the REST module strips before it picks a search handler.
SPECIAL_PARAMS = frozenset(
    {"v", "limit", "startIndex", "includeAll", "jsessionid", "s", "t", "totalCount"}
)


# --------------------------------------------------------------------------------------------
# Custom representations


@dataclass(frozen=True)
class Field:
    name: str
    spec: Spec | None


Spec: TypeAlias = "str | tuple[Field, ...]"


class SpecParser:
    """Reads a custom representation such as ``(uuid,identifiers:(identifier,voided))``."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0

    def parse(self) -> tuple[Field, ...]:
        fields = self._list()
        if self._pos != len(self._text):
            raise ValueError(f"unexpected text at {self._pos}: {self._text[self._pos :]!r}")
        return fields

    def _list(self) -> tuple[Field, ...]:
        self._expect("(")
        fields = [self._field()]
        while self._peek() == ",":
            self._pos += 1
            fields.append(self._field())
        self._expect(")")
        return tuple(fields)

    def _field(self) -> Field:
        name = self._word()
        if self._peek() != ":":
            return Field(name, None)
        self._pos += 1
        if self._peek() == "(":
            return Field(name, self._list())
        return Field(name, self._word())

    def _word(self) -> str:
        start = self._pos
        while self._pos < len(self._text) and self._text[self._pos] not in ",():":
            self._pos += 1
        word = self._text[start : self._pos].strip()
        if not word:
            raise ValueError(f"a property name is missing at {start}")
        return word

    def _peek(self) -> str:
        return self._text[self._pos] if self._pos < len(self._text) else ""

    def _expect(self, char: str) -> None:
        if self._peek() != char:
            raise ValueError(f"expected {char!r} at {self._pos}")
        self._pos += 1


# --------------------------------------------------------------------------------------------
# Rendering a resource in a representation


@dataclass(frozen=True)
class Node:
    """Everything a resource could show; a view picks which properties, in which order.

    A view entry is a property name, or "name:subview" for a nested resource; "links:full"
    adds the link to the full representation, as default representations do.
    """

    uri: str
    alias: str
    props: Mapping[str, Any]
    views: Mapping[str, tuple[str, ...]]


def _links(node: Node, *, with_full: bool) -> list[dict[str, str]]:
    links = [{"rel": "self", "uri": node.uri, "resourceAlias": node.alias}]
    if with_full:
        links.append({"rel": "full", "uri": node.uri + "?v=full", "resourceAlias": node.alias})
    return links


def render(node: Node, spec: Spec) -> dict[str, Any]:
    if isinstance(spec, str):
        return _render_view(node, spec)
    out: dict[str, Any] = {}
    for wanted in spec:
        if wanted.name == "links":
            out["links"] = _links(node, with_full=False)
        elif wanted.name in node.props:
            # A nested resource named without a sub-representation is shown as "default".
            out[wanted.name] = _render_value(node.props[wanted.name], wanted.spec or "default")
        else:
            raise RestError(
                400,
                f"Unknown property '{wanted.name}' on {node.alias}",
                CODE_CONVERSION.format(line=426),
                reason="Unable to convert object into response content",
            )
    return out


def _render_view(node: Node, view: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in node.views[view]:
        name, _, sub = entry.partition(":")
        if name == "links":
            out["links"] = _links(node, with_full=sub == "full")
        else:
            out[name] = _render_value(node.props[name], sub or "ref")
    return out


def _render_value(value: Any, spec: Spec) -> Any:
    if isinstance(value, Node):
        return render(value, spec)
    if isinstance(value, list):
        return [_render_value(item, spec) for item in value]
    return value


# --------------------------------------------------------------------------------------------
# Request context (representation and paging), shared by every REST read


@dataclass(frozen=True)
class Context:
    spec: Spec
    limit: int
    start: int
    total_count: bool


def _representation(raw: str | None, default_view: str, generation: Generation) -> Spec:
    if raw is None:
        return default_view
    if raw == "":
        raise RestError(500, "?v=(empty string) is not allowed", CODE_RESTUTIL.format(line=270))
    if raw == default_view and generation == "A":
        message = f"Do not specify ?v={raw} because it is the default behavior for this request"
        raise RestError(500, message, CODE_RESTUTIL.format(line=274))
    if raw in ("ref", "default", "full"):
        return raw
    if raw.startswith("custom:"):
        try:
            return SpecParser(raw.removeprefix("custom:")).parse()
        except ValueError as exc:
            raise RestError(500, str(exc), CODE_CONVERSION.format(line=160)) from exc
    raise RestError(
        400,
        f"Unknown representation: {raw}",
        CODE_CONVERSION.format(line=112),
        reason="Unable to convert object into response content",
    )


def request_context(req: Request, default_view: str, generation: Generation) -> Context:
    spec = _representation(req.param("v"), default_view, generation)
    limit = int_param(req, "limit")
    if limit is not None and limit <= 0:
        message = "If you specify a number of results to return, it must be >0 and not null"
        raise RestError(500, message, CODE_CONTEXT.format(line=119))
    if limit is not None and limit > ABSOLUTE_LIMIT:
        message = f"Administrator has set absolute limit at {ABSOLUTE_LIMIT}"
        raise RestError(500, message, CODE_CONTEXT.format(line=121))
    start = int_param(req, "startIndex") or 0
    total = (req.param("totalCount") or "").lower() == "true"
    return Context(spec, limit or DEFAULT_LIMIT, max(start, 0), total)


def _query_without_start(req: Request) -> str:
    # The REST module rebuilds the query as "k=v&" pairs, URL-encoding only the values.
    pairs = [
        f"{name}={quote_plus(value, safe='*')}&"
        for name, values in req.query.items()
        if name != "startIndex"
        for value in values
    ]
    return "?" + "".join(pairs)


def page(
    req: Request, ctx: Context, items: Sequence[Any], render_item: Callable[[Any], Any]
) -> dict[str, Any]:
    """One page of results with next/prev links, as the REST module's paging builds them."""
    chosen = items[ctx.start : ctx.start + ctx.limit]
    body: dict[str, Any] = {"results": [render_item(item) for item in chosen]}
    links = []
    if len(items) > ctx.start + ctx.limit:
        uri = f"{req.url}{_query_without_start(req)}startIndex={ctx.start + ctx.limit}"
        links.append({"rel": "next", "uri": uri})
    if ctx.start > 0:
        prev = max(ctx.start - ctx.limit, 0)
        suffix = f"startIndex={prev}" if prev > 0 else ""
        links.append({"rel": "prev", "uri": f"{req.url}{_query_without_start(req)}{suffix}"})
    if links:
        body["links"] = links
    if ctx.total_count:
        body["totalCount"] = len(items)
    return body
