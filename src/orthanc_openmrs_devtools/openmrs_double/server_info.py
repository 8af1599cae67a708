"""What the server says about itself: its modules (`/module`) and concepts (`/concept/{uuid}`),
which `orthanc-openmrs check` reads. Sources: docs/openmrs-preflight.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orthanc_openmrs_devtools.openmrs_double.auth import require
from orthanc_openmrs_devtools.openmrs_double.errors import (
    CODE_AUTH,
    RestError,
    method_not_allowed,
    not_found,
)
from orthanc_openmrs_devtools.openmrs_double.representation import (
    Node,
    page,
    render,
    request_context,
)
from orthanc_openmrs_devtools.openmrs_double.wire import REST, json_response

if TYPE_CHECKING:
    from orthanc_openmrs_devtools.openmrs_double.wire import Call, Generation, Response

# The attachments module's activator creates these complex concepts when missing.
IMAGE_CONCEPT_UUID = "7cac8397-53cd-4f00-a6fe-028e8d743f8e"
DEFAULT_CONCEPT_UUID = "42ed45fd-f3f6-44b6-bfc2-8bde1bb41e00"
_COMPLEX_DATATYPE_UUID = "8d4a6242-c2cc-11de-8d13-0010c6dffd0f"
_QUESTION_CLASS_UUID = "8d491e50-c2cc-11de-8d13-0010c6dffd0f"


@dataclass
class Module:
    module_id: str
    name: str
    version: str
    package: str
    started: bool = True


# Versions of the O3 reference distro releases the two generations stand for.
_MODULES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "A": (
        ("webservices.rest", "Rest Web Services OMOD", "2.48.0"),
        ("attachments", "Attachments", "3.6.0"),
        ("fhir2", "FHIR2", "2.3.0"),
    ),
    "B": (
        ("webservices.rest", "Rest Web Services OMOD", "3.2.0"),
        ("attachments", "Attachments", "4.0.0"),
        ("fhir2", "FHIR2", "3.0.0"),
    ),
}


@dataclass
class ServerInfo:
    modules: dict[str, Module] = field(default_factory=dict)
    concepts: dict[str, str] = field(
        default_factory=lambda: {
            IMAGE_CONCEPT_UUID: "ATT IMAGE ATTACHMENT",
            DEFAULT_CONCEPT_UUID: "ATT DEFAULT ATTACHMENT",
        }
    )

    @classmethod
    def of(cls, generation: Generation) -> ServerInfo:
        modules = {
            module_id: Module(module_id, name, version, f"org.openmrs.module.{module_id}")
            for module_id, name, version in _MODULES[generation]
        }
        return cls(modules)


_MODULE_VIEWS = {
    "ref": ("uuid", "display", "links"),
    "default": (
        "uuid", "display", "name", "description", "version", "started", "startupErrorMessage",
        "links:full",
    ),
    "full": (
        "uuid", "display", "name", "description", "packageName", "author", "version", "started",
        "startupErrorMessage", "requireOpenmrsVersion", "awareOfModules", "requiredModules",
        "links",
    ),
}  # fmt: skip
_CONCEPT_VIEWS = {
    "ref": ("uuid", "display", "links"),
    "default": (
        "uuid", "display", "name", "datatype", "conceptClass", "set", "version", "retired",
        "names", "descriptions", "mappings", "answers", "setMembers", "attributes", "links:full",
        "resourceVersion",
    ),
}  # fmt: skip


def _module_node(module: Module, base: str) -> Node:
    props = {
        "uuid": module.module_id,
        "display": module.name,
        "name": module.name,
        "description": f"{module.name} module",
        "packageName": module.package,
        "author": "OpenMRS",
        "version": module.version,
        "started": module.started,
        "startupErrorMessage": None,
        "requireOpenmrsVersion": "2.6.0",
        "awareOfModules": [],
        "requiredModules": [],
    }
    return Node(f"{base}{REST}module/{module.module_id}", "module", props, _MODULE_VIEWS)


def _ref(kind: str, uuid: str, display: str, base: str) -> Node:
    props = {"uuid": uuid, "display": display}
    return Node(f"{base}{REST}{kind}/{uuid}", kind, props, {"ref": ("uuid", "display", "links")})


def _concept_node(uuid: str, name: str, base: str) -> Node:
    props = {
        "uuid": uuid,
        "display": name,
        "name": {
            "display": name,
            "name": name,
            "locale": "en",
            "conceptNameType": "FULLY_SPECIFIED",
        },
        "datatype": _ref("conceptdatatype", _COMPLEX_DATATYPE_UUID, "Complex", base),
        "conceptClass": _ref("conceptclass", _QUESTION_CLASS_UUID, "Question", base),
        "set": False,
        "version": None,
        "retired": False,
        "names": [],
        "descriptions": [],
        "mappings": [],
        "answers": [],
        "setMembers": [],
        "attributes": [],
        "resourceVersion": "2.0",
    }
    return Node(f"{base}{REST}concept/{uuid}", "concept", props, _CONCEPT_VIEWS)


def module_resource(info: ServerInfo, call: Call, rest: str) -> Response:
    """Readable by any logged-in user: ModuleFactoryWrapper.checkReadonlyPrivilege."""
    if call.req.method != "GET":
        raise method_not_allowed(call)
    default_view = "default" if rest else "ref"
    ctx = request_context(call.req, default_view, call.generation)
    if call.user is None:
        raise RestError(
            401, "User must be authenticated", CODE_AUTH, reason="User is not logged in"
        )
    base = call.req.base
    if rest:
        module = info.modules.get(rest)
        if module is None:
            raise not_found()
        return json_response(200, render(_module_node(module, base), ctx.spec))
    found = list(info.modules.values())
    return json_response(
        200, page(call.req, ctx, found, lambda m: render(_module_node(m, base), ctx.spec))
    )


def concept_resource(info: ServerInfo, call: Call, rest: str) -> Response:
    if call.req.method != "GET":
        raise method_not_allowed(call)
    if not rest:
        raise not_found()  # listing concepts is not what the double offers
    ctx = request_context(call.req, "default", call.generation)
    require(call, "Get Concepts")
    name = info.concepts.get(rest)
    if name is None:
        raise not_found()
    return json_response(200, render(_concept_node(rest, name, call.req.base), ctx.spec))
