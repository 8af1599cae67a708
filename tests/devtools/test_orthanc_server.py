"""The Orthanc test server: lifecycle, uploads, ordering and stability."""

from __future__ import annotations

import shutil
import socket
import time

import httpx
import pytest

from orthanc_openmrs_devtools import orthanc_server
from orthanc_openmrs_devtools.dicom_factory import (
    InstanceSpec,
    SeriesSpec,
    StudySpec,
    build_study,
)
from orthanc_openmrs_devtools.orthanc_server import OrthancServer, OrthancServerError

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc is not installed"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the tests that only add data; none of them restarts it."""
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as running:
        yield running


@pytest.fixture
def own_server(tmp_path):
    """A server of the test's own, for tests that stop, kill or restart it."""
    running = OrthancServer(tmp_path / "orthanc")
    running.start()
    yield running
    running.stop()


def _study(key: str, *series: SeriesSpec) -> StudySpec:
    return StudySpec(key=key, series=series or (SeriesSpec(),))


# -- configuration (no process) -----------------------------------------------------------------


def test_config_keeps_the_server_private_and_local(tmp_path):
    """The config disables DICOM, remote access and anonymous use, and stores under workdir."""
    config = OrthancServer(tmp_path, stable_age=3, username="u", password="p", port=8999).config()
    assert config["HttpPort"] == 8999
    assert config["DicomServerEnabled"] is False
    assert config["RemoteAccessAllowed"] is False
    assert config["AuthenticationEnabled"] is True
    assert config["RegisteredUsers"] == {"u": "p"}
    assert config["StableAge"] == 3
    assert config["StorageDirectory"] == config["IndexDirectory"] == str(tmp_path / "storage")


def test_gdcm_flag_controls_the_plugin_list(tmp_path):
    """gdcm=True loads the GDCM plugin; gdcm=False loads none."""
    assert OrthancServer(tmp_path).config()["Plugins"] == [str(orthanc_server.GDCM_PLUGIN)]
    assert OrthancServer(tmp_path, gdcm=False).config()["Plugins"] == []


def test_missing_gdcm_plugin_is_a_clear_error(tmp_path, monkeypatch):
    """Asking for GDCM where it is not installed fails before Orthanc starts."""
    monkeypatch.setattr(orthanc_server, "GDCM_PLUGIN", tmp_path / "absent.so")
    server = OrthancServer(tmp_path)
    with pytest.raises(OrthancServerError, match="orthanc-gdcm"):
        server.start()
    assert not server.running


def test_free_port_is_chosen_on_loopback(tmp_path):
    """Without a port the server picks one and serves on 127.0.0.1."""
    server = OrthancServer(tmp_path)
    assert 0 < server.port < 65536
    assert server.url == f"http://127.0.0.1:{server.port}"


# -- lifecycle ----------------------------------------------------------------------------------


def test_started_server_requires_the_configured_credentials(server):
    """GET /system answers 200 with the credentials and 401 without them."""
    with server.client() as client:
        system = client.get("/system").json()
    assert system["Version"] == "1.10.1"
    assert httpx.get(f"{server.url}/system").status_code == httpx.codes.UNAUTHORIZED


def test_gdcm_plugin_is_loaded(server):
    """The default server runs the GDCM plugin."""
    with server.client() as client:
        assert "gdcm" in client.get("/plugins").json()


def test_context_manager_stops_the_process(tmp_path):
    """Leaving the with-block stops Orthanc, and stopping again does nothing."""
    with OrthancServer(tmp_path, gdcm=False) as server:
        assert server.running
    assert not server.running
    server.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/system", timeout=1.0)


def test_restart_keeps_data_and_port(own_server):
    """restart() comes back on the same URL with the studies stored before."""
    own_server.upload_many(build_study(_study("restart")))
    before = own_server.study_ids()
    url = own_server.url
    own_server.restart()
    assert own_server.url == url
    assert own_server.study_ids() == before


