"""The real-file corpus through a real Orthanc and the service, judged as a clinician would.

Used by the real-file tests and `bench/real_files.py`: upload every file (one study each),
and after a sync, judge each study's attachment: an image that agrees with a reference
rendering (Orthanc's /preview or pydicom's, whichever shows content), a card, a PDF, or a
reason in the ledger, and never a black image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np
from PIL import Image

from orthanc_openmrs.models import PreviewSource
from orthanc_openmrs.render import measure
from orthanc_openmrs.render.sandbox import SandboxFailed, decode_isolated
from orthanc_openmrs.store import Store
from orthanc_openmrs_devtools.openmrs_double.model import StoredAttachment
from orthanc_openmrs_devtools.orthanc_server import OrthancServer
from orthanc_openmrs_devtools.real_files import RealFile

# Pearson correlation of 32 x 32 grey thumbnails: a window and a full-range stretch of one
# image stay well above this; two different images, or an inverted one, fall far below.
AGREES = 0.6
_SIDE = 32


@dataclass(frozen=True)
class Uploaded:
    file: RealFile
    orthanc_id: str  # the study, "" when Orthanc refused the file
    refusal: str = ""


@dataclass(frozen=True)
class Verdict:
    name: str
    accepted: bool
    kind: str  # image, card, pdf, reason, refused
    source: str = ""  # the ledger's preview path
    correlation: float | None = None  # with the closest reference, for images
    detail: str = ""
    black: bool = False


def upload(orthanc: OrthancServer, files: Iterable[RealFile]) -> list[Uploaded]:
    out = []
    with orthanc.client() as client:
        for real in files:
            answer = client.post("/instances", content=real.data)
            if answer.status_code == httpx.codes.OK:
                out.append(Uploaded(real, str(answer.json()["ParentStudy"])))
            else:
                message = _orthanc_message(answer)
                out.append(Uploaded(real, "", f"HTTP {answer.status_code} {message}".strip()))
    return out


def _orthanc_message(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return ""
    return str(body.get("Details") or body.get("Message") or "") if isinstance(body, dict) else ""


def thumbnail(image: Image.Image) -> np.ndarray:
    grey = image.convert("L").resize((_SIDE, _SIDE), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.float64).ravel()


def correlation(a: Image.Image, b: Image.Image) -> float:
    x, y = thumbnail(a), thumbnail(b)
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def references(
    orthanc: OrthancServer, instance_id: str, *, ask_orthanc: bool, ask_pydicom: bool
) -> list[Image.Image]:
    """Renderings of the instance that show content: Orthanc's /preview (unless Orthanc must
    not be asked) and pydicom's (in its own process)."""
    found = []
    with orthanc.client() as client:
        if ask_orthanc:
            answer = client.get(
                f"/instances/{instance_id}/preview", headers={"Accept": "image/png"}
            )
            if answer.status_code == httpx.codes.OK:
                found.append(_image(answer.content))
        data = client.get(f"/instances/{instance_id}/file").content if ask_pydicom else b""
    if ask_pydicom:
        with contextlib.suppress(SandboxFailed):
            found.append(decode_isolated(data))
    return [r for r in found if measure.contrast(r).shows_something]


def _image(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


def table(verdicts: Sequence[Verdict]) -> str:
    """The suite's summary: files, accepted by Orthanc, image / card / pdf / reason, and how
    the images were made."""
    kinds = Counter(v.kind for v in verdicts)
    sources = Counter(v.source for v in verdicts if v.source)
    lines = [
        f"{'files':<26}{len(verdicts):>5}",
        f"{'accepted by Orthanc':<26}{sum(v.accepted for v in verdicts):>5}",
        *(f"  {k:<24}{kinds.get(k, 0):>5}" for k in ("image", "card", "pdf", "reason")),
        f"{'refused by Orthanc':<26}{kinds.get('refused', 0):>5}",
        f"{'black or near-black':<26}{sum(v.black for v in verdicts):>5}",
        "previews by path:",
        *(f"  {source:<24}{n:>5}" for source, n in sorted(sources.items())),
    ]
    return "\n".join(lines)


def details(verdicts: Sequence[Verdict]) -> str:
    rows = []
    for v in sorted(verdicts, key=lambda v: (v.kind, v.name)):
        corr = "" if v.correlation is None else f"r={v.correlation:.2f}"
        rows.append(f"{v.kind:<8}{v.source:<20}{corr:<8}{v.name:<44}{v.detail[:90]}")
    return "\n".join(rows)


def judge(
    orthanc: OrthancServer,
    attachments: Sequence[StoredAttachment],
    store: Store,
    uploaded: Sequence[Uploaded],
    *,
    threads: int = 4,
) -> list[Verdict]:
    """One verdict per file, from what OpenMRS holds and what the ledger says. The reference
    renderings (a request to Orthanc or a decoding child process each) are made ``threads`` at
    a time: they wait on other processes, and the corpus has over a hundred."""
    crashers = store.not_to_render()
    verdicts: list[Verdict] = []
    to_compare: list[tuple[int, Image.Image, Callable[[], list[Image.Image]]]] = []
    for item in uploaded:
        name = item.file.name
        if not item.orthanc_id:
            verdicts.append(Verdict(name, False, "refused", detail=item.refusal))
            continue
        row = store.get(item.orthanc_id)
        live = [a for a in attachments if not a.voided and item.file.study_uid in (a.comment or "")]
        if row is None or not live:
            reason = f"{row.state.value}: {row.reason}" if row else "not in the ledger"
            verdicts.append(Verdict(name, True, "reason", detail=reason))
            continue
        attachment = live[0]
        if attachment.mime_type == "application/pdf":
            verdicts.append(Verdict(name, True, "pdf", row.preview_source))
            continue
        picture = _image(attachment.data)
        black = not measure.contrast(picture).shows_something
        if row.preview_source == PreviewSource.CARD.value:
            verdicts.append(
                Verdict(name, True, "card", row.preview_source, None, row.reason, black)
            )
            continue
        # The reference is made by the other party: an image Orthanc made is compared with
        # pydicom's rendering, one made here with Orthanc's /preview.
        local = row.preview_source == PreviewSource.LOCAL_DECODE.value
        make_references = functools.partial(
            references,
            orthanc,
            row.instance_id,
            ask_orthanc=local and row.instance_id not in crashers,
            ask_pydicom=not local,
        )
        to_compare.append((len(verdicts), picture, make_references))
        verdicts.append(Verdict(name, True, "image", row.preview_source, None, row.reason, black))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        found = pool.map(lambda job: job[2](), to_compare)
        for (index, picture, _), refs in zip(to_compare, found, strict=True):
            corr = max((correlation(picture, r) for r in refs), default=None)
            verdicts[index] = dataclasses.replace(verdicts[index], correlation=corr)
    return verdicts
