"""Decode a DICOM file in a child process with limits on time and memory.

The codecs are C libraries reading untrusted bytes: Orthanc 1.10.1 crashes on some of the same
files. A child that is killed, runs out of memory or time, costs one preview, never the service.
The file goes in on stdin and a PNG comes out on stdout; a refusal is one line on stderr.
"""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys

from PIL import Image, UnidentifiedImageError

MEMORY_LIMIT = 2 * 1024 * 1024 * 1024  # address space: Python, numpy and one bounded frame
CPU_SECONDS = 30
WALL_SECONDS = 60
_REFUSED = 3  # the child's exit code for "no picture in this file", with its reason


class SandboxFailed(Exception):
    """No picture came out: the reason in words (a refusal, a crash, a limit reached)."""


def decode_isolated(data: bytes) -> Image.Image:
    """Frame 0 of the DICOM file, decoded by a limited child process."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    try:
        child = subprocess.run(
            [sys.executable, "-m", "orthanc_openmrs.render.sandbox"],
            input=data,
            capture_output=True,
            timeout=WALL_SECONDS,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SandboxFailed(f"decoding took longer than {WALL_SECONDS} s") from exc
    except OSError as exc:
        raise SandboxFailed(f"the decoder could not be started: {exc}") from exc
    message = child.stderr.decode("utf-8", "replace").strip().splitlines()
    if child.returncode == _REFUSED:
        raise SandboxFailed(message[-1] if message else "the decoder refused the file")
    if child.returncode != 0:
        how = (
            f"was killed by signal {-child.returncode}"
            if child.returncode < 0
            else f"exited with {child.returncode}"
        )
        raise SandboxFailed(f"the decoder {how} (memory or time limit, or a codec fault)")
    try:
        image = Image.open(io.BytesIO(child.stdout))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise SandboxFailed(f"the decoder's answer is not an image: {exc}") from exc
    return image


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main() -> int:
    _limit()  # before any byte of the file is looked at
    from orthanc_openmrs.render.decode import Undecodable, decode

    data = sys.stdin.buffer.read()
    try:
        image = decode(data)
    except Undecodable as exc:
        print(str(exc), file=sys.stderr)
        return _REFUSED
    except MemoryError:
        print("the frame does not fit in the decoder's memory limit", file=sys.stderr)
        return _REFUSED
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    sys.stdout.buffer.write(buffer.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
