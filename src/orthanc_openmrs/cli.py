"""Commands. The only place that builds the clients, the store and the service."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import random
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from orthanc_openmrs import __version__, auth, logs, preflight, report
from orthanc_openmrs.config import Settings, env_name, load_settings
from orthanc_openmrs.errors import (
    ConfigError,
    CredentialsRefused,
    OrthancAuthError,
    ServerError,
    SyncError,
)
from orthanc_openmrs.http.metrics import LedgerReader
from orthanc_openmrs.http.server import HttpSurface, Routes, surface_app
from orthanc_openmrs.ledger.location import LocationError, PostgresURL, parse_location
from orthanc_openmrs.monitor import Monitor, ready_window
from orthanc_openmrs.openmrs import OpenMRSClient
from orthanc_openmrs.orthanc import OrthancClient
from orthanc_openmrs.progress import Progress
from orthanc_openmrs.retry import Backoff
from orthanc_openmrs.service import Service, ServiceOptions
from orthanc_openmrs.store import Store, move_ledger
from orthanc_openmrs.sync import SyncOptions
from orthanc_openmrs.transport import tls_verification
from orthanc_openmrs.web.app import LedgerSignOuts, Review, build_review_app
from orthanc_openmrs.web.sessions import Sessions

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_CREDENTIALS = 0, 1, 2, 3
_SECRET_FIELDS = frozenset(
    {
        "orthanc_password",
        "openmrs_password",
        "oauth_client_secret",
        "orthanc_api_key",
        "orthanc_oauth_client_secret",
        "sync_web_secret",
    }
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, **_flag_overrides(args))
        # `run` prints nothing but its log, so the log goes to stdout where containers expect
        # it; the other commands' stdout is their answer.
        stream = sys.stdout if args.command == "run" else sys.stderr
        logs.configure(settings.sync_log_format, verbose=args.verbose, stream=stream)
        return int(args.handler(args, settings))
    except ConfigError as exc:
        if args.command == "check":
            print(preflight.Item("settings", preflight.Level.FAIL, exc.message).line())
        else:
            print(f"orthanc-openmrs: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except CredentialsRefused as exc:
        print(f"orthanc-openmrs: stopped: {exc.message}", file=sys.stderr)
        return EXIT_CREDENTIALS
    except SyncError as exc:
        print(f"orthanc-openmrs: {exc.message}", file=sys.stderr)
        return EXIT_FAILED


# -- parser ------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orthanc-openmrs",
        description="Attach a preview of every Orthanc study to the right OpenMRS patient.",
        epilog="Settings come from flags, then environment variables, then the --config file.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="follow Orthanc and sync each study once it is stable")
    run.set_defaults(handler=_cmd_run)

    sync = commands.add_parser("sync", help="one pass: sync every stable study not yet synced")
    sync.add_argument("--study", metavar="ID", help="one study now: StudyInstanceUID or Orthanc ID")
    sync.add_argument(
        "--dry-run", action="store_true", help="report what would be attached; write nothing"
    )
    sync.add_argument("--json", action="store_true", help="print the summary as JSON")
    sync.set_defaults(handler=_cmd_sync)

    status = commands.add_parser("status", help="counts by state, and what needs a person")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_cmd_status)

    reconcile = commands.add_parser(
        "reconcile", help="one sweep: compare Orthanc with the ledger; void deleted studies"
    )
    reconcile.set_defaults(handler=_cmd_reconcile)

    review = commands.add_parser("review", help="the studies a person must decide about")
    review.add_argument("--json", action="store_true", help="machine-readable output")
    review.set_defaults(handler=_cmd_review)

    link = commands.add_parser("link", help="attach a study to the patient a person chose")
    link.add_argument("study", metavar="STUDY", help="StudyInstanceUID or Orthanc ID")
    link.add_argument("patient", metavar="PATIENT_UUID", help="the OpenMRS patient's uuid")
    link.add_argument("--by", default=_who(), help="who decided (default: the current user)")
    link.set_defaults(handler=_cmd_link)

    retry = commands.add_parser("retry", help="try a study again now (also an ignored one)")
    retry.add_argument("study", metavar="STUDY", help="StudyInstanceUID or Orthanc ID")
    retry.add_argument("--by", default=_who(), help="who asked (default: the current user)")
    retry.set_defaults(handler=_cmd_retry)

    ignore = commands.add_parser("ignore", help="leave a study alone from now on")
    ignore.add_argument("study", metavar="STUDY", help="StudyInstanceUID or Orthanc ID")
    ignore.add_argument("--reason", default="no reason given", help="why, for the audit trail")
    ignore.add_argument("--by", default=_who(), help="who decided (default: the current user)")
    ignore.set_defaults(handler=_cmd_ignore)

    audit = commands.add_parser("audit", help="every change the service made in OpenMRS")
    audit.add_argument("--study", metavar="ID", help="only this study (UID or Orthanc ID)")
    audit.add_argument("--json", action="store_true", help="machine-readable output")
    audit.set_defaults(handler=_cmd_audit)

    check = commands.add_parser(
        "check", help="preflight: settings, both servers, credentials (tried once), privileges"
    )
    check.set_defaults(handler=_cmd_check)

    move = commands.add_parser(
        "move-ledger",
        help="copy the ledger (SQLite) into an empty PostgreSQL database, for several instances",
    )
    move.add_argument(
        "--to", required=True, metavar="URL", help="the new ledger: postgresql://user@host/db"
    )
    move.add_argument(
        "--to-password-file",
        type=Path,
        metavar="FILE",
        help="file holding the new ledger's password",
    )
    move.add_argument(
        "--from",
        dest="source",
        metavar="LEDGER",
        help="the ledger to copy (default: SYNC_DATABASE)",
    )
    move.set_defaults(handler=_cmd_move_ledger)

    for sub in (run, sync, status, reconcile, review, link, retry, ignore, audit, check, move):
        _add_setting_flags(sub)
    return parser


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML file of settings")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request decision")
    group = parser.add_argument_group("settings (each also an environment variable)")
    for name, info in Settings.model_fields.items():
        if name in _SECRET_FIELDS:
            continue  # passwords on a command line are visible to every user of the machine
        default = info.get_default()
        shown = "required" if info.is_required() else f"default {default!s}"
        if isinstance(default, str) and not default:
            shown = "default empty"
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"setting_{name}",
            metavar="VALUE",
            help=f"{info.description} [{env_name(name)}; {shown}]",
        )


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    prefix = "setting_"
    return {
        key.removeprefix(prefix): value
        for key, value in vars(args).items()
        if key.startswith(prefix) and value is not None
    }


# -- wiring ------------------------------------------------------------------------------------
@contextmanager
def build_service(
    settings: Settings, *, dry_run: bool = False, progress: Progress | None = None
) -> Iterator[Service]:
    """The service with its clients and store, closed on exit."""
    monitor = Monitor(
        # A study held up by slow requests delays the loop's next beat by a few timeouts.
        grace=max(3 * settings.sync_poll_interval, 3 * settings.sync_http_timeout),
        version=__version__,
    )
    orthanc, openmrs = _clients(settings, monitor)
    store = Store(settings.sync_database)
    service = Service(
        orthanc,
        openmrs,
        store,
        SyncOptions.from_settings(settings, dry_run=dry_run),
        ServiceOptions(
            workers=settings.sync_workers,
            backoff=Backoff(settings.sync_retry_min, settings.sync_retry_max),
            poll_interval=settings.sync_poll_interval,
            reconcile_interval=settings.sync_reconcile_interval,
            keep_deleted=settings.sync_keep_deleted,
        ),
        progress=progress,
        monitor=monitor,
    )
    try:
        yield service
    finally:
        service.close()
        orthanc.close()
        openmrs.close()
        store.close()


def _clients(settings: Settings, monitor: Monitor | None) -> tuple[OrthancClient, OpenMRSClient]:
    verify = tls_verification(settings.sync_ca_bundle)
    orthanc = OrthancClient(
        settings.orthanc_url,
        auth=auth.orthanc_auth(settings, timeout=settings.sync_http_timeout, verify=verify),
        timeout=settings.sync_http_timeout,
        verify=verify,
        observe=monitor.observer("orthanc") if monitor else None,
    )
    openmrs = OpenMRSClient(
        settings.openmrs_url,
        auth=auth.openmrs_auth(settings, timeout=settings.sync_http_timeout, verify=verify),
        timeout=settings.sync_http_timeout,
        verify=verify,
        observe=monitor.observer("openmrs") if monitor else None,
    )
    return orthanc, openmrs


@contextmanager
def _http_surface(
    settings: Settings, monitor: Monitor, store: Store
) -> Iterator[HttpSurface | None]:
    """/health, /ready and /metrics while `run` runs, and the review pages under /review/
    (none with SYNC_HTTP_PORT=0)."""
    if settings.sync_http_port == 0:
        yield None
        return
    ledger = LedgerReader(Store(settings.sync_database, read_only=True))
    routes = Routes(monitor, ledger, ready_window=ready_window(settings.sync_poll_interval))
    with contextlib.ExitStack() as stack:
        stack.callback(ledger.close)
        review = stack.enter_context(_review_app(settings, monitor, store))
        surface = HttpSurface(
            settings.sync_http_address, settings.sync_http_port, surface_app(routes, review)
        )
        try:
            surface.start()
        except OSError as exc:
            where = f"{settings.sync_http_address}:{settings.sync_http_port}"
            raise ConfigError(f"SYNC_HTTP_PORT: cannot listen on {where}: {exc.strerror}") from exc
        try:
            yield surface
        finally:
            surface.close()


@contextmanager
def _review_app(settings: Settings, monitor: Monitor, store: Store) -> Iterator[Any]:
    """The review pages, with clients of their own (SYNC_WEB=false: none)."""
    if not settings.sync_web:
        yield None
        return
    # Kept in the ledger when not set, so that restarts and every process sign alike.
    secret = settings.sync_web_secret.get_secret_value() or store.web_secret(
        secrets.token_urlsafe(32)
    )
    orthanc, openmrs = _clients(settings, None)
    try:
        yield build_review_app(
            Review(
                orthanc=orthanc,
                openmrs=openmrs,
                database=settings.sync_database,
                monitor=monitor,
                open_service=lambda: build_service(settings),
                sessions=Sessions(
                    secret,
                    settings.sync_web_session_hours * 3600,
                    secure=settings.sync_web_secure_cookie,
                    shared=LedgerSignOuts(settings.sync_database),
                ),
                openmrs_url=settings.openmrs_url,
                verify=tls_verification(settings.sync_ca_bundle),
                timeout=settings.sync_http_timeout,
                password_signin=not settings.oauth_enabled,
            )
        )
    finally:
        orthanc.close()
        openmrs.close()


# -- commands ----------------------------------------------------------------------------------
def _cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    progress = Progress(0, sys.stderr, terminal=sys.stderr.isatty())
    with build_service(settings, dry_run=args.dry_run, progress=progress) as service:
        service.openmrs.check_credentials()
        if args.study:
            report.print_results(service.sync_now(args.study))
            return EXIT_OK
        summary = service.run_pass()
        progress.finish()
        requests = {"orthanc": service.orthanc.requests, "openmrs": service.openmrs.requests}
        if args.json:
            print(
                json.dumps(report.summary_json(summary, requests, dry_run=args.dry_run), indent=2)
            )
        else:
            report.print_summary(summary, dry_run=args.dry_run)
            print(f"\nHTTP requests: Orthanc {requests['orthanc']}, OpenMRS {requests['openmrs']}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    log = structlog.get_logger("orthanc_openmrs")
    stop = threading.Event()
    received: list[int] = []

    def _stop(signum: int, _frame: object) -> None:
        # No logging here: the signal may arrive while this thread writes a log line, and the
        # writer's lock is not re-entrant.
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    code = EXIT_OK
    with (
        build_service(settings) as service,
        _http_surface(settings, service.monitor, service.store) as http,
    ):
        log.info(
            "service.started",
            orthanc=logs.safe_url(settings.orthanc_url),
            openmrs=logs.safe_url(settings.openmrs_url),
            http=f"{settings.sync_http_address}:{http.port}" if http else None,
        )
        try:
            if _credentials_accepted(service, stop):
                service.run_forever(stop)
        except CredentialsRefused as exc:
            _hold(service.monitor, exc, stop)
            code = EXIT_CREDENTIALS
        log.info("service.stopping", signal=received[0] if received else None)
    log.info("service.stopped")
    return code


def _credentials_accepted(service: Service, stop: threading.Event) -> bool:
    """The one login before the work, once OpenMRS answers: beside Ozone, OpenMRS often starts
    minutes after this service, and exiting meanwhile would only have it restarted. False when
    stopped first."""
    failures = 0
    while not stop.is_set():
        try:
            service.openmrs.check_credentials()
            return True
        except CredentialsRefused:
            raise
        except SyncError as exc:
            if not (isinstance(exc, ServerError) and exc.unavailable):
                raise
            failures += 1
            delay = Backoff(1.0, 60.0).delay(failures, random.random())
            structlog.get_logger("orthanc_openmrs").warning(
                "service.waiting", reason=exc.message, retry_in=round(delay, 1)
            )
            service.monitor.beat(delay)
            stop.wait(delay)
    return False


def _hold(monitor: Monitor, exc: CredentialsRefused, stop: threading.Event) -> None:
    """Refused credentials: wait, alive and not ready, until stopped. Exiting would have a
    supervisor (compose, systemd) start it again, and each start tries the credentials once
    more: OpenMRS locks the account after 7 failed logins."""
    server = "orthanc" if isinstance(exc, OrthancAuthError) else "openmrs"
    monitor.credentials_refused(server)
    monitor.hold(f"{server} refuses the credentials")
    structlog.get_logger("orthanc_openmrs").error(
        "service.held",
        server=server,
        reason_code="credentials_refused",
        reason=f"{server} refuses the credentials; nothing is retried: correct them, restart",
    )
    stop.wait()


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    store = Store(settings.sync_database)
    try:
        counts, rows = store.counts(), store.needing_a_person()
        previews, crashes = store.preview_sources(), store.render_crashes()
        superseded = store.superseded()
    finally:
        store.close()
    report.print_status(
        counts, rows, as_json=args.json, previews=previews, crashes=crashes, superseded=superseded
    )
    return EXIT_OK


def _cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    with build_service(settings) as service:
        service.openmrs.check_credentials()
        sweep = service.reconcile()
        summary = service.run_pass()
    print(
        f"Reconciled: {sweep.seen} studies in Orthanc, {sweep.new} not known before, "
        f"{sweep.deleted} deleted from Orthanc ({sweep.voided} attachments voided)"
    )
    report.print_summary(summary, dry_run=False)
    return EXIT_OK


def _cmd_review(args: argparse.Namespace, settings: Settings) -> int:
    store = Store(settings.sync_database)
    try:
        rows, crashes = store.needing_a_person(), store.render_crashes()
    finally:
        store.close()
    report.print_review(rows, as_json=args.json, crashes=crashes)
    return EXIT_OK


def _cmd_link(args: argparse.Namespace, settings: Settings) -> int:
    with build_service(settings) as service:
        service.openmrs.check_credentials()
        report.print_results(service.link(args.study, args.patient, args.by))
    return EXIT_OK


def _cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    with build_service(settings) as service:
        service.openmrs.check_credentials()
        report.print_results(service.retry(args.study, args.by))
    return EXIT_OK


def _cmd_ignore(args: argparse.Namespace, settings: Settings) -> int:
    with build_service(settings) as service:
        for row in service.ignore(args.study, args.by, args.reason):
            print(f"ignored: {row.study_uid or row.orthanc_id} ({row.reason})")
    return EXIT_OK


def _cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    store = Store(settings.sync_database)
    try:
        rows = store.audit(args.study)
    finally:
        store.close()
    report.print_audit(rows, as_json=args.json)
    return EXIT_OK


def _cmd_move_ledger(args: argparse.Namespace, settings: Settings) -> int:
    try:
        target = parse_location(args.to)
        source = parse_location(args.source) if args.source else settings.sync_database
    except LocationError as exc:
        raise ConfigError(f"move-ledger: {exc}") from exc
    if not isinstance(target, PostgresURL):
        raise ConfigError("move-ledger: --to must be a postgresql:// URL")
    if args.to_password_file is not None:
        if target.password:
            raise ConfigError("move-ledger: a password in --to or --to-password-file, not both")
        try:
            password = args.to_password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"move-ledger: cannot read {args.to_password_file}") from exc
        target = target.with_password(password)
    if isinstance(source, Path) and not source.is_file():
        raise ConfigError(f"move-ledger: {source} does not exist")
    old = Store(source)
    try:
        new = Store(target)
        try:
            copied = move_ledger(old, new, time.time())
        finally:
            new.close()
    finally:
        old.close()
    counts = ", ".join(f"{n} {table}" for table, n in copied.items())
    print(f"moved {source} to {target}: {counts}")
    print(f"next: set SYNC_DATABASE={target} (its password in SYNC_DATABASE_PASSWORD_FILE)")
    return EXIT_OK


def _cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    orthanc, openmrs = _clients(settings, None)
    try:
        items = []
        for item in preflight.run_checks(settings, orthanc, openmrs):
            print(item.line(), flush=True)
            items.append(item)
    finally:
        orthanc.close()
        openmrs.close()
    return preflight.exit_code(items)