def test_kill_keeps_committed_data(own_server):
    """After a SIGKILL crash, a new start still has every acknowledged upload."""
    own_server.upload_many(build_study(_study("crash")))
    before = own_server.study_ids()
    own_server.kill()
    assert not own_server.running
    own_server.start()
    assert own_server.study_ids() == before


def test_failed_start_reports_the_log_tail(tmp_path):
    """When Orthanc exits during start, the error quotes the end of orthanc.log."""
    with socket.socket() as blocker:
        blocker.bind(("0.0.0.0", 0))  # noqa: S104 - Orthanc binds 0.0.0.0, so must the blocker
        blocker.listen()
        server = OrthancServer(tmp_path, port=blocker.getsockname()[1], gdcm=False)
        with pytest.raises(OrthancServerError, match="already in use") as raised:
            server.start()
    assert "orthanc.log" in str(raised.value)
    assert not server.running


# -- uploads and ordering ------------------------------------------------------------------------


def test_upload_returns_ids_and_repeats_as_already_stored(server):
    """A first upload is Success; the same bytes again are AlreadyStored with the same IDs."""
    dicom = build_study(_study("upload-twice"))[0]
    first = server.upload(dicom)
    second = server.upload(dicom)
    assert first["Status"] == "Success"
    assert second["Status"] == "AlreadyStored"
    assert second["ID"] == first["ID"]
    assert first["ParentStudy"] in server.study_ids()


def test_upload_of_non_dicom_raises_with_status(server):
    """A body Orthanc cannot parse raises OrthancServerError naming the 400."""
    with pytest.raises(OrthancServerError, match="400"):
        server.upload(b"not dicom")


def test_series_order_is_upload_order(server):
    """Orthanc lists a study's series in upload order, not by SeriesNumber."""
    spec = _study("order", *(SeriesSpec(number=n) for n in (3, 1, 0, 2)))
    answers = server.upload_many(build_study(spec))
    with server.client() as client:
        series = client.get(f"/studies/{answers[0]['ParentStudy']}/series").json()
    assert [s["MainDicomTags"]["SeriesNumber"] for s in series] == ["3", "1", "0", "2"]


def test_instance_order_is_upload_order(server):
    """Orthanc lists a series' instances in upload order, not by InstanceNumber."""
    instances = tuple(InstanceSpec(number=n) for n in (4, 2, 3, 1))
    answers = server.upload_many(build_study(_study("inst-order", SeriesSpec(instances=instances))))
    with server.client() as client:
        listed = client.get(f"/series/{answers[0]['ParentSeries']}/instances").json()
    assert [i["IndexInSeries"] for i in listed] == [4, 2, 3, 1]


# -- stability ---------------------------------------------------------------------------------


def test_wait_until_stable_times_out_while_a_study_is_fresh(server):
    """A study uploaded just now is not stable yet, so a tiny timeout raises."""
    server.upload_many(build_study(_study("fresh")))
    with pytest.raises(OrthancServerError, match="unstable"):
        server.wait_until_stable(timeout=0.1)


def test_wait_until_stable_waits_for_stable_study_change(server):
    """After wait_until_stable, each study is IsStable and has a StableStudy change."""
    study_id = server.upload_many(build_study(_study("stable")))[0]["ParentStudy"]
    started = time.monotonic()
    server.wait_until_stable()
    assert time.monotonic() - started < 5
    with server.client() as client:
        assert client.get(f"/studies/{study_id}").json()["IsStable"] is True
        changes = client.get("/changes", params={"since": 0, "limit": 100000}).json()["Changes"]
    assert {"ChangeType": "StableStudy", "ID": study_id} in [
        {"ChangeType": c["ChangeType"], "ID": c["ID"]} for c in changes
    ]


def test_restart_before_stable_age_loses_the_stable_study_change(tmp_path):
    """A restart within StableAge yields IsStable without any StableStudy change."""
    with OrthancServer(tmp_path, stable_age=30, gdcm=False) as server:
        server.upload_many(build_study(_study("restart-trap")))
        server.restart()
        server.wait_until_stable(timeout=5, require_change=False)
        with pytest.raises(OrthancServerError, match="unstable"):
            server.wait_until_stable(timeout=1.5)
