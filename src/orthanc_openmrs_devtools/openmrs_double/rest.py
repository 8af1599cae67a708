"""The REST API's front: the session filter, routing to resources, and error bodies."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from orthanc_openmrs_devtools.openmrs_double.attachments import attachment_resource
from orthanc_openmrs_devtools.openmrs_double.auth import session_resource
from orthanc_openmrs_devtools.openmrs_double.errors import (
    CODE_RESOURCE,
    RestError,
    error_response,
    html_page,
)
from orthanc_openmrs_devtools.openmrs_double.patients import patient_resource, type_resource
from orthanc_openmrs_devtools.openmrs_double.server_info import (
    ServerInfo,
    concept_resource,
    module_resource,
)
from orthanc_openmrs_devtools.openmrs_double.wire import REST, Call

if TYPE_CHECKING:
    from collections.abc import Callable

    from orthanc_openmrs_devtools.openmrs_double.auth import Accounts, Session
    from orthanc_openmrs_devtools.openmrs_double.model import Faults, Store
    from orthanc_openmrs_devtools.openmrs_double.wire import Generation, Request, Response


class RestApi:
    """The /ws/rest/v1 endpoints."""

    def __init__(self, store: Store, accounts: Accounts, faults: Faults, info: ServerInfo) -> None:
        self._accounts = accounts
        self._routes: dict[str, Callable[[Call, str], Response]] = {
            "session": partial(session_resource, accounts),
            "patient": partial(patient_resource, store),
            "patientidentifiertype": partial(type_resource, store),
            "attachment": partial(attachment_resource, store, faults),
            "module": partial(module_resource, info),
            "concept": partial(concept_resource, info),
        }

    def answer(
        self,
        req: Request,
        session: Session,
        *,
        stale: bool,
        generation: Generation,
        basic: bool = True,
    ) -> Response:
        # Under single sign-on the Basic login is inactive (sso.py).
        refused = self._accounts.basic_login(req, session) if basic else None
        privileges = self._accounts.privileges_of(session.user)
        call = Call(req, session.user, stale, generation, privileges)
        if stale:
            # The filter has already sent "Session timed out" but lets the request go on:
            # the controller runs (an upload is stored) and its answer is lost.
            if refused is None:
                self._call(call)
            return html_page(401, "Session timed out")
        return refused or self._call(call)

    def _call(self, call: Call) -> Response:
        try:
            return self._route(call)
        except RestError as err:
            return error_response(call.req, err, call.generation)

    def _route(self, call: Call) -> Response:
        path = call.req.path
        if not path.startswith(REST):
            raise RestError(404, f"Unknown resource: {path}", CODE_RESOURCE.format(line=172))
        resource, _, rest = path[len(REST) :].partition("/")
        handler = self._routes.get(resource)
        if handler is None:
            raise RestError(404, f"Unknown resource: v1/{resource}", CODE_RESOURCE.format(line=172))
        return handler(call, rest)
