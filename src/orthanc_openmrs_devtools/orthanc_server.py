"""Run a real Orthanc (the Debian package) on loopback for tests and local trials.

The server gets its own work directory (config, storage, log), a free port and
Basic auth, or (``token_guard``) a Python plugin that lets only tokens through, as the
authorization plugin does. It is started in a new session so that a Ctrl-C aimed at pytest does
not reach it first, and an ``atexit`` hook stops it if the caller forgets.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

__all__ = ["GDCM_PLUGIN", "OrthancServer", "OrthancServerError", "TokenGuard"]

GDCM_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancGdcm.so")
PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
TOKEN_GUARD_SCRIPT = Path(__file__).with_name("orthanc_token_guard.py")
ORTHANC_BINARY = "Orthanc"

# Orthanc closes idle connections after exactly 1 s; reusing one just then fails
# with RemoteProtocolError, so the pool must drop them a little earlier.
_KEEPALIVE_EXPIRY = 0.8
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 40


class OrthancServerError(RuntimeError):
    """Orthanc could not be started, did not answer, or refused a request."""


def free_tcp_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class TokenGuard:
    """What the token-checking plugin accepts: static keys and JWTs signed by a JWKS, in
    ``header`` (the authorization plugin's TokenHttpHeaders)."""

    header: str = "token"
    keys: tuple[str, ...] = ()
    jwks_url: str = ""


class OrthancServer:
    """One Orthanc process with its config, storage and log under ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        *,
        stable_age: int = 1,
        username: str = "orthanc",
        password: str = "orthanc",  # noqa: S107 - a throwaway server on loopback
        port: int | None = None,
        gdcm: bool = True,
        python_script: Path | None = None,
        token_guard: TokenGuard | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.stable_age = stable_age
        self.username = username
        self.password = password
        # Chosen once, so that restart() comes back on the same URL.
        self.port = port if port is not None else free_tcp_port()
        self.gdcm = gdcm
        # Orthanc's Python plugin runs one script; the token guard is one.
        self.python_script = TOKEN_GUARD_SCRIPT if token_guard else python_script
        self.token_guard = token_guard
        # The launcher's own key through the guard, for uploads and waits.
        self._harness_key = secrets.token_hex(16)
        self._process: subprocess.Popen[bytes] | None = None
        self._supervisor: threading.Thread | None = None
        self._supervising = threading.Event()
        self._stopping = threading.Event()
        self._lifecycle = threading.RLock()  # the supervisor and crash() never cross
        self.restarts = 0  # how often supervise() brought it back after it died

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    @property
    def guard_log_path(self) -> Path:
        return self.workdir / "token-guard.jsonl"

    def guard_log(self) -> list[dict[str, Any]]:
        """What the token guard saw, one entry per request: uri, arrived, exp, granted."""
        try:
            lines = self.guard_log_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle -------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration this server runs with."""
        storage = str(self.workdir / "storage")
        return {
            "Name": "orthanc-openmrs-test",
            "HttpPort": self.port,
            "HttpServerEnabled": True,
            # No DICOM listener: parallel test servers would fight over port 4242.
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "StableAge": self.stable_age,
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "StorageCompression": False,
            "HttpThreadsCount": 50,
            "KeepAlive": True,
            "HttpCompressionEnabled": False,
            "Plugins": self._plugins(),
            **self._python_config(),
        }

    def _plugins(self) -> list[str]:
        plugins = []
        if self.gdcm:
            plugins.append(_plugin(GDCM_PLUGIN, "orthanc-gdcm", "pass gdcm=False"))
        if self.python_script is not None:
            plugins.append(_plugin(PYTHON_PLUGIN, "orthanc-python", "pass no script"))
        return plugins

    def _python_config(self) -> dict[str, Any]:
        if self.python_script is None:
            return {}
        config: dict[str, Any] = {"PythonScript": str(self.python_script)}
        guard = self.token_guard
        if guard is not None:
            import jwt  # the plugin needs PyJWT from this environment

            config["AuthenticationEnabled"] = False  # the guard decides, as with the plugin
            config["TokenGuard"] = {
                "Headers": [guard.header],
                "Keys": [self._harness_key, *guard.keys],
                "JwksUrl": guard.jwks_url,
                "SitePackages": [str(Path(jwt.__file__).parents[1])],
                "Log": str(self.guard_log_path),
            }
        return config

    def start(self, timeout: float = 15.0) -> None:
        """Write the config, start Orthanc and wait until ``GET /system`` answers 200."""
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [ORTHANC_BINARY, self.config_path.name],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: terminal signals for pytest do not hit Orthanc mid-test.
                start_new_session=True,
            )
        atexit.register(self.stop)
        try:
            self._wait_until_up(timeout)
        except BaseException:
            self.kill()
            raise

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                code = self._process.returncode
                raise OrthancServerError(self._with_log(f"Orthanc exited with code {code}"))
            if self._answers():
                return
            time.sleep(_POLL_INTERVAL)
        raise OrthancServerError(self._with_log(f"Orthanc did not answer within {timeout} s"))

    def _answers(self) -> bool:
        try:
            with self.client(timeout=1.0) as client:
                return client.get("/system").status_code == httpx.codes.OK
        except httpx.TransportError:
            return False

    def supervise(self) -> None:
        """Start Orthanc again whenever it dies, as a service manager would (Orthanc 1.10.1's
        decoders crash on some files); stop() and kill() end the supervision."""
        if self._supervisor is not None:
            return
        self._supervising.set()
        self._supervisor = threading.Thread(target=self._keep_up, daemon=True)
        self._supervisor.start()

    def _keep_up(self) -> None:
        while self._supervising.is_set() and not self._stopping.is_set():
            with self._lifecycle:
                process = self._process
                if process is None or process.poll() is not None:
                    self._forget()
                    with contextlib.suppress(OrthancServerError):
                        self.start()
                        self.restarts += 1
            time.sleep(_POLL_INTERVAL)

    def _end_supervision(self) -> None:
        self._supervising.clear()
        self._stopping.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join()
        self._supervisor = None
        self._stopping.clear()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop cleanly with SIGTERM, then SIGKILL after ``timeout``; safe to call twice."""
        self._end_supervision()
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                process.wait()
        self._forget()

    def kill(self) -> None:
        """SIGKILL at once, as a crash would; the storage keeps what SQLite committed."""
        self._end_supervision()
        self.crash()

    def crash(self) -> None:
        """SIGKILL at once, leaving a supervisor (supervise()) to bring it back."""
        with self._lifecycle:
            process = self._process
            if process is None:
                return
            if process.poll() is None:
                self._signal(signal.SIGKILL)
                process.wait()
            self._forget()

    def restart(self) -> None:
        """Stop and start again on the same port and storage."""
        self.stop()
        self.start()

    def _signal(self, signum: signal.Signals) -> None:
        assert self._process is not None
        # The process leads its own group (start_new_session), so only it is hit.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signum)

    def _forget(self) -> None:
        self._process = None
        atexit.unregister(self.stop)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of Orthanc's log, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _with_log(self, message: str) -> str:
        return f"{message}; last lines of {self.log_path}:\n{self.log_tail()}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- REST helpers ----------------------------------------------------------------------

    def client(self, timeout: float = 30.0) -> httpx.Client:
        """A new authenticated client; the caller closes it (use ``with``)."""
        guard = self.token_guard
        headers = {}
        if guard is not None:
            scheme = "Bearer " if guard.header.lower() == "authorization" else ""
            headers[guard.header] = scheme + self._harness_key
        return httpx.Client(
            base_url=self.url,
            auth=None if guard else (self.username, self.password),
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(keepalive_expiry=_KEEPALIVE_EXPIRY),
        )

    def upload(self, dicom: bytes) -> dict[str, Any]:
        """``POST /instances`` one file and return Orthanc's answer."""
        with self.client() as client:
            return _post_instance(client, dicom)

    def upload_many(self, files: Iterable[bytes]) -> list[dict[str, Any]]:
        """Upload files in order over one pooled connection."""
        with self.client() as client:
            return [_post_instance(client, dicom) for dicom in files]

    def study_ids(self) -> list[str]:
        """Orthanc IDs of all studies, in insertion order."""
        with self.client() as client:
            ids: list[str] = _get_json(client, "/studies")
            return ids

    def wait_until_stable(self, timeout: float = 30.0, *, require_change: bool = True) -> None:
        """Wait until every study is stable and, if asked, has a StableStudy change.

        Pass ``require_change=False`` after a restart: Orthanc forgets unstable
        studies when it stops, so those become stable without a StableStudy change.
        """
        deadline = time.monotonic() + timeout
        while True:
            pending = self._unsettled_studies(require_change)
            if not pending:
                return
            if time.monotonic() >= deadline:
                msg = f"studies still unstable after {timeout} s: {sorted(pending)}"
                raise OrthancServerError(msg)
            time.sleep(0.2)

    def _unsettled_studies(self, require_change: bool) -> set[str]:
        with self.client() as client:
            ids: list[str] = _get_json(client, "/studies")
            unstable = {i for i in ids if not _get_json(client, f"/studies/{i}")["IsStable"]}
            if not require_change:
                return unstable
            announced = _stable_study_changes(client)
        return unstable | (set(ids) - announced)


