"""`orthanc-openmrs check`: what an installer runs first. Each item is ok, a warning, or a
failure with what to do; the OpenMRS credentials are tried once (7 failures lock the account).

The decisions (versions, privileges, identifier types, the viewer link) are pure functions;
`run_checks` asks the servers and hands them the answers.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from orthanc_openmrs import caption as captions
from orthanc_openmrs.config import PatientLookup, Settings
from orthanc_openmrs.errors import ServerError
from orthanc_openmrs.models import OpenMRSModule, OpenMRSUser
from orthanc_openmrs.openmrs import OpenMRSClient
from orthanc_openmrs.orthanc import OrthancClient

# Orthanc before 1.12.11 has known out-of-bounds reads in its image decoders.
SAFE_ORTHANC = (1, 12, 11)
NEEDED_MODULES = {
    "webservices.rest": "the REST API every request goes to",
    "attachments": "the attachment upload and listing",
    "fhir2": "the exact patient lookup and the patient-change polls (without it: retry delays)",
}
# What the service's calls need (see docs/openmrs-preflight.md); each entry is satisfied by
# any one of its alternatives.
NEEDED_PRIVILEGES: tuple[tuple[str, ...], ...] = (
    ("Get Patients",),
    ("Get Identifier Types",),
    ("Get Visits",),
    ("Get Encounters",),
    ("Get Providers",),
    ("Get Concepts",),
    ("Get Observations",),
    ("Add Observations", "Edit Observations"),
    ("Edit Observations",),  # voiding: deleted studies and replaced previews
    ("Edit Encounters",),
    ("View Attachments",),
)
SUPERUSER_ROLE = "System Developer"
# The attachments module's complex concepts: images, and everything else (PDFs).
ATTACHMENT_CONCEPTS = {
    "7cac8397-53cd-4f00-a6fe-028e8d743f8e": "image attachments",
    "42ed45fd-f3f6-44b6-bfc2-8bde1bb41e00": "other attachments (PDF)",
}
_SAMPLE_UID = "1.2.826.0.1.3680043.8.498.1"
_SAMPLE_ID = "0" * 8 + "-" + "-".join(["0" * 8] * 4)


class Level(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Item:
    name: str
    level: Level
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.level.value:<5} {self.name:<20} {self.detail}"
        return f"{text}\n{'':26}-> {self.fix}" if self.fix else text


# -- pure decisions ---------------------------------------------------------------------------
def version_tuple(text: str) -> tuple[int, ...]:
    """`1.12.6` -> (1, 12, 6); text after the numbers (`-rc1`, `mainline`) is ignored."""
    numbers = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(n) for n in numbers.group().split(".")) if numbers else ()


def orthanc_version(version: str) -> Item:
    found = version_tuple(version)
    if found and found >= SAFE_ORTHANC:
        return Item("orthanc version", Level.OK, version)
    safe = ".".join(map(str, SAFE_ORTHANC))
    return Item(
        "orthanc version",
        Level.WARN,
        f"{version or 'unknown'} is older than {safe}, whose image decoders have known "
        "out-of-bounds reads",
        f"upgrade Orthanc to {safe} or newer",
    )


def orthanc_plugins(plugins: Iterable[str]) -> Item:
    if "gdcm" in set(plugins):
        return Item("orthanc plugins", Level.OK, "GDCM loaded (JPEG 2000, JPEG-LS)")
    return Item(
        "orthanc plugins",
        Level.FAIL,
        "the GDCM plugin is not loaded: JPEG 2000 and JPEG-LS studies get no preview",
        "install Orthanc's GDCM plugin (Debian: orthanc-gdcm) and list it in Plugins",
    )


def missing_privileges(user: OpenMRSUser) -> list[str]:
    if SUPERUSER_ROLE in user.roles:
        return []  # OpenMRS grants every privilege to this role
    return [
        alternatives[0]
        for alternatives in NEEDED_PRIVILEGES
        if not user.privileges & set(alternatives)
    ]


def missing_modules(modules: Iterable[OpenMRSModule]) -> list[str]:
    started = {m.module_id for m in modules if m.started}
    return [name for name in NEEDED_MODULES if name not in started]


def unknown_identifier_types(wanted: Iterable[str], known: Iterable[tuple[str, str]]) -> list[str]:
    names = {value for pair in known for value in pair}
    return sorted(t for t in wanted if t not in names)


def viewer_url(settings: Settings) -> Item:
    link = captions.viewer_link(
        settings.sync_viewer,
        settings.sync_viewer_url,
        settings.orthanc_public_url,
        _SAMPLE_UID,
        _SAMPLE_ID,
    )
    parts = urlsplit(link)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Item(
            "viewer link",
            Level.FAIL,
            f"{link} is not an absolute web address",
            "set ORTHANC_PUBLIC_URL (and SYNC_VIEWER_URL) to what clinicians' browsers reach",
        )
    if parts.hostname in ("localhost", "127.0.0.1", "::1"):
        return Item(
            "viewer link",
            Level.WARN,
            f"{link} points at this machine, not at one clinicians reach",
            "set ORTHANC_PUBLIC_URL to Orthanc's public address",
        )
    return Item("viewer link", Level.OK, link)


# -- asking the servers -----------------------------------------------------------------------
def run_checks(
    settings: Settings, orthanc: OrthancClient, openmrs: OpenMRSClient
) -> Iterator[Item]:
    yield Item("settings", Level.OK, "valid")
    yield from _orthanc(settings, orthanc)
    yield from _openmrs(settings, openmrs)
    yield viewer_url(settings)


def _orthanc(settings: Settings, orthanc: OrthancClient) -> Iterator[Item]:
    try:
        system = orthanc.system()
    except ServerError as exc:
        yield _unreachable("orthanc", settings.orthanc_url, exc, "ORTHANC")
        return
    yield Item("orthanc", Level.OK, f"Orthanc {system.version} at {settings.orthanc_url}")
    yield orthanc_version(system.version)
    yield orthanc_plugins(system.plugins)


def _openmrs(settings: Settings, openmrs: OpenMRSClient) -> Iterator[Item]:
    try:
        user = openmrs.whoami()  # the one login attempt
    except ServerError as exc:
        yield _unreachable("openmrs", settings.openmrs_url, exc, "OPENMRS")
        return
    if user is None:
        yield Item(
            "openmrs login",
            Level.FAIL,
            f"OpenMRS refuses user {settings.openmrs_user!r} (tried once; 7 failures lock it)",
            "correct OPENMRS_USER and OPENMRS_PASSWORD; nothing else was asked",
        )
        return
    yield Item("openmrs login", Level.OK, f"user {user.username or settings.openmrs_user!r}")
    missing = missing_privileges(user)
    yield Item(
        "openmrs privileges",
        Level.FAIL if missing else Level.OK,
        f"missing: {', '.join(missing)}" if missing else "everything the service needs",
        "give the user a role with these privileges" if missing else "",
    )
    checks = {
        "openmrs modules": _modules,
        "attachment concept": _concepts,
        "identifier types": _identifier_types,
    }
    for name, check in checks.items():
        yield from _guarded(name, check, settings, openmrs)


def _guarded(
    name: str,
    check: Callable[[Settings, OpenMRSClient], Iterator[Item]],
    settings: Settings,
    openmrs: OpenMRSClient,
) -> Iterator[Item]:
    """One item; a request that fails (a privilege missing, say) fails only that item."""
    try:
        yield from check(settings, openmrs)
    except ServerError as exc:
        yield Item(name, Level.FAIL, exc.message)


def _modules(settings: Settings, openmrs: OpenMRSClient) -> Iterator[Item]:
    modules = openmrs.modules()
    shown = ", ".join(
        f"{m.module_id} {m.version}" for m in modules if m.module_id in NEEDED_MODULES
    )
    missing = missing_modules(modules)
    if not missing:
        yield Item("openmrs modules", Level.OK, shown)
        return
    # Without FHIR2 the REST lookup still works; patients registered later wait for retries.
    optional = missing == ["fhir2"] and settings.sync_patient_lookup is PatientLookup.REST
    level = Level.WARN if optional else Level.FAIL
    yield Item(
        "openmrs modules",
        level,
        "not running: " + "; ".join(f"{m} ({NEEDED_MODULES[m]})" for m in missing),
        "install and start these OpenMRS modules",
    )


def _concepts(settings: Settings, openmrs: OpenMRSClient) -> Iterator[Item]:
    absent = [what for uuid, what in ATTACHMENT_CONCEPTS.items() if not openmrs.has_concept(uuid)]
    yield Item(
        "attachment concept",
        Level.FAIL if absent else Level.OK,
        f"missing: {', '.join(absent)}" if absent else "the attachments module's concepts exist",
        "start the attachments module once: it creates them" if absent else "",
    )


def _identifier_types(settings: Settings, openmrs: OpenMRSClient) -> Iterator[Item]:
    wanted = settings.identifier_types
    if not wanted:
        yield Item("identifier types", Level.OK, "any type counts (SYNC_IDENTIFIER_TYPES empty)")
        return
    unknown = unknown_identifier_types(wanted, openmrs.identifier_types())
    yield Item(
        "identifier types",
        Level.FAIL if unknown else Level.OK,
        f"unknown to OpenMRS: {', '.join(map(repr, unknown))}"
        if unknown
        else ", ".join(sorted(wanted)),
        "name types as OpenMRS does (Administration > Identifier Types), or by uuid"
        if unknown
        else "",
    )


def _unreachable(name: str, url: str, exc: ServerError, prefix: str) -> Item:
    refused = exc.status in (401, 403)
    tls = "CERTIFICATE_VERIFY_FAILED" in exc.message
    if refused:
        fix = f"correct {prefix}_USER and {prefix}_PASSWORD"
    elif tls:
        fix = "trust the server's CA: SYNC_CA_BUNDLE=/path/to/ca.pem"
    else:
        fix = f"check {prefix}_URL and that the server runs"
    return Item(name, Level.FAIL, f"{url}: {exc.message}", fix)


def exit_code(items: Iterable[Item]) -> int:
    return 1 if any(item.level is Level.FAIL for item in items) else 0
