"""Who is calling: Basic credentials, JSESSIONID sessions and the failed-login lockout."""

from __future__ import annotations

import base64
import binascii
import secrets
import time
import uuid as uuidlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from orthanc_openmrs_devtools.openmrs_double.errors import (
    html_page,
    lacks_privilege,
    method_not_allowed,
    not_found,
    not_logged_in,
)
from orthanc_openmrs_devtools.openmrs_double.wire import REST, Response, cookie, json_response

if TYPE_CHECKING:
    from orthanc_openmrs_devtools.openmrs_double.wire import Call, Request

FAILED_LOGINS_BEFORE_LOCKOUT = 7
LOCKOUT_SECONDS = 300.0

ADMIN_UUID = "45ce6c2e-dd5a-11e6-9d9c-0242ac150002"
_ADMIN_PERSON_UUID = "24252571-dd5a-11e6-9d9c-0242ac150002"
_SYSTEM_DEVELOPER_UUID = "8d94f852-c2cc-11de-8d13-0010c6dffd0f"
_LIMITED_ROLE_UUID = "a4a2b5c1-5e0e-4d3b-9a7c-6c1d2b0f9e11"


@dataclass
class Session:
    user: str | None = None


@dataclass
class _Account:
    failures: int = 0
    locked_at: float | None = None


@dataclass
class User:
    """A user account: its password, and the privileges its roles grant (None: the System
    Developer role, which passes every check)."""

    username: str
    password: str
    privileges: frozenset[str] | None = None
    role: str = "System Developer"
    uuid: str = ADMIN_UUID


def basic_credentials(header: str | None) -> tuple[str, str] | Literal["invalid"] | None:
    """The user and password of a Basic header; None when there is none."""
    if header is None or not header.startswith("Basic"):
        return None
    token = header[len("Basic") :].strip()
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "invalid"
    if not decoded or ":" not in decoded:
        return "invalid"
    # Java's split(":") then [0] and [1]: a password containing ':' is cut at that colon.
    parts = decoded.split(":")
    return parts[0], parts[1] if len(parts) > 1 else ""


def require(call: Call, privilege: str, *more: str) -> None:
    """The privilege checks of the service methods a request runs, in their order: 401 for
    nobody logged in, 403 naming the first privilege the user lacks."""
    if call.user is None:
        raise not_logged_in(privilege)
    if call.privileges is None:
        return  # System Developer: OpenMRS grants this role every privilege
    for needed in (privilege, *more):
        if needed not in call.privileges:
            raise lacks_privilege(needed)


def require_any(call: Call, *privileges: str) -> None:
    """A method authorised for any one of several privileges (@Authorized without
    requireAll), such as saving an obs: Add Observations or Edit Observations."""
    if call.user is None:
        raise not_logged_in(",".join(privileges))
    if call.privileges is not None and not call.privileges & set(privileges):
        raise lacks_privilege(",".join(privileges))


