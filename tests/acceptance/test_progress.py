"""Progress on a terminal, seen through a pseudo-terminal as an operator would see it."""

from __future__ import annotations

import os
import pty
import subprocess

from test_cli import _clean_environment, _command

from orthanc_openmrs_devtools.dicom_factory import StudySpec
from support import env_for, load


def test_sync_on_a_terminal_draws_a_progress_line(orthanc, openmrs, database) -> None:
    """With stderr on a terminal, `sync` redraws a line with counts, rate and ETA."""
    openmrs.add_patient(["P001"])
    openmrs.latency = 0.05  # long enough for a few redraws
    load(orthanc, *[StudySpec(f"t{i}") for i in range(8)])
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [*_command(), "sync", "--sync-workers", "1"],
            env={**_clean_environment(), **env_for(orthanc, openmrs, database)},
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            timeout=120,
            check=False,
        )
        os.close(follower)
        follower = -1
        screen = _read_all(leader)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert done.returncode == 0
    assert "\r\x1b[2K" in screen
    assert "8/8 studies" in screen
    assert "/s  ETA" in screen
    assert "synced 8" in screen


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the terminal's other end is closed: all read
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
