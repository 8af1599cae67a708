"""Failures as OpenMRS reports them: the REST module's error bodies and Tomcat's HTML pages."""

from __future__ import annotations

from html import escape
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from orthanc_openmrs_devtools.openmrs_double.wire import CONTEXT_PATH, Response, json_response

if TYPE_CHECKING:
    from orthanc_openmrs_devtools.openmrs_double.wire import Call, Generation, Request

# "Class:line" codes as the REST error handler reports the throwing frame.
CODE_AUTH = "org.openmrs.aop.AuthorizationAdvice:43"
CODE_ATTACHMENT = "org.openmrs.module.attachments.rest.AttachmentResource:{line}"
CODE_CRUD = "org.openmrs.module.webservices.rest.web.resource.impl.DelegatingCrudResource:{line}"
CODE_CONTEXT = "org.openmrs.module.webservices.rest.web.RequestContext:{line}"
CODE_RESTUTIL = "org.openmrs.module.webservices.rest.web.RestUtil:{line}"
CODE_VALIDATE = "org.openmrs.validator.ValidateUtil:{line}"
CODE_MISSING_PART = (
    "org.springframework.web.multipart.support.RequestPartServletServerHttpRequest:{line}"
)
CODE_RESOURCE = "org.openmrs.module.webservices.rest.web.RestServiceImpl:{line}"
CODE_METHOD = "org.springframework.web.servlet.mvc.method.RequestMappingInfoHandlerMapping:{line}"
CODE_CONVERSION = "org.openmrs.module.webservices.rest.web.ConversionUtil:{line}"


class RestError(Exception):
    """An exception as the REST module's error handler reports it (status, message, code)."""

    def __init__(
        self,
        status: int,
        message: str | None,
        code: str,
        *,
        reason: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.reason = reason
        self.body = body


def not_supported() -> RestError:
    return RestError(
        400,
        None,
        CODE_CRUD.format(line=519),
        reason="The Resource Does not Support the Requested Operation",
    )


def not_found() -> RestError:
    return RestError(
        404, None, CODE_CRUD.format(line=97), reason="Object with given uuid doesn't exist"
    )


def attachment_error(status: int, message: str | None, line: int) -> RestError:
    return RestError(status, message, CODE_ATTACHMENT.format(line=line))


def not_logged_in(privilege: str) -> RestError:
    return RestError(
        401, f"Privileges required: {privilege}", CODE_AUTH, reason="User is not logged in"
    )


def lacks_privilege(privilege: str) -> RestError:
    reason = "User is logged in but doesn't have the relevant privilege"
    return RestError(403, f"Privileges required: {privilege}", CODE_AUTH, reason=reason)


def method_not_allowed(call: Call) -> RestError:
    message = f"Request method '{call.req.method}' not supported"
    return RestError(405, message, CODE_METHOD.format(line=213))


def error_response(req: Request, err: RestError, generation: Generation) -> Response:
    """The JSON body the REST module's error handler writes for ``err``."""
    if err.body is not None:
        response = json_response(err.status, err.body)
    else:
        inner = "null" if err.message is None else err.message
        text = f"[{inner}]" if err.reason is None else f"{err.reason} [{inner}]"
        error: dict[str, Any] = {"message": text, "code": err.code, "detail": ""}
        if generation == "B":
            error["rawMessage"] = err.message
            error["translatedMessage"] = err.message
        response = json_response(err.status, {"error": error})
    if err.status == 401 and req.headers.get("disable-www-authenticate") != "true":
        realm = f'Basic realm="OpenMRS at {CONTEXT_PATH}/ws/rest/"'
        response.headers.append(("WWW-Authenticate", realm))
    return response


def html_page(status: int, message: str) -> Response:
    """A servlet container error page, which is what sendError() produces."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    title = f"HTTP Status {status} \u2013 {phrase}"  # Tomcat's en dash
    page = (
        f'<!doctype html><html lang="en"><head><title>{title}</title></head><body>'
        f'<h1>{title}</h1><hr class="line" /><p><b>Type</b> Status Report</p>'
        f"<p><b>Message</b> {escape(message)}</p>"
        f'<hr class="line" /><h3>Apache Tomcat/9.0.83</h3></body></html>'
    )
    return Response(status, page.encode(), "text/html;charset=utf-8", [("Content-Language", "en")])
