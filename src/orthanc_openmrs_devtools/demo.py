"""The sample run: a real Orthanc with the sample studies, the OpenMRS double, one `sync`.

Run with `python -m orthanc_openmrs_devtools.demo`; everything it makes goes to ./demo-output.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

from orthanc_openmrs.store import Store
from orthanc_openmrs_devtools.dicom_factory import build_study, study_uid
from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble, StoredAttachment
from orthanc_openmrs_devtools.orthanc_server import OrthancServer
from orthanc_openmrs_devtools.sample import REAL_SAMPLES, SAMPLE_STUDIES, seed_patients

PUBLIC_URL = "https://pacs.example.org"
# The sample study whose patient is registered only after the first pass.
LATE_ID, LATE_NAME = "NEW-7", "Pat Later"
# The double's default account, as on a fresh OpenMRS demo server.
DOUBLE_USER, DOUBLE_PASSWORD = "admin", "Admin123"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("demo-output"))
    parser.add_argument(
        "--keep-running", action="store_true", help="leave both servers up until Ctrl-C"
    )
    args = parser.parse_args(argv)
    output: Path = args.output.resolve()
    shutil.rmtree(output, ignore_errors=True)
    (output / "previews").mkdir(parents=True)
    with OrthancServer(output / "orthanc", stable_age=1) as orthanc, OpenMRSDouble() as openmrs:
        patients = seed_patients(openmrs)
        _load(orthanc)
        env = _environment(orthanc, openmrs, output)
        print(f"Orthanc (real server):  {orthanc.url}  user {orthanc.username!r}")
        print(f"OpenMRS (test double):  {openmrs.url}  user 'admin'")
        print(f"Ledger:                 {output / 'orthanc-openmrs.sqlite3'}\n")
        _cli(env, output, "sync")
        _show_attachments(openmrs, patients, output)
        failures = _check_outcomes(output)
        print("\nA second pass finds nothing new to attach:")
        _cli(env, output, "sync")
        print(
            f"A clerk registers {LATE_NAME} ({LATE_ID}) in OpenMRS; the next pass attaches the"
            " study at once, without waiting for its retry delay:"
        )
        given, family = LATE_NAME.split()
        openmrs.add_patient([LATE_ID], given=given, family=family)
        _cli(env, output, "sync")
        _cli(env, output, "status")
        if args.keep_running:
            _wait_for_interrupt()
    return 1 if failures else 0


def _load(orthanc: OrthancServer) -> None:
    started = time.monotonic()
    files = [data for sample in SAMPLE_STUDIES for data in build_study(sample.spec)]
    files += [sample.build().data for sample in REAL_SAMPLES]
    orthanc.upload_many(files)
    orthanc.wait_until_stable()
    took = time.monotonic() - started
    count = len(SAMPLE_STUDIES) + len(REAL_SAMPLES)
    print(f"Loaded {count} sample studies ({len(files)} instances) in {took:.1f} s")


def _environment(orthanc: OrthancServer, openmrs: OpenMRSDouble, output: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ORTHANC_", "OPENMRS_", "SYNC_"))
    }
    env.update(
        ORTHANC_URL=orthanc.url,
        ORTHANC_USER=orthanc.username,
        ORTHANC_PASSWORD=orthanc.password,
        ORTHANC_PUBLIC_URL=PUBLIC_URL,
        OPENMRS_URL=openmrs.url,
        OPENMRS_USER=DOUBLE_USER,
        OPENMRS_PASSWORD=DOUBLE_PASSWORD,
    )
    return env


def _cli(env: dict[str, str], cwd: Path, *args: str) -> None:
    print(f"$ orthanc-openmrs {' '.join(args)}")
    done = subprocess.run(
        [sys.executable, "-m", "orthanc_openmrs", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    print(_indent(done.stdout))
    (cwd / "service.log").open("a").write(done.stderr)
    if done.returncode != 0:
        print(_indent(done.stderr))
        raise SystemExit(f"orthanc-openmrs {args[0]} exited with {done.returncode}")


def _show_attachments(openmrs: OpenMRSDouble, patients: dict[str, str], output: Path) -> None:
    print("What landed in OpenMRS (oldest first):")
    names = {uuid: name for name, uuid in patients.items()}
    attachments = sorted(openmrs.attachments(), key=lambda a: a.stored_at)
    for number, attachment in enumerate(attachments, 1):
        name = names.get(attachment.patient_uuid, attachment.patient_uuid)
        path = _save(attachment, number, name, output)
        size = f"{len(attachment.data):,} bytes"
        print(f"  {name}: {attachment.filename} ({attachment.mime_type}, {size})")
        print(f"    caption: {attachment.comment}")
        print(f"    preview: {path.relative_to(output.parent)}")


def _save(attachment: StoredAttachment, number: int, name: str, output: Path) -> Path:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    suffix = ".pdf" if attachment.mime_type == "application/pdf" else ".jpg"
    path = output / "previews" / f"{number:02d}-{slug}{suffix}"
    path.write_bytes(attachment.data)
    return path


def _check_outcomes(output: Path) -> int:
    """Each sample study against the outcome it is there to show."""
    print("\nEach sample study, what it shows, and whether the sync did that:")
    store = Store(output / "orthanc-openmrs.sqlite3")
    failures = 0
    try:
        rows = {row.dicom_patient_id + "|" + row.study_uid: row for row in store.all_studies()}
        expected = [
            (s.spec.patient_id + "|" + study_uid(s.spec), s.shows, s.expected)
            for s in SAMPLE_STUDIES
        ]
        for real in REAL_SAMPLES:
            built = real.build()
            expected.append((built.patient_id + "|" + built.study_uid, real.shows, real.expected))
        for key, shows, wanted in expected:
            row = rows.get(key)
            state = row.state.value if row else "missing"
            ok = state == wanted
            failures += not ok
            how = f" ({row.preview_source})" if row and row.preview_source else ""
            print(f"  {'ok ' if ok else 'BAD'} {state:<10} {shows}{how}")
            if row and row.reason and state != "synced":
                print(f"               reason: {row.reason}")
    finally:
        store.close()
    return failures


def _wait_for_interrupt() -> None:
    print("\nBoth servers stay up; press Ctrl-C to stop them.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip().splitlines()) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
