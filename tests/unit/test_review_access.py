"""Who may do what on the review pages, failed sign-ins counted as OpenMRS counts them, and
the signed session cookie."""

from __future__ import annotations

from orthanc_openmrs.models import OpenMRSUser
from orthanc_openmrs.web.people import Privilege, person_of
from orthanc_openmrs.web.sessions import Sessions, same_token
from orthanc_openmrs.web.signin import FailedSignIns, lockout_message, refusal


def test_privileges_come_from_openmrs_and_system_developer_has_all() -> None:
    viewer = person_of(
        OpenMRSUser("v", frozenset({Privilege.VIEW.value, "Get Patients"}), frozenset())
    )
    assert viewer.granted == {Privilege.VIEW}
    assert not viewer.may_act
    superuser = person_of(OpenMRSUser("admin", frozenset(), frozenset({"System Developer"})))
    assert superuser.granted == set(Privilege)
    nobody = person_of(OpenMRSUser("n", frozenset({"Get Patients"}), frozenset({"Provider"})))
    assert not nobody.may(Privilege.VIEW)


def test_seven_failures_lock_for_five_minutes() -> None:
    """Each failure says how many tries are left; the 7th locks the name (not others) for
    300 s; a success before that starts the count again."""
    now = [0.0]
    failures = FailedSignIns(lambda: now[0])
    assert [failures.failed("clerk") for _ in range(6)] == [6, 5, 4, 3, 2, 1]
    assert failures.locked("clerk") == 0
    assert failures.failed("clerk") == 0
    assert failures.locked("clerk") == 300
    assert failures.locked("other") == 0
    now[0] = 299.0
    assert failures.locked("clerk") == 1
    now[0] = 300.5
    assert failures.locked("clerk") == 0
    assert failures.failed("clerk") == 6  # counting starts again after the lockout
    failures.succeeded("clerk")
    assert failures.failed("clerk") == 6
    assert "6 more failed sign-ins" in refusal(6)
    assert "1 more failed sign-in and" in refusal(1)
    assert "locks the account" in refusal(0)
    assert "about 5 minutes" in lockout_message(300)


def test_session_cookie_is_signed_expires_and_can_be_revoked() -> None:
    now = [1000.0]
    sessions = Sessions("k" * 32, 3600, secure=False, clock=lambda: now[0])
    person = person_of(OpenMRSUser("clerk", frozenset({Privilege.LINK.value}), frozenset()))
    session, value = sessions.new(person)
    read = sessions.read(value)
    assert read is not None
    assert read.person == person
    assert read.csrf == session.csrf
    assert sessions.read(value[:-2] + "xx") is None  # forged
    assert Sessions("o" * 32, 3600, secure=False).read(value) is None  # another key
    now[0] += 3601
    assert sessions.read(value) is None  # expired
    now[0] -= 3601
    sessions.revoke(session)
    assert sessions.read(value) is None
    header = sessions.cookie_header(value)
    assert "HttpOnly" in header
    assert "SameSite=Strict" in header
    assert "Path=/review" in header
    assert "Secure" not in header
    assert "Secure" in Sessions("k" * 32, 60, secure=True).cookie_header(value)


def test_csrf_tokens_compare_exactly() -> None:
    assert same_token("abc", "abc")
    assert not same_token("", "")
    assert not same_token("abd", "abc")


def test_the_signin_form_token_is_signed() -> None:
    sessions = Sessions("k" * 32, 60, secure=False)
    assert sessions.signin_token_valid(sessions.signin_token())
    assert not sessions.signin_token_valid("forged")
    assert not Sessions("o" * 32, 60, secure=False).signin_token_valid(sessions.signin_token())
