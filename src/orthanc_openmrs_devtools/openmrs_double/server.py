"""The double itself: its public methods, and the HTTP server that feeds it requests."""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import time
import uuid as uuidlib
from contextlib import suppress
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qs, urlsplit

from orthanc_openmrs_devtools.openmrs_double.auth import Accounts
from orthanc_openmrs_devtools.openmrs_double.errors import html_page
from orthanc_openmrs_devtools.openmrs_double.fhir import FhirApi
from orthanc_openmrs_devtools.openmrs_double.model import (
    ID_CARD_TYPE_UUID,
    OPENMRS_ID_TYPE_UUID,
    Faults,
    FileData,
    Patient,
    RecordedRequest,
    Store,
    now,
)
from orthanc_openmrs_devtools.openmrs_double.rest import RestApi
from orthanc_openmrs_devtools.openmrs_double.server_info import ServerInfo
from orthanc_openmrs_devtools.openmrs_double.sso import SingleSignOn, token_expiry
from orthanc_openmrs_devtools.openmrs_double.wire import CONTEXT_PATH, FHIR, Request

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import date, datetime
    from types import TracebackType

    from orthanc_openmrs_devtools.openmrs_double.model import Identifier, StoredAttachment
    from orthanc_openmrs_devtools.openmrs_double.wire import Generation, Response


