"""Signing in with the person's own OpenMRS account: one `GET /session` with their Basic
credentials, never retried, and the failures counted here as OpenMRS counts them.

OpenMRS locks an account for five minutes after seven failed logins in a row (core's
`security.allowedFailedLoginsBeforeLockout`), and every attempt during the lockout, the right
password included, starts the five minutes again. So the pages tell the person how many tries
are left, and once the seventh fails they stop sending attempts for that username until the
lockout has passed, instead of prolonging it. The count is this process's own: it can only be
behind OpenMRS's (other applications count there too), never ahead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from orthanc_openmrs.models import OpenMRSUser
from orthanc_openmrs.openmrs import REST, session_user
from orthanc_openmrs.transport import Verify, basic_auth

FAILED_LOGINS_BEFORE_LOCKOUT = 7
LOCKOUT_SECONDS = 300.0
SSO_ONLY = (
    "OpenMRS signs people in through single sign-on here, which these pages do not offer yet: "
    "signing in with a password is not available."
)


@dataclass(frozen=True)
class SignIn:
    """The outcome of one attempt: the user, or a message for the person."""

    user: OpenMRSUser | None
    message: str = ""


class FailedSignIns:
    """Failed sign-ins per username since the last success, and the lockout that follows."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._locked_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def locked(self, username: str) -> float:
        """Seconds until OpenMRS lets this username try again (0: not locked)."""
        with self._lock:
            at = self._locked_at.get(username)
            if at is None:
                return 0.0
            left = at + LOCKOUT_SECONDS - self._clock()
            if left > 0:
                return left
            del self._locked_at[username]
            self._failures.pop(username, None)
            return 0.0

    def failed(self, username: str) -> int:
        """Counts a failure; returns how many tries are left before the lockout."""
        with self._lock:
            count = self._failures.get(username, 0) + 1
            self._failures[username] = count
            if count >= FAILED_LOGINS_BEFORE_LOCKOUT:
                self._locked_at[username] = self._clock()
            return max(FAILED_LOGINS_BEFORE_LOCKOUT - count, 0)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop(username, None)
            self._locked_at.pop(username, None)


def refusal(tries_left: int) -> str:
    if tries_left == 0:
        return (
            "OpenMRS did not accept this username and password. This was the 7th failed "
            "sign-in in a row: OpenMRS now locks the account for 5 minutes."
        )
    return (
        "OpenMRS did not accept this username and password. "
        f"{tries_left} more failed sign-in{'s' if tries_left != 1 else ''} and OpenMRS locks "
        "the account for 5 minutes."
    )


def lockout_message(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return (
        "This account has failed to sign in 7 times in a row, so OpenMRS has locked it. "
        f"Try again in about {minutes} minute{'s' if minutes != 1 else ''}: an attempt before "
        "then starts the lockout again."
    )


def ask_openmrs(
    openmrs_url: str, username: str, password: str, *, verify: Verify, timeout: float
) -> SignIn:
    """One login against OpenMRS with the person's credentials; the session it opens is
    closed again (the pages keep their own). Transport errors are the person's to retry."""
    headers = {"Accept": "application/json", **basic_auth(username, password)}
    try:
        with httpx.Client(
            base_url=openmrs_url, timeout=timeout, verify=verify, follow_redirects=False
        ) as client:
            response = client.get(f"{REST}/session", headers=headers)
            data = response.json() if response.status_code == 200 else None
            if response.cookies:
                client.delete(f"{REST}/session")  # log out the session the login opened
    except (httpx.HTTPError, ValueError):
        return SignIn(None, "OpenMRS cannot be reached just now; try again in a moment.")
    if response.status_code != 200:
        return SignIn(
            None,
            f"OpenMRS answered HTTP {response.status_code} to the sign-in; "
            "if single sign-on is on, sign-in with a password is not available.",
        )
    return SignIn(session_user(data))
