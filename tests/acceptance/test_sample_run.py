"""The README's first command: the sample run shows every sample study doing what it shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from test_cli import _clean_environment

from orthanc_openmrs_devtools.sample import REAL_SAMPLES, SAMPLE_STUDIES


def test_sample_run_syncs_the_sample_studies(tmp_path: Path) -> None:
    """Every sample study ends as it says, previews are written, a second pass adds nothing."""
    output = tmp_path / "demo-output"
    done = subprocess.run(
        [sys.executable, "-m", "orthanc_openmrs_devtools.demo", "--output", str(output)],
        env=_clean_environment(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    checks = [line for line in done.stdout.splitlines() if line.startswith(("  ok ", "  BAD"))]
    assert len(checks) == len(SAMPLE_STUDIES) + len(REAL_SAMPLES)
    assert all(line.startswith("  ok ") for line in checks)
    assert "synced              8" in done.stdout
    assert "Pass complete: 0 studies looked at" in done.stdout
    registered = done.stdout.split("A clerk registers", 1)[1]
    assert "Pass complete: 1 studies looked at" in registered
    assert "synced              1" in registered
    assert len(list((output / "previews").iterdir())) == 8
    assert "decoded here (local-decode)" in done.stdout
    assert (output / "orthanc-openmrs.sqlite3").exists()