class OpenMRSDouble:
    """An OpenMRS server on loopback, with seeded data, fault injection and a request log."""

    def __init__(
        self,
        *,
        username: str = "admin",
        password: str = "Admin123",  # noqa: S107 - the reference distro's demo login
        generation: Generation = "A",
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        sso_keys_url: str | None = None,
        sso_trust: ssl.SSLContext | None = None,
    ) -> None:
        """`tls`: serve HTTPS with this server context (its certificate), as a real OpenMRS
        behind a TLS terminator does."""
        self.generation: Generation = generation
        self._tls = tls
        # False: an OpenMRS without the FHIR2 module (its URLs are Tomcat's 404 page).
        self.fhir_module = True
        # Single sign-on (oauth2login) verifying tokens against this JWKS; None: Basic.
        self.sso = SingleSignOn(sso_keys_url, sso_trust) if sso_keys_url else None
        # Seconds slept before each request is handled; may be changed at any time.
        self.latency = latency
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._store = Store()
        self._accounts = Accounts(username, password)
        self._faults = Faults()
        self._requests: list[RecordedRequest] = []
        self._info = ServerInfo.of(generation)
        self._rest = RestApi(self._store, self._accounts, self._faults, self._info)
        self._fhir = FhirApi(self._store, self._accounts)
        self.add_identifier_type("OpenMRS ID", OPENMRS_ID_TYPE_UUID)
        self.add_identifier_type("ID Card", ID_CARD_TYPE_UUID)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Listen on the configured host and port (0 picks a free one) in a background thread."""
        if self._server is not None:
            return
        self._server = _Server((self._host, self._port), _Handler, self)
        if self._tls is not None:
            self._server.socket = self._tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            # A short poll interval keeps stop() quick; the default makes it take 0.5 s.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="openmrs-double",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and cut kept-alive connections, so clients see the server go away."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL including the context path, e.g. http://127.0.0.1:8080/openmrs."""
        if self._server is None:
            raise RuntimeError("the OpenMRS double is not started")
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host!s}:{port}{CONTEXT_PATH}"

    @property
    def scheme(self) -> str:
        return "http" if self._tls is None else "https"

    # -- seeding -------------------------------------------------------------------------

    def add_identifier_type(self, name: str, uuid: str | None = None) -> str:
        """Create a patient identifier type; returns its uuid."""
        with self._lock:
            return self._store.add_identifier_type(name, uuid)

    def add_patient(
        self,
        identifiers: Sequence[Identifier | str],
        *,
        given: str = "Test",
        family: str = "Patient",
        voided: bool = False,
        uuid: str | None = None,
        gender: str = "U",
        birthdate: date | None = None,
        birthdate_estimated: bool = False,
    ) -> str:
        """Create a patient; a plain string is an "OpenMRS ID". Returns the patient's uuid.

        A uuid already known replaces that patient (as an edit in OpenMRS would)."""
        with self._lock:
            idents = self._store.new_identifiers(identifiers)
            patient = Patient(
                uuid=uuid or str(uuidlib.uuid4()),
                name_uuid=str(uuidlib.uuid4()),
                given=given,
                family=family,
                gender=gender,
                birthdate=birthdate,
                voided=voided,
                created=now(),
                identifiers=idents,
                birthdate_estimated=birthdate_estimated,
            )
            self._store.add_patient(patient)
            return patient.uuid

    def void_identifier(self, patient_uuid: str, identifier: str) -> None:
        """Void every identifier of the patient with that value."""
        with self._lock:
            self._store.void_identifier(patient_uuid, identifier)

    def add_identifier(self, patient_uuid: str, identifier: Identifier | str) -> None:
        """Give a patient one more identifier (POST /patient/{uuid}/identifier)."""
        with self._lock:
            self._store.add_identifier(patient_uuid, identifier)

    def edit_person(
        self, patient_uuid: str, *, gender: str | None = None, birthdate: date | None = None
    ) -> None:
        """Change a patient's gender or birthdate (POST /person/{uuid})."""
        with self._lock:
            self._store.edit_person(patient_uuid, gender=gender, birthdate=birthdate)

    def void_patient(self, patient_uuid: str) -> None:
        """Void a patient (DELETE /patient/{uuid}), its identifiers with it."""
        with self._lock:
            self._store.void_patient(patient_uuid)

    def merge_patients(self, preferred_uuid: str, other_uuid: str) -> dict[str, str]:
        """Merge `other_uuid` into `preferred_uuid` as OpenMRS's PatientService.mergePatients
        does (the REST API offers no merge: sites merge from the UI). Returns the moved
        attachments' uuids, old -> new."""
        with self._lock:
            return self._store.merge_patients(preferred_uuid, other_uuid)

    def add_attachment(
        self,
        patient_uuid: str,
        comment: str | None,
        *,
        filename: str = "seed.png",
        mime_type: str = "image/png",
        data: bytes = b"",
        obs_datetime: datetime | None = None,
    ) -> str:
        """Store an attachment directly, as if uploaded earlier; returns its uuid."""
        with self._lock:
            if patient_uuid not in self._store.patients:
                raise ValueError(f"unknown patient {patient_uuid}")
            file = FileData(filename, mime_type, data)
            stored = self._store.store_attachment(
                patient_uuid, comment, file, obs_datetime or now()
            )
            return stored.uuid

    def attachments(
        self, patient_uuid: str | None = None, *, include_voided: bool = False
    ) -> list[StoredAttachment]:
        """Copies of the stored attachments, newest first (the server's listing order)."""
        with self._lock:
            return [replace(a) for a in self._store.newest_first(patient_uuid, include_voided)]

    # -- the user and the server's set-up ------------------------------------------------

    def set_privileges(self, privileges: Sequence[str] | None) -> None:
        """Give the user one role with just these privileges; None: System Developer (all)."""
        with self._lock:
            self._accounts.privileges = None if privileges is None else frozenset(privileges)

    def add_user(
        self,
        username: str,
        password: str,
        *,
        privileges: Sequence[str] | None = None,
        role: str = "System Developer",
    ) -> None:
        """Another user account with its own password and failed-login count: `privileges`
        are what its one role (`role`) grants; None: the System Developer role (all)."""
        with self._lock:
            granted = None if privileges is None else frozenset(privileges)
            self._accounts.add_user(username, password, granted, role)

    def stop_module(self, module_id: str) -> None:
        """Show a module as loaded but not started, as after a failed start."""
        with self._lock:
            self._info.modules[module_id].started = False

    def remove_concept(self, concept_uuid: str) -> None:
        with self._lock:
            self._info.concepts.pop(concept_uuid, None)

    # -- fault injection -----------------------------------------------------------------

    def fail_next_uploads(self, count: int, status: int = 500) -> None:
        """Answer the next `count` uploads with `status` and an error body; store nothing."""
        with self._lock:
            self._faults.fail_uploads = count
            self._faults.fail_status = status

    def drop_after_commit(self, count: int) -> None:
        """Store the next `count` successful uploads, then close the socket without answering."""
        with self._lock:
            self._faults.drop_uploads = count

    def expire_sessions(self) -> None:
        """Make every existing JSESSIONID stale, as after a session timeout or a restart."""
        with self._lock:
            self._accounts.expire_sessions()

    def set_outage(self, status: int | None) -> None:
        """While set, answer every request with this status and an HTML page; None ends it."""
        with self._lock:
            self._faults.outage = status

    # -- observation ---------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the request log, in arrival order."""
        with self._lock:
            return list(self._requests)

    def count_requests(self, method: str | None = None, path_prefix: str = "") -> int:
        """How many requests match; the path is relative to the context path."""
        with self._lock:
            return sum(
                1
                for r in self._requests
                if (method is None or r.method == method.upper()) and r.path.startswith(path_prefix)
            )

    def reset_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def failed_logins(self, username: str) -> int:
        with self._lock:
            return self._accounts.failed_logins(username)

    def is_locked(self, username: str) -> bool:
        with self._lock:
            return self._accounts.is_locked(username)

    # -- request entry (called by the HTTP handler) --------------------------------------

    def _record(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> RecordedRequest:
        relative = path.removeprefix(CONTEXT_PATH) if path.startswith(CONTEXT_PATH + "/") else path
        record = RecordedRequest(method, relative, query, 0, time.time(), token_expiry(headers))
        with self._lock:
            self._requests.append(record)
        return record

    def _finish(self, record: RecordedRequest, response: Response) -> None:
        with self._lock:
            record.status = 0 if response.drop else response.status

    def _answer(self, req: Request) -> Response:
        with self._lock:
            if self._faults.outage is not None:
                return html_page(self._faults.outage, "The server is temporarily unavailable")
            fhir = req.path.startswith(FHIR) and self.fhir_module
            if not (req.path.startswith("/ws/rest/") or fhir):
                return html_page(404, f"The requested resource [{req.path}] is not available")
            session, new_id, stale = self._accounts.session_for(req)
            redirect = self.sso.filter(req, session) if self.sso is not None else None
            if redirect is not None:
                response = redirect
            elif req.path.startswith("/ws/rest/"):
                response = self._rest.answer(
                    req, session, stale=stale, generation=self.generation, basic=self.sso is None
                )
            else:
                response = self._fhir.answer(req, session)
            if new_id is not None:
                cookie = f"JSESSIONID={new_id}; Path={CONTEXT_PATH}; HttpOnly"
                response.headers.append(("Set-Cookie", cookie))
            return response


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], handler: type[_Handler], double: OpenMRSDouble
    ) -> None:
        self.double = double
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that dies mid-request (a killed service) is part of the tests, not news.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Apache-Coyote/1.1"
    sys_version = ""
    # An idle kept-alive connection is closed after this long, as Tomcat does.
    timeout = 60
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and
    # delayed ACKs add ~40 ms to every answer, which a real Tomcat does not.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.double._lock:
            self.server.double._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.double._lock:
            self.server.double._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read the request log instead."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def _handle(self) -> None:
        double = self.server.double
        body = self._read_body()
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        headers = {name.lower(): value for name, value in self.headers.items()}
        record = double._record(self.command, split.path, query, headers)
        if double.latency > 0:
            time.sleep(double.latency)
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        # Paths outside the context path get a marker no route matches, so they answer 404.
        relative = split.path.removeprefix(CONTEXT_PATH)
        if not split.path.startswith(CONTEXT_PATH + "/"):
            relative = "/__outside_context__" + split.path
        base = f"{double.scheme}://{host}{CONTEXT_PATH}"
        req = Request(self.command, relative, query, headers, body, base)
        response = double._answer(req)
        double._finish(record, response)
        if response.drop:
            self.close_connection = True
            return
        self._send(response)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.content_type is not None:
            self.send_header("Content-Type", response.content_type)
        if response.status != 204:
            # 204 carries no body and, per RFC 9110, no Content-Length either.
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.status != 204:
            self.wfile.write(response.body)
