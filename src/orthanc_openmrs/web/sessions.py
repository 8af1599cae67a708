"""Sessions of the review pages: a signed cookie (HttpOnly, SameSite=Strict, Path=/review)
holding the person's username, their review privileges and a CSRF token, valid for a fixed
time from sign-in.

The cookie is signed, not encrypted: it holds nothing the person may not read (no password,
no patient data). Signing out revokes the session's id in this process and in the ledger, so
the cookie stops working at once, even if it was copied, in every process sharing the ledger.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from itsdangerous import BadSignature, URLSafeTimedSerializer

from orthanc_openmrs.web.people import Person, Privilege

COOKIE = "orthanc_openmrs_review"
PATH = "/review"


@dataclass(frozen=True)
class Session:
    id: str
    person: Person
    csrf: str
    issued: float


class SignOuts(Protocol):
    """Where sign-outs are kept for every process (the ledger)."""

    def sign_out(self, session_id: str, until: float, now: float) -> None: ...

    def signed_out(self, session_id: str) -> bool: ...


class Sessions:
    def __init__(
        self,
        secret: str,
        max_age: float,
        *,
        secure: bool,
        shared: SignOuts | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._shared = shared
        self._serializer = URLSafeTimedSerializer(secret, salt="orthanc-openmrs review session")
        self.max_age = max_age
        self.secure = secure
        self._clock = clock
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    def new(self, person: Person) -> tuple[Session, str]:
        """A session for a person just signed in, and its cookie's value."""
        session = Session(
            secrets.token_urlsafe(16), person, secrets.token_urlsafe(32), self._clock()
        )
        value = self._serializer.dumps(
            {
                "sid": session.id,
                "user": person.username,
                "may": sorted(p.value for p in person.granted),
                "csrf": session.csrf,
                "at": session.issued,
            }
        )
        return session, value

    def signin_token(self) -> str:
        """The sign-in form's CSRF token: signed and timed, so that no other site can post a
        sign-in (and sign a person in as someone else) without first loading the form."""
        return self._serializer.dumps({"signin": secrets.token_urlsafe(8)}, salt="signin")

    def signin_token_valid(self, token: str) -> bool:
        try:
            data = self._serializer.loads(token, max_age=3600, salt="signin")
        except BadSignature:
            return False
        return isinstance(data, dict) and "signin" in data

    def read(self, value: str | None) -> Session | None:
        """The session a cookie holds, or None when it is missing, forged, expired or revoked."""
        if not value:
            return None
        try:
            data = self._serializer.loads(value, max_age=int(self.max_age))
        except BadSignature:
            return None
        if not isinstance(data, dict):
            return None
        issued = float(data.get("at", 0))
        if self._clock() - issued > self.max_age:
            return None
        sid = str(data.get("sid", ""))
        with self._lock:
            if sid in self._revoked:
                return None
        if self._shared is not None and self._shared.signed_out(sid):
            return None
        granted = frozenset(Privilege(p) for p in data.get("may", []) if p in _NAMES)
        return Session(sid, Person(str(data.get("user", "")), granted), str(data["csrf"]), issued)

    def revoke(self, session: Session) -> None:
        now = self._clock()
        with self._lock:
            self._revoked[session.id] = session.issued + self.max_age
            for sid, until in list(self._revoked.items()):
                if until < now:
                    del self._revoked[sid]
        if self._shared is not None:
            self._shared.sign_out(session.id, session.issued + self.max_age, now)

    def cookie_header(self, value: str, *, max_age: float | None = None) -> str:
        age = int(self.max_age if max_age is None else max_age)
        parts = [
            f"{COOKIE}={value}",
            f"Path={PATH}",
            f"Max-Age={age}",
            "HttpOnly",
            "SameSite=Strict",
        ]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)


_NAMES = frozenset(p.value for p in Privilege)


def same_token(sent: str, expected: str) -> bool:
    """The CSRF check: the token of the form equals the session's (in constant time)."""
    return bool(sent) and secrets.compare_digest(sent.encode(), expected.encode())
