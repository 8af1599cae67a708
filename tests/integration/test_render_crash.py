"""An instance whose rendering takes Orthanc down is rendered by Orthanc twice at most."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orthanc_openmrs import report
from orthanc_openmrs.errors import ServerError
from orthanc_openmrs.models import State
from orthanc_openmrs.render.measure import contrast
from orthanc_openmrs_devtools.crash_proxy import CrashProxy
from orthanc_openmrs_devtools.dicom_factory import InstanceSpec, SeriesSpec, StudySpec, sop_uid
from support import image, instance_id, ledger, load, settings_for, sync_pass


def _passes_until_one_completes(settings, limit: int = 8) -> tuple[int, list[ServerError]]:
    """Run passes until one completes; the errors of those that Orthanc's crashes ended."""
    errors: list[ServerError] = []
    for _ in range(limit):
        try:
            sync_pass(settings)
        except ServerError as exc:
            errors.append(exc)
            time.sleep(0.3)  # Orthanc is being started again
            continue
        # an outage pauses the pass, charging no study
        assert [e for e in errors if not e.unavailable] == []
        return len(errors) + 1, errors
    raise AssertionError(f"no pass completed in {limit}: {errors}")


def test_orthanc_crashing_on_an_instance_renders_it_twice_at_most(
    orthanc, openmrs, database: Path, capsys
) -> None:
    """Orthanc dies whenever it renders the study's CT: the service asks it twice, then
    decodes the file itself, attaches a visible preview, and `review` says so; later passes
    never ask Orthanc to render that instance again."""
    spec = StudySpec("crasher", series=(SeriesSpec(1, instances=(InstanceSpec("ct", 1),)),))
    openmrs.add_patient([spec.patient_id])
    ids = load(orthanc, spec)
    target = instance_id(orthanc, sop_uid(spec, 0, 0))
    with CrashProxy(orthanc, {target}) as proxy:
        settings = settings_for(proxy, openmrs, database)
        passes, errors = _passes_until_one_completes(settings)
        assert proxy.crashes == 2
        assert proxy.renders[target] == 2
        assert all("stopped answering while rendering" in e.message for e in errors[:1])
        row = ledger(settings).get(ids["crasher"])
        assert row is not None
        assert row.state is State.SYNCED
        assert row.preview_source == "local-decode"
        assert "Orthanc stopped answering when it rendered it before" in row.reason
        (attachment,) = openmrs.attachments()
        assert contrast(image(attachment.data)).shows_something
        (crash,) = ledger(settings).render_crashes()
        assert (crash.instance_id, crash.crashes) == (target, 2)

        sync_pass(settings)  # a study made due again would be decoded here, not by Orthanc
        assert proxy.renders[target] == 2
    store = ledger(settings)
    capsys.readouterr()
    report.print_review(store.needing_a_person(), as_json=False, crashes=store.render_crashes())
    review = capsys.readouterr().out
    assert passes == 3
    assert f"instance {target} (study {ids['crasher']}): 2x" in review
    assert "decoded here from now on, never by Orthanc" in review


def test_one_lost_render_is_tried_again_by_orthanc(orthanc, openmrs, database: Path) -> None:
    """A single dropped render is charged once, and Orthanc renders the instance again."""
    spec = StudySpec("once", series=(SeriesSpec(1, instances=(InstanceSpec("ct", 1),)),))
    openmrs.add_patient([spec.patient_id])
    ids = load(orthanc, spec)
    target = instance_id(orthanc, sop_uid(spec, 0, 0))
    with CrashProxy(orthanc, {target}) as proxy:
        settings = settings_for(proxy, openmrs, database)
        with pytest.raises(ServerError) as ended:
            sync_pass(settings)
        assert ended.value.unavailable
        proxy.crash_on.clear()  # it was Orthanc's bad moment, not the file
        time.sleep(0.3)
        _passes_until_one_completes(settings)
        assert proxy.renders[target] == 2
    row = ledger(settings).get(ids["once"])
    assert row is not None
    assert row.preview_source == "orthanc-window"
    assert [c.crashes for c in ledger(settings).render_crashes()] == [1]
