"""The attachments module's REST resource: upload, list, read, download, void and purge."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from PIL import Image

from orthanc_openmrs_devtools.openmrs_double.auth import require, require_any
from orthanc_openmrs_devtools.openmrs_double.errors import (
    CODE_ATTACHMENT,
    CODE_MISSING_PART,
    CODE_VALIDATE,
    RestError,
    attachment_error,
    method_not_allowed,
    not_found,
    not_supported,
)
from orthanc_openmrs_devtools.openmrs_double.model import FileData, now
from orthanc_openmrs_devtools.openmrs_double.multipart import parse_multipart
from orthanc_openmrs_devtools.openmrs_double.representation import (
    SPECIAL_PARAMS,
    page,
    request_context,
)
from orthanc_openmrs_devtools.openmrs_double.wire import (
    REST,
    Response,
    format_datetime,
    json_response,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from orthanc_openmrs_devtools.openmrs_double.model import (
        Faults,
        Patient,
        Store,
        StoredAttachment,
    )
    from orthanc_openmrs_devtools.openmrs_double.multipart import Part
    from orthanc_openmrs_devtools.openmrs_double.wire import Call, Generation

# Defaults of the global properties that shape the answers (attachments, core).
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_COMMENT_LENGTH = 255
_DENIED_FILE_NAMES = frozenset({"eicar.txt"})
# The module records the part's MIME type only when its own extension map knows it;
# anything else (webp, json, csv, OOXML...) is stored as application/octet-stream.
_KNOWN_MIME_TYPES = frozenset(
    {
        "application/pdf",
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/bmp",
        "image/tiff",
        "text/plain",
        "text/html",
        "application/msword",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
        "application/vnd.oasis.opendocument.text",
        "application/vnd.oasis.opendocument.spreadsheet",
        "application/zip",
        "audio/mpeg",
        "video/mp4",
    }
)
_TRUE_WORDS = frozenset({"true", "on", "yes", "1"})


# --------------------------------------------------------------------------------------------
# Attachments as the REST module shows them


def _content_family(mime_type: str) -> str:
    if mime_type.startswith("image/"):
        return "IMAGE"
    return "PDF" if mime_type == "application/pdf" else "OTHER"


def _split_extension(filename: str) -> tuple[str, str]:
    # An extension is what follows the last dot, unless that dot is first or last.
    stem, dot, ext = filename.rpartition(".")
    if not dot or not stem or not ext:
        return filename, ""
    return stem, ext


def _saved_name(att: StoredAttachment) -> str:
    """Generation A's file on disk: <title>_<obs uuid>.<ext>, 'dat' when there is none."""
    stem, ext = _split_extension(att.filename)
    return f"{stem}_{att.uuid}.{ext or 'dat'}"


def _listed_filename(att: StoredAttachment, generation: Generation) -> str:
    if generation == "B":
        return att.filename
    stem, ext = _split_extension(att.filename)
    return f"{stem}.{ext or 'dat'}"


def _attachment_json(att: StoredAttachment, base: str, generation: Generation) -> dict[str, Any]:
    uri = f"{base}{REST}attachment/{att.uuid}"
    return {
        "uuid": att.uuid,
        "dateTime": format_datetime(att.obs_datetime),
        "filename": _listed_filename(att, generation),
        "comment": att.comment,
        "bytesMimeType": att.mime_type,
        "bytesContentFamily": _content_family(att.mime_type),
        "links": [{"rel": "self", "uri": uri, "resourceAlias": "attachment"}],
    }


# --------------------------------------------------------------------------------------------
# Reading, listing and deleting


def attachment_resource(store: Store, faults: Faults, call: Call, rest: str) -> Response:
    uuid, _, sub = rest.partition("/")
    method = call.req.method
    if not uuid and method == "POST":
        return _upload(store, faults, call)
    if not uuid and method == "GET":
        return _list_attachments(store, call)
    if uuid and sub == "bytes" and method == "GET":
        return _attachment_bytes(store, call, uuid)
    if uuid and not sub and method == "GET":
        return _get_attachment(store, call, uuid)
    if uuid and not sub and method == "DELETE":
        return _delete_attachment(store, call, uuid)
    if uuid and sub:
        raise not_found()
    raise method_not_allowed(call)


def _find_attachment(store: Store, uuid: str) -> StoredAttachment:
    att = store.attachments.get(uuid)
    if att is None:
        # getByUniqueId dereferences the missing obs: a NullPointerException, so 500.
        raise attachment_error(500, None, 104)
    return att


def _get_attachment(store: Store, call: Call, uuid: str) -> Response:
    request_context(call.req, "default", call.generation)
    require(call, "Get Observations")
    att = _find_attachment(store, uuid)
    body = _attachment_json(att, call.req.base, call.generation)
    body["resourceVersion"] = "1.8"
    return json_response(200, body)


def _attachment_bytes(store: Store, call: Call, uuid: str) -> Response:
    require(call, "Get Observations")
    att = _find_attachment(store, uuid)
    family = _content_family(att.mime_type)
    thumbnail = call.req.param("view") == "complexdata.view.thumbnail"
    # A thumbnail of a non-image is empty; images are served as stored (no real scaling).
    data = b"" if thumbnail and family != "IMAGE" else att.data
    name = _saved_name(att).replace(" ", "").replace(",", "")
    if call.generation == "B":
        name = att.filename
    ext = _split_extension(name)[1] or "bin"
    headers = [("Content-Family", family), ("File-Name", name), ("File-Ext", ext)]
    return Response(200, data, att.mime_type, headers)


