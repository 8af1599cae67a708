"""The container image, built with podman from the repository's Dockerfile and run against a
real Orthanc and the OpenMRS double on the host's loopback: a `sync` that attaches, and a
`run` whose /health answers and whose HEALTHCHECK passes."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orthanc_openmrs_devtools.dicom_factory import StudySpec
from orthanc_openmrs_devtools.orthanc_server import free_tcp_port
from support import PUBLIC_URL, load

ROOT = Path(__file__).resolve().parents[2]
# A tag of this run's own: another run on the machine may build and remove its image meanwhile.
IMAGE = f"localhost/orthanc-openmrs:test-{secrets.token_hex(4)}"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# This machine forbids raising limits and runs cgroup v1 (crun cannot): see the contract on
# containers. The same flags work wherever podman runs.
PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]

pytestmark = pytest.mark.skipif(
    shutil.which("podman") is None, reason="podman is not installed (scripts/setup installs it)"
)


def _podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {done.returncode}\n{done.stderr}")
    return done


@pytest.fixture(scope="session")
def image() -> Iterator[dict[str, float]]:
    """The image, built as an operator would (the layers of earlier builds are reused); its
    build time and size."""
    subprocess.run([str(ROOT / "scripts" / "container-base")], check=True, timeout=600)
    _podman("rmi", "--force", IMAGE, check=False)
    build = ["build", "--pull=never", "--network=host", "--format", "docker", *LIMITS, "-t", IMAGE]
    if HOST_CA.exists():  # a TLS-intercepting proxy between the build and PyPI
        build += [
            "-v",
            f"{HOST_CA}:/run/host-ca.crt:ro",
            "--build-arg",
            "PIP_CERT=/run/host-ca.crt",
        ]
    started = time.monotonic()
    _podman(*build, str(ROOT), timeout=900)
    seconds = time.monotonic() - started
    size = int(_podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout.strip())
    print(f"\nimage {IMAGE}: built in {seconds:.1f} s, {size / 1e6:.1f} MB")
    try:
        yield {"build_seconds": seconds, "size_bytes": size}
    finally:
        _podman("rmi", "--force", IMAGE, check=False)


@pytest.fixture
def volume() -> Iterator[str]:
    name = f"orthanc-openmrs-test-{secrets.token_hex(4)}"
    _podman("volume", "create", name)
    try:
        yield name
    finally:
        _podman("volume", "rm", "--force", name, check=False)


def _env(orthanc, openmrs, **extra: str) -> list[str]:
    values = {
        "ORTHANC_URL": orthanc.url,
        "ORTHANC_USER": orthanc.username,
        "ORTHANC_PASSWORD": orthanc.password,
        "ORTHANC_PUBLIC_URL": PUBLIC_URL,
        "OPENMRS_URL": openmrs.url,
        "EIP_FHIR_USERNAME": "admin",
        "EIP_FHIR_PASSWORD": "Admin123",
        **extra,
    }
    return [arg for key, value in values.items() for arg in ("-e", f"{key}={value}")]


def test_image_holds_the_service_not_the_test_tooling(image) -> None:
    """A non-root user, the ledger on a volume, a HEALTHCHECK kept (docker format), and no
    devtools package inside."""
    (info,) = json.loads(_podman("image", "inspect", IMAGE).stdout)
    assert info["Config"]["User"] == "orthanc-openmrs"
    assert "/var/lib/orthanc-openmrs" in info["Config"]["Volumes"]
    assert "/health" in " ".join(info["Healthcheck"]["Test"])
    probe = "import orthanc_openmrs.cli, orthanc_openmrs_devtools"
    done = _podman(
        "run", "--rm", *LIMITS, "--entrypoint", "python3", IMAGE, "-c", probe, check=False
    )
    assert done.returncode == 1
    assert "No module named 'orthanc_openmrs_devtools'" in done.stderr
    # 77 MB of Debian base, the service and its libraries; numpy, pydicom and the JPEG codecs
    # (local decoding) make up most of the rest; the review pages add about 5 MB: 276 MB when
    # measured.
    assert image["size_bytes"] < 320e6


def test_sync_in_the_container_attaches(image, orthanc, openmrs, volume) -> None:
    """`sync` in the container attaches the study to the right patient, writing its ledger
    (mode 0600) on the volume."""
    patient = openmrs.add_patient(["P001"])
    load(orthanc, StudySpec("boxed"))
    done = _podman(
        "run", "--rm", "--network=host", *LIMITS, "-v", f"{volume}:/var/lib/orthanc-openmrs",
        *_env(orthanc, openmrs), IMAGE, "sync", timeout=180,
    )  # fmt: skip
    assert "synced              1" in done.stdout
    (attachment,) = openmrs.attachments()
    assert attachment.patient_uuid == patient
    mode = _podman(
        "run", "--rm", *LIMITS, "-v", f"{volume}:/var/lib/orthanc-openmrs", "--entrypoint",
        "stat", IMAGE, "-c", "%a %U", "/var/lib/orthanc-openmrs/ledger.sqlite3",
    )  # fmt: skip
    assert mode.stdout.split() == ["600", "orthanc-openmrs"]


def test_run_in_the_container_answers_health(image, orthanc, openmrs, volume) -> None:
    """`run` (the image's default) serves /health and /ready on its port, and the review
    pages with their templates and style sheet; its HEALTHCHECK passes, its log is JSON, and
    it stops cleanly."""
    port = free_tcp_port()
    name = f"orthanc-openmrs-run-{secrets.token_hex(4)}"
    _podman(
        "run", "-d", "--name", name, "--network=host", *LIMITS,
        "-v", f"{volume}:/var/lib/orthanc-openmrs",
        *_env(orthanc, openmrs, SYNC_HTTP_PORT=str(port), SYNC_POLL_INTERVAL="1"), IMAGE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert ready is not None, _podman("logs", name).stdout
        assert ready.status_code == 200, _podman("logs", name).stdout
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        signin = httpx.get(f"http://127.0.0.1:{port}/review/signin", timeout=5)
        assert signin.status_code == 200
        assert 'name="password"' in signin.text
        style = httpx.get(f"http://127.0.0.1:{port}/review/static/style.css", timeout=5)
        assert style.status_code == 200
        assert _podman("healthcheck", "run", name, check=False).returncode == 0
        _podman("stop", "--time", "20", name, timeout=60)
        state = json.loads(_podman("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0
        lines = _podman("logs", name).stdout.splitlines()
        messages = [json.loads(line)["message"] for line in lines]
        assert messages[0] == "service.started"
        assert messages[-1] == "service.stopped"
    finally:
        _podman("rm", "--force", name, check=False)
