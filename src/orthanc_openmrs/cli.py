"""Commands. The only place that builds the clients, the store and the service."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from orthanc_openmrs import __version__, auth, report
from orthanc_openmrs.config import Settings, env_name, load_settings
from orthanc_openmrs.errors import ConfigError, CredentialsRefused, SyncError
from orthanc_openmrs.openmrs import OpenMRSClient
from orthanc_openmrs.orthanc import OrthancClient
from orthanc_openmrs.progress import Progress
from orthanc_openmrs.retry import Backoff
from orthanc_openmrs.service import Service, ServiceOptions
from orthanc_openmrs.store import Store
from orthanc_openmrs.sync import SyncOptions

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_CREDENTIALS = 0, 1, 2, 3
_SECRET_FIELDS = frozenset(
    {
        "orthanc_password",
        "openmrs_password",
        "oauth_client_secret",
        "orthanc_api_key",
        "orthanc_oauth_client_secret",
    }
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        settings = load_settings(args.config, **_flag_overrides(args))
        return int(args.handler(args, settings))
    except ConfigError as exc:
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

    for sub in (run, sync, status, reconcile, review, link, retry, ignore, audit):
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


def _configure_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"]),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


# -- wiring ------------------------------------------------------------------------------------
@contextmanager
def build_service(
    settings: Settings, *, dry_run: bool = False, progress: Progress | None = None
) -> Iterator[Service]:
    """The service with its clients and store, closed on exit."""
    orthanc = OrthancClient(
        settings.orthanc_url,
        auth=auth.orthanc_auth(settings, timeout=settings.sync_http_timeout),
        timeout=settings.sync_http_timeout,
    )
    openmrs = OpenMRSClient(
        settings.openmrs_url,
        auth=auth.openmrs_auth(settings, timeout=settings.sync_http_timeout),
        timeout=settings.sync_http_timeout,
    )
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
    )
    try:
        yield service
    finally:
        service.close()
        orthanc.close()
        openmrs.close()
        store.close()


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
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        structlog.get_logger("orthanc_openmrs").info("service.stopping", signal=signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with build_service(settings) as service:
        service.openmrs.check_credentials()
        structlog.get_logger("orthanc_openmrs").info(
            "service.started", orthanc=settings.orthanc_url, openmrs=settings.openmrs_url
        )
        service.run_forever(stop)
    structlog.get_logger("orthanc_openmrs").info("service.stopped")
    return EXIT_OK


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    store = Store(settings.sync_database)
    try:
        counts, rows = store.counts(), store.needing_a_person()
    finally:
        store.close()
    report.print_status(counts, rows, as_json=args.json)
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
        rows = store.needing_a_person()
    finally:
        store.close()
    report.print_review(rows, as_json=args.json)
    return EXIT_OK


def _cmd_link(args: argparse.Namespace, settings: Settings) -> int:
    with build_service(settings) as service:
        service.openmrs.check_credentials()
        report.print_results(service.link(args.study, args.patient, args.by))
    return EXIT_OK


def _cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    with build_service(settings) as service:
        service.openmrs.check_credentials()
        report.print_results(service.sync_now(args.study, reset=True))
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