class Accounts:
    """The user accounts (the first one the service's), their login failures, and the open
    sessions."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self._users: dict[str, User] = {username: User(username, password)}
        self._sessions: dict[str, Session] = {}
        self._accounts: dict[str, _Account] = {}

    @property
    def privileges(self) -> frozenset[str] | None:
        """The first user's: None while it has the System Developer role."""
        return self._users[self.username].privileges

    @privileges.setter
    def privileges(self, value: frozenset[str] | None) -> None:
        user = self._users[self.username]
        user.privileges = value
        user.role = "System Developer" if value is None else "Imaging Integration"

    def add_user(
        self, username: str, password: str, privileges: frozenset[str] | None, role: str
    ) -> None:
        uuid = str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"user:{username}"))
        self._users[username] = User(username, password, privileges, role, uuid)

    def user(self, username: str | None) -> User | None:
        return None if username is None else self._users.get(username)

    def privileges_of(self, username: str | None) -> frozenset[str] | None:
        user = self.user(username)
        return None if user is None else user.privileges

    def session_for(self, req: Request) -> tuple[Session, str | None, bool]:
        """The request's session; a missing or stale cookie gets a new one (set on the reply)."""
        sent = cookie(req.headers.get("cookie"), "JSESSIONID")
        if sent is not None and sent in self._sessions:
            return self._sessions[sent], None, False
        new_id = secrets.token_hex(16).upper()
        self._sessions[new_id] = Session()
        return self._sessions[new_id], new_id, sent is not None

    def end_session(self, req: Request) -> None:
        sent = cookie(req.headers.get("cookie"), "JSESSIONID")
        self._sessions.pop(sent or "", None)

    def expire_sessions(self) -> None:
        self._sessions.clear()

    def failed_logins(self, username: str) -> int:
        account = self._accounts.get(username)
        return 0 if account is None else account.failures

    def is_locked(self, username: str) -> bool:
        account = self._accounts.get(username)
        return account is not None and _lock_active(account)

    def authenticate(self, username: str, password: str) -> bool:
        """The platform's login: counts failures of a known user and locks it out."""
        user = self._users.get(username)
        if user is None:
            return False  # failures are only counted against an existing account
        account = self._accounts.setdefault(username, _Account())
        if account.locked_at is not None:
            if not _lock_active(account):
                account.failures, account.locked_at = 0, None
            else:
                # Every attempt during a lockout, even a correct one, restarts the wait.
                account.locked_at = time.monotonic()
                return False
        if password == user.password:
            account.failures = 0
            return True
        account.failures += 1
        if account.failures >= FAILED_LOGINS_BEFORE_LOCKOUT:
            account.locked_at = time.monotonic()
        return False

    def basic_login(self, req: Request, session: Session) -> Response | None:
        """REST filter: Basic credentials log an unauthenticated session in, silently or not."""
        if session.user is not None:
            return None  # an authenticated session wins over whatever Basic header is sent
        creds = basic_credentials(req.headers.get("authorization"))
        if creds == "invalid":
            return html_page(400, "Invalid credentials provided")
        if creds is not None and self.authenticate(*creds):
            session.user = creds[0]
        return None


def _lock_active(account: _Account) -> bool:
    return account.locked_at is not None and time.monotonic() - account.locked_at <= LOCKOUT_SECONDS


# --------------------------------------------------------------------------------------------
# The session resource


def session_resource(accounts: Accounts, call: Call, rest: str) -> Response:
    if rest:
        raise not_found()
    if call.req.method == "DELETE":
        accounts.end_session(call.req)
        return Response(204)
    if call.req.method != "GET":
        raise method_not_allowed(call)
    body: dict[str, Any] = {"authenticated": call.user is not None, "locale": "en"}
    body["allowedLocales"] = ["en", "es", "fr", "it", "pt"]
    user = accounts.user(call.user)
    if user is None and call.user is not None:
        # Logged in by a token (oauth2login), which provisions the account it names; its
        # privileges are as privileges_of() tells (every check passes).
        user = User(call.user, "")
    if user is not None:
        body["user"] = _user_json(user, call.req.base)
        body["sessionLocation"] = None
        body["currentProvider"] = None
    return json_response(200, body)


def _user_json(user: User, base: str) -> dict[str, Any]:
    def link(kind: str, uuid: str) -> list[dict[str, str]]:
        return [{"rel": "self", "uri": f"{base}{REST}{kind}/{uuid}", "resourceAlias": kind}]

    # User.getPrivileges() gathers the privileges of the user's roles; System Developer holds
    # none of its own (every check passes for it), so its users list none.
    role_uuid = _SYSTEM_DEVELOPER_UUID
    if user.role != "System Developer":
        role_uuid = str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"role:{user.role}"))
    if user.role == "Imaging Integration":
        role_uuid = _LIMITED_ROLE_UUID
    role = {"uuid": role_uuid, "display": user.role, "name": user.role}
    granted = [
        {"uuid": str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, name)), "display": name, "name": name}
        for name in sorted(user.privileges or ())
    ]
    person = {"uuid": _ADMIN_PERSON_UUID, "display": "Super User"}
    if user.uuid != ADMIN_UUID:
        person = {"uuid": str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, user.uuid)), "display": ""}
    return {
        "uuid": user.uuid,
        "display": user.username,
        "username": user.username,
        "systemId": user.username,
        "userProperties": {},
        "person": person,
        "privileges": granted,
        "roles": [role],
        "links": link("user", user.uuid),
    }
