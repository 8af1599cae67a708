"""What the commands print: summaries for people, JSON for machines. No I/O but the stream."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from orthanc_openmrs.models import NEEDS_A_PERSON, Outcome, State, StudyResult
from orthanc_openmrs.service import PassSummary
from orthanc_openmrs.store import RENDER_CRASH_LIMIT, AuditRow, RenderCrash, StudyRow


def summary_json(
    summary: PassSummary, requests: dict[str, int], *, dry_run: bool
) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "studies": summary.total,
        "discovered": summary.discovered,
        "counts": {o.value: summary.counts.get(o, 0) for o in Outcome},
        "requests": requests,
        "would_attach": [
            {"study_uid": r.study_uid, "patient_uuid": r.patient_uuid, "caption": r.caption}
            for r in summary.planned
        ],
        "needs_a_person": [
            {
                "orthanc_id": r.orthanc_id,
                "study_uid": r.study_uid,
                "outcome": r.outcome.value,
                "reason": r.reason,
            }
            for r in summary.problems
        ],
    }


def print_summary(summary: PassSummary, *, dry_run: bool) -> None:
    title = "Dry run (nothing written to OpenMRS)" if dry_run else "Pass complete"
    print(f"{title}: {summary.total} studies looked at, {summary.discovered} newly found")
    for outcome in Outcome:
        label = "would attach" if dry_run and outcome is Outcome.SYNCED else outcome.value
        print(f"  {label:<14}{summary.counts.get(outcome, 0):>7}")
    if dry_run and summary.planned:
        print("\nWould attach:")
        for result in summary.planned:
            print(f"  {result.study_uid} -> patient {result.patient_uuid}")
            print(f"      {result.caption}")
        if len(summary.planned) < summary.counts.get(Outcome.SYNCED, 0):
            print(f"  ... and {summary.counts[Outcome.SYNCED] - len(summary.planned)} more")
    if summary.problems:
        print("\nNeeding a person (see `orthanc-openmrs review` for all):")
        for result in summary.problems:
            print(f"  {result.outcome.value:<10} {result.study_uid or result.orthanc_id}")
            print(f"             {result.reason}")


def print_results(results: Sequence[StudyResult]) -> None:
    for result in results:
        print(f"{result.outcome.value}: {result.study_uid or result.orthanc_id}")
        if result.reason:
            print(f"  reason: {result.reason}")
        if result.patient_uuid:
            print(f"  patient: {result.patient_uuid}")
        if result.caption:
            print(f"  caption: {result.caption}")


def review_item(r: StudyRow) -> dict[str, Any]:
    return {
        "orthanc_id": r.orthanc_id,
        "study_uid": r.study_uid,
        "state": r.state.value,
        "reason": r.reason,
        "patient_id": r.dicom_patient_id,
        "patient_name": r.patient_name,
        "birth_date": r.birth_date,
        "patient_sex": r.patient_sex,
        "study_date": r.study_date,
        "description": r.description,
        "candidate_patients": list(r.candidate_patients),
        "attempts": r.attempts,
    }


def _crash_json(c: RenderCrash) -> dict[str, Any]:
    return {
        "instance_id": c.instance_id,
        "orthanc_id": c.orthanc_id,
        "crashes": c.crashes,
        "rendered_by_orthanc": c.crashes < RENDER_CRASH_LIMIT,
    }


def _print_crashes(crashes: Sequence[RenderCrash]) -> None:
    if not crashes:
        return
    print("\nInstances Orthanc stopped answering while rendering:")
    for c in crashes:
        after = (
            "decoded here from now on, never by Orthanc"
            if c.crashes >= RENDER_CRASH_LIMIT
            else "Orthanc may try it once more"
        )
        print(f"  instance {c.instance_id} (study {c.orthanc_id}): {c.crashes}x; {after}")


def print_status(
    counts: dict[State, int],
    rows: Sequence[StudyRow],
    *,
    as_json: bool,
    previews: dict[str, int] | None = None,
    crashes: Sequence[RenderCrash] = (),
    superseded: Sequence[StudyRow] = (),
) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "counts": {state.value: n for state, n in counts.items()},
                    "previews": previews or {},
                    "render_crashes": [_crash_json(c) for c in crashes],
                    "superseded": [
                        {"orthanc_id": r.orthanc_id, "study_uid": r.study_uid, "reason": r.reason}
                        for r in superseded
                    ],
                    "needs_a_person": [
                        {
                            "orthanc_id": r.orthanc_id,
                            "study_uid": r.study_uid,
                            "state": r.state.value,
                            "reason": r.reason,
                            "patient_id": r.dicom_patient_id,
                            "attempts": r.attempts,
                            "retried": r.next_attempt_at is not None,
                        }
                        for r in rows
                    ],
                },
                indent=2,
            )
        )
        return
    print("Studies by state:")
    for state in State:
        print(f"  {state.value:<11}{counts[state]:>8}")
    if previews:
        print("\nAttached previews by how they were made:")
        for source, n in sorted(previews.items()):
            print(f"  {source:<19}{n:>8}")
    _print_crashes(crashes)
    if superseded:
        print("\nSuperseded (the chart shows another Orthanc study of the same UID):")
        for r in superseded:
            print(f"  {r.study_uid or r.orthanc_id} (Orthanc {r.orthanc_id})")
            print(f"             {r.reason}")
    needing = [r for r in rows if r.state in NEEDS_A_PERSON]
    if needing:
        print("\nNeeding a person (details: orthanc-openmrs review):")
        for r in needing:
            retry = "retried automatically" if r.next_attempt_at is not None else "not retried"
            print(f"  {r.state.value:<10} {r.study_uid or r.orthanc_id} ({retry})")
            print(f"             {r.reason}")


def print_review(
    rows: Sequence[StudyRow], *, as_json: bool, crashes: Sequence[RenderCrash] = ()
) -> None:
    if as_json:
        print(json.dumps([review_item(r) for r in rows], indent=2))
        return
    if not rows and not crashes:
        print("Nothing needs a person.")
    for r in rows:
        print(f"{r.state.value.upper()}  {r.study_uid or r.orthanc_id}  (Orthanc {r.orthanc_id})")
        print(f"  reason:   {r.reason}")
        print(
            f"  DICOM:    PatientID {r.dicom_patient_id!r}, name {r.patient_name!r}, "
            f"born {r.birth_date or '?'}, sex {r.patient_sex or '?'}"
        )
        print(f"  study:    {r.study_date or '?'} {r.description}")
        for candidate in r.candidate_patients:
            print(f"  candidate patient: {candidate}")
        print(
            f"  decide:   orthanc-openmrs link {r.orthanc_id} PATIENT_UUID  |  "
            f"retry {r.orthanc_id}  |  ignore {r.orthanc_id}\n"
        )
    _print_crashes(crashes)


def print_audit(rows: Sequence[AuditRow], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    for r in rows:
        when = datetime.fromtimestamp(r.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{when}Z  {r.action:<7} study {r.study_uid or r.orthanc_id}  "
            f"patient {r.patient_uuid or '-'}  attachment {r.attachment_uuid or '-'}  "
            f"{r.reason}"
        )
