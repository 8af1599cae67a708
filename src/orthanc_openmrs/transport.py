"""What the two REST clients share about httpx's transport errors."""

from __future__ import annotations

import httpx

# The request never reached the server: it is down or unreachable, not this request's fault.
_UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def unreachable(exc: httpx.HTTPError) -> bool:
    return isinstance(exc, _UNREACHABLE)


def describe(server: str, method: str, path: str, exc: httpx.HTTPError) -> str:
    """A message naming the request by its path only: URLs may carry credentials."""
    detail = str(exc) or "no answer"
    return f"{server} {method} {path}: {type(exc).__name__}: {detail}"
