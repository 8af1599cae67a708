"""The review pages in Debian's Chromium, against a real Orthanc, the OpenMRS double and
`orthanc-openmrs run`: a clerk resolves an unmatched, an ambiguous and a mismatched study from
the browser alone; DICOM text stays text; a view-only person cannot act; sign-out ends it.

The tests share one service and run in order: each leaves the queue as the next expects."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from conftest import CLERK, CLERK_PASSWORD, SCRIPT, VIEWER, VIEWER_PASSWORD, Stack, shot
from orthanc_openmrs.models import State

pytestmark = pytest.mark.orthanc


@pytest.fixture(scope="module")
def clerk(stack: Stack) -> Page:
    """The clerk's browser tab, signed in once for the module."""
    context = stack.browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{stack.base}/review/queue")
    expect(page).to_have_url(re.compile(r"/review/signin$"))  # no page without sign-in
    shot(page, "signin")
    page.fill("input[name=username]", CLERK)
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("6 more failed sign-ins")
    assert stack.openmrs.failed_logins(CLERK) == 1
    shot(page, "signin-refused")
    page.fill("input[name=password]", CLERK_PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/review/$"))
    assert stack.openmrs.failed_logins(CLERK) == 0
    return page


def _sign_in(stack: Stack, username: str, password: str) -> Page:
    page = stack.browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
    page.goto(f"{stack.base}/review/signin")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/review/$"))
    return page


def _study(stack: Stack, page: Page, key: str) -> None:
    page.goto(f"{stack.base}/review/studies/{stack.ids[key]}")


def _confirm_link(page: Page) -> None:
    expect(page.locator("h1")).to_have_text("Link this study to this patient?")
    page.click("text=Yes, link and attach")
    expect(page.locator(".outcome h2")).to_have_text("synced")


def test_dashboard_counts_the_queue(stack: Stack, clerk: Page) -> None:
    """The dashboard shows the studies needing a person by state, and the service's state."""
    clerk.goto(f"{stack.base}/review/")
    expect(clerk.locator(".tile.urgent .n")).to_have_text("4")
    expect(clerk.locator(".facts")).to_contain_text("Last complete pass")
    expect(clerk.locator(".facts")).to_contain_text("4 of 4 studies tried at least once")
    shot(clerk, "dashboard")


def test_queue_lists_studies_with_thumbnails(stack: Stack, clerk: Page) -> None:
    """The queue shows the unmatched and the ambiguous study with their DICOM identity, their
    reason and a thumbnail the service fetched from Orthanc."""
    clerk.goto(f"{stack.base}/review/queue")
    lost = clerk.locator("article.study", has_text="XR HAND")
    expect(lost).to_contain_text("UN-404")
    expect(lost).to_contain_text("Lost, Lena")
    expect(lost.locator(".badge")).to_have_text("unmatched")
    twins = clerk.locator("article.study", has_text="CT HEAD")
    expect(twins.locator(".badge")).to_have_text("ambiguous")
    for item in (lost, twins):
        image = item.locator("img.thumb")
        image.scroll_into_view_if_needed()
        expect(image).to_have_js_property("complete", True)
        assert image.evaluate("i => i.naturalWidth") > 0
    shot(clerk, "queue")
    clerk.select_option("select[name=state]", "mismatch")
    clerk.click("text=Filter")
    expect(clerk.locator("article.study")).to_have_count(1)
    expect(clerk.locator("article.study")).to_contain_text("MR KNEE")


def test_a_script_tag_in_dicom_shows_as_text(stack: Stack, clerk: Page) -> None:
    """A patient name and description holding <script> are shown as text and run nothing."""
    dialogs: list[str] = []
    clerk.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    clerk.goto(f"{stack.base}/review/queue?q=XSS")
    expect(clerk.locator("article.study")).to_contain_text(f"{SCRIPT} CT ABDOMEN")
    _study(stack, clerk, "script")
    expect(clerk.locator("h1")).to_contain_text(f"{SCRIPT} CT ABDOMEN")
    expect(clerk.locator(".identity").first).to_contain_text(SCRIPT)
    assert clerk.locator("main script").count() == 0
    shot(clerk, "study-script")
    assert dialogs == []


def test_unmatched_study_linked_after_a_search(stack: Stack, clerk: Page) -> None:
    """OpenMRS's search finds the patient registered with a typo'd identifier; the hit says
    what agrees and differs; the link, once confirmed, attaches the study to that patient,
    the study leaves the queue and the audit names the clerk."""
    _study(stack, clerk, "lost")
    clerk.fill("input[name=q]", "Lost")
    clerk.click("text=Search OpenMRS")
    hit = clerk.locator(".candidate", has_text="UN-4O4")
    expect(hit).to_contain_text("birth date agrees")
    expect(hit).to_contain_text("sex agrees")
    shot(clerk, "study-search")
    hit.locator("text=Link to this patient…").click()
    expect(clerk.locator("table.side")).to_contain_text("UN-404")
    expect(clerk.locator("table.side")).to_contain_text("UN-4O4")
    shot(clerk, "confirm-link")
    _confirm_link(clerk)
    shot(clerk, "outcome")
    (attachment,) = stack.openmrs.attachments(stack.patients["lena"])
    assert "XR HAND" in (attachment.comment or "")
    assert stack.state("lost") is State.SYNCED
    clerk.goto(f"{stack.base}/review/queue")
    expect(clerk.locator("article.study", has_text="XR HAND")).to_have_count(0)
    clerk.goto(f"{stack.base}/review/audit")
    expect(clerk.locator("table.list")).to_contain_text(f"linked by {CLERK}")
    shot(clerk, "audit")


def test_ambiguous_study_linked_to_the_candidate_that_agrees(stack: Stack, clerk: Page) -> None:
    """Both candidates are shown with their OpenMRS demographics, the one that agrees first;
    linking it attaches the study to her and to no one else."""
    _study(stack, clerk, "twins")
    candidates = clerk.locator(".candidate")
    expect(candidates).to_have_count(2)
    expect(candidates.first).to_contain_text("Ada")
    expect(candidates.nth(1)).to_contain_text("birth date differs")
    shot(clerk, "study-ambiguous")
    candidates.first.locator("text=Link to this patient…").click()
    _confirm_link(clerk)
    assert len(stack.openmrs.attachments(stack.patients["ada"])) == 1
    assert stack.openmrs.attachments(stack.patients["bea"]) == []


def test_mismatched_study_linked_with_both_dates_shown(stack: Stack, clerk: Page) -> None:
    """The mismatch shows both birth dates; the clerk's confirmed link attaches it anyway."""
    _study(stack, clerk, "mismatch")
    expect(clerk.locator(".reason")).to_contain_text("DICOM 1970-05-06, OpenMRS 1970-05-05")
    clerk.locator(".candidate").first.locator("text=Link to this patient…").click()
    expect(clerk.locator("main")).to_contain_text("birth date differs")
    _confirm_link(clerk)
    assert len(stack.openmrs.attachments(stack.patients["max"])) == 1


def test_retry_shows_the_outcome_and_ignore_asks_a_reason(stack: Stack, clerk: Page) -> None:
    """Retry runs at once and shows what came of it; ignore takes a reason, the study leaves
    the queue, and both are in the audit trail with the clerk's name."""
    _study(stack, clerk, "script")
    clerk.click("text=Retry now")
    expect(clerk.locator(".outcome h2")).to_have_text("unmatched")
    _study(stack, clerk, "script")
    clerk.fill("input[name=reason]", "test image from the vendor")
    clerk.click("text=Ignore this study")
    expect(clerk.locator(".outcome")).to_contain_text(f"ignored by {CLERK}")
    assert stack.state("script") is State.IGNORED
    clerk.goto(f"{stack.base}/review/queue")
    expect(clerk.locator("article.study")).to_have_count(0)
    clerk.goto(f"{stack.base}/review/audit")
    expect(clerk.locator("table.list")).to_contain_text(f"retried by {CLERK}")
    expect(clerk.locator("table.list")).to_contain_text("test image from the vendor")


def test_view_only_person_sees_no_buttons_and_a_forged_post_is_refused(stack: Stack) -> None:
    """A person with only the view privilege sees the study but no button; a POST forged with
    their own session and token is refused, and so is one without the token."""
    page = _sign_in(stack, VIEWER, VIEWER_PASSWORD)
    expect(page.locator(".who")).to_contain_text("(view only)")
    _study(stack, page, "twins")
    expect(page.locator("h1")).to_contain_text("CT HEAD")
    for label in ("Retry now", "Ignore this study", "Link to this patient…", "Search OpenMRS"):
        expect(page.get_by_text(label)).to_have_count(0)
    shot(page, "study-view-only")
    token = page.locator(".who input[name=csrf]").get_attribute("value")
    url = f"{stack.base}/review/studies/{stack.ids['twins']}"
    forged = page.request.post(f"{url}/link", form={"csrf": token, "patient": "x"})
    assert forged.status == 403
    assert page.request.post(f"{url}/retry", form={"csrf": token}).status == 403
    assert page.request.post(f"{url}/ignore", form={"csrf": token, "reason": "r"}).status == 403
    without_token = page.request.post(f"{url}/retry", form={})
    assert without_token.status == 403
    page.context.close()


def test_sign_out_ends_the_session(stack: Stack) -> None:
    """After sign-out the pages send the person to sign in, even with the old cookie."""
    page = _sign_in(stack, CLERK, CLERK_PASSWORD)
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "orthanc_openmrs_review"]
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    page.click("text=Sign out")
    expect(page).to_have_url(re.compile(r"/review/signin$"))
    page.goto(f"{stack.base}/review/queue")
    expect(page).to_have_url(re.compile(r"/review/signin$"))
    replayed = httpx.get(
        f"{stack.base}/review/queue",
        cookies={cookie["name"]: cookie["value"]},
        follow_redirects=False,
    )
    assert replayed.status_code == 303
    assert replayed.headers["location"] == "/review/signin"
    page.context.close()