def _plugin(path: Path, package: str, otherwise: str) -> str:
    if not path.exists():
        raise OrthancServerError(f"plugin not found at {path}; install {package} or {otherwise}")
    return str(path)


def _post_instance(client: httpx.Client, dicom: bytes) -> dict[str, Any]:
    response = client.post("/instances", content=dicom)
    if response.status_code != httpx.codes.OK:
        msg = f"POST /instances answered {response.status_code}: {response.text[:500]}"
        raise OrthancServerError(msg)
    answer: dict[str, Any] = response.json()
    return answer


def _get_json(client: httpx.Client, path: str) -> Any:
    response = client.get(path)
    if response.status_code != httpx.codes.OK:
        raise OrthancServerError(f"GET {path} answered {response.status_code}")
    return response.json()


def _stable_study_changes(client: httpx.Client) -> set[str]:
    """IDs of all studies that have a StableStudy entry in ``/changes``."""
    seen: set[str] = set()
    since = 0
    while True:
        page = _get_json(client, f"/changes?since={since}&limit=1000")
        seen.update(c["ID"] for c in page["Changes"] if c["ChangeType"] == "StableStudy")
        # An empty page's Last is the high-water mark, so stop on Done rather than on Last.
        if page["Done"] or not page["Changes"]:
            return seen
        since = page["Last"]