def _delete_attachment(store: Store, call: Call, uuid: str) -> Response:
    require(call, "Get Observations")
    att = _find_attachment(store, uuid)
    purge = (call.req.param("purge") or "").lower() in _TRUE_WORDS
    # Voiding or purging the obs, then the lookup and voiding of an emptied encounter.
    require(call, "Delete Observations" if purge else "Edit Observations")
    require(call, "Get Encounters", "Edit Encounters")
    if purge:
        store.purge_attachment(att.uuid)
    else:
        att.voided = True
    return Response(204)


def _list_attachments(store: Store, call: Call) -> Response:
    req = call.req
    ctx = request_context(req, "ref", call.generation)
    if not set(req.query) - SPECIAL_PARAMS:
        raise not_supported()  # no search parameter at all: getAll, not implemented
    # The patient, visit and encounter look-ups, then the attachments service's search.
    require(call, "Get Patients", "Get Visits", "Get Encounters")
    require(call, "View Attachments", "Get Observations", "Get Concepts")
    patient_uuid = req.param("patient")
    if patient_uuid is None or patient_uuid not in store.patients:
        message = "A patient parameter must be provided when searching the attachments."
        raise attachment_error(400, message, 312)
    include_voided = (req.param("includeVoided") or "").lower() == "true"
    found = store.newest_first(patient_uuid, include_voided)
    # Every stored attachment is encounterless; includeEncounterless decides if they count.
    flag = req.param("includeEncounterless")
    if flag is not None and flag != "only" and flag.lower() not in _TRUE_WORDS:
        found = []
    body = page(req, ctx, found, lambda a: _attachment_json(a, req.base, call.generation))
    return json_response(200, body)


# --------------------------------------------------------------------------------------------
# Uploading


def _upload(store: Store, faults: Faults, call: Call) -> Response:
    content_type = call.req.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/"):
        raise not_supported()  # the generic JSON create, which attachments do not offer
    parts = parse_multipart(content_type, call.req.body)
    # A part only binds to MultipartFile when it carries a filename.
    file = next((p for p in parts if p.name == "file" and p.filename is not None), None)
    if file is None:
        message = "Required request part 'file' is not present"
        raise RestError(500, message, CODE_MISSING_PART.format(line=68))
    # The look-ups run whether or not the parameters were sent (contract §4.4).
    require(call, "Get Patients", "Get Visits", "Get Encounters", "Get Providers", "Get Concepts")
    _inject_failure(faults, call)
    patient = store.patients.get(_form_value(call, parts, "patient") or "")
    caption = _form_value(call, parts, "fileCaption")
    part_type = (file.content_type or "application/octet-stream").split(";")[0].strip()
    _validate_upload(file, part_type, patient, caption, call.generation)
    assert patient is not None  # checked by _validate_upload
    require_any(call, "Add Observations", "Edit Observations")  # ObsService.saveObs
    mime = part_type if part_type in _KNOWN_MIME_TYPES else "application/octet-stream"
    filename = file.filename or ""
    if call.generation == "B":
        filename = filename.replace("|", "_")
    stored = store.store_attachment(
        patient.uuid, caption, FileData(filename, mime, file.data), now()
    )
    if faults.drop_uploads > 0 and not call.stale:
        faults.drop_uploads -= 1
        return Response(0, drop=True)
    body = {
        "uuid": stored.uuid,
        "comment": caption,
        "obsDatetime": format_datetime(stored.obs_datetime),
    }
    return json_response(201, body)


def _inject_failure(faults: Faults, call: Call) -> None:
    # A stale session's answer is lost anyway; the injected failure waits for one that counts.
    if faults.fail_uploads > 0 and not call.stale:
        faults.fail_uploads -= 1
        message = f"Injected failure ({faults.fail_status})"
        raise RestError(faults.fail_status, message, CODE_ATTACHMENT.format(line=160))


def _form_value(call: Call, parts: Sequence[Part], name: str) -> str | None:
    # request.getParameter: the query string first, then the multipart text fields.
    value = call.req.param(name)
    if value is not None:
        return value
    part = next((p for p in parts if p.name == name and p.filename is None), None)
    return None if part is None else part.data.decode("utf-8", "replace")


def _validate_upload(
    file: Part, part_type: str, patient: Patient | None, caption: str | None, generation: Generation
) -> None:
    """The module's checks, in its order; the caption is only checked when the obs is saved."""
    if len(file.data) > MAX_UPLOAD_BYTES:
        raise attachment_error(400, "The file exceeds the maximum size", 170)
    if (file.filename or "").lower() in _DENIED_FILE_NAMES:
        raise attachment_error(400, "The file name is not valid", 186)
    if patient is None:
        message = "A patient parameter must be provided when uploading an attachment."
        raise attachment_error(400, message, 191)
    if part_type.startswith("image/") and not _is_decodable_image(file.data):
        raise attachment_error(400, "The file has invalid content", 210)
    if caption is not None and _java_length(caption) > MAX_COMMENT_LENGTH:
        raise _caption_too_long(generation)


def _is_decodable_image(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception:  # Pillow raises many kinds; any of them means "cannot decode"
        return False
    return True


def _java_length(text: str) -> int:
    # Deliberately not shared with the client's own helper: the double is what checks it.
    return len(text.encode("utf-16-le")) // 2


def _caption_too_long(generation: Generation) -> RestError:
    reason = "This value exceeds the maximum length of 255 permitted for this field."
    if generation == "B":
        body = {
            "error": {
                "message": "Invalid Submission",
                "code": "webservices.rest.error.invalid.submission",
                "globalErrors": [],
                "fieldErrors": {
                    "comment": [{"code": "error.exceededMaxLengthOfField", "message": reason}]
                },
            }
        }
        return RestError(400, "Invalid Submission", "", body=body)
    message = f"'obs id is null' failed to validate with reason: comment: {reason}"
    return RestError(500, message, CODE_VALIDATE.format(line=193))
