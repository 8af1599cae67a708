"""An Orthanc Python plugin that refuses REST calls without a valid token, as Orthanc's
authorization plugin does: its filter answers 403 to every request it turns down, Basic
credentials included.

Loaded by the launcher (`OrthancServer(token_guard=...)`); it runs inside Orthanc's own Python
and reads its `TokenGuard` configuration section:

- `Headers`: the headers that may carry a token (the authorization plugin's `TokenHttpHeaders`);
  in `Authorization` the token follows `Bearer `;
- `Keys`: static API keys accepted as they are;
- `JwksUrl`: JWTs signed by one of these keys, and not expired, are accepted too;
- `SitePackages`: where PyJWT is (Orthanc's Python does not see a virtual environment);
- `Log`: a file that gets one JSON line per request: its arrival time, the token's `exp` (or
  null), whether it was let through.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from typing import Any

import orthanc  # type: ignore[import-not-found]  # only inside Orthanc

_CONFIG: dict[str, Any] = json.loads(orthanc.GetConfiguration()).get("TokenGuard", {})
sys.path[:0] = [str(p) for p in _CONFIG.get("SitePackages", [])]

import jwt  # noqa: E402  # after SitePackages

_HEADERS = [str(h).lower() for h in _CONFIG.get("Headers", ["token"])]
_KEYS = frozenset(str(k) for k in _CONFIG.get("Keys", []))
_JWKS_URL = str(_CONFIG.get("JwksUrl", ""))
_LOG = str(_CONFIG.get("Log", ""))
_lock = threading.Lock()
_jwks: list[jwt.PyJWKSet] = []


def _tokens(headers: dict[str, str]) -> list[str]:
    found = []
    for name in _HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        if name == "authorization":
            if not value.startswith("Bearer "):
                continue
            value = value[len("Bearer ") :]
        found.append(value.strip())
    return found


def _key_set() -> jwt.PyJWKSet:
    with _lock:
        if not _jwks:
            with urllib.request.urlopen(_JWKS_URL, timeout=10) as answer:  # noqa: S310
                _jwks.append(jwt.PyJWKSet.from_dict(json.loads(answer.read())))
        return _jwks[0]


def _valid_jwt(token: str) -> tuple[bool, float | None]:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        exp = float(claims["exp"]) if "exp" in claims else None
    except (jwt.InvalidTokenError, ValueError, TypeError):
        return False, None
    if not _JWKS_URL:
        return False, exp
    try:
        kid = str(jwt.get_unverified_header(token).get("kid", ""))
        jwt.decode(token, _key_set()[kid].key, algorithms=["RS256"], options={"verify_aud": False})
    except (jwt.InvalidTokenError, jwt.PyJWKError, KeyError, OSError, ValueError):
        return False, exp
    return True, exp


def guard(uri: str, **request: Any) -> bool:
    arrived = time.time()
    granted, exp = False, None
    for token in _tokens(request.get("headers") or {}):
        if token in _KEYS:
            granted = True
            break
        granted, exp = _valid_jwt(token)
        if granted:
            break
    if _LOG:
        line = json.dumps({"uri": uri, "arrived": arrived, "exp": exp, "granted": granted})
        with _lock, open(_LOG, "a", encoding="utf-8") as log:
            log.write(line + "\n")
    return granted


orthanc.RegisterIncomingHttpRequestFilter(guard)
