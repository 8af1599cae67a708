"""What `pip install .` installs: the service, without the test tooling kept beside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]


def test_the_wheel_carries_the_service_and_no_test_tooling(tmp_path: Path) -> None:
    """The wheel holds the service's modules and none of the double, launcher or sample run."""
    # Built from a copy of the sources: setuptools builds in the tree's build/ and keeps what
    # earlier builds left there, which would hide a module the project no longer has.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    subprocess.run(
        [*PIP_WHEEL, "--wheel-dir", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("orthanc_openmrs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"orthanc_openmrs/cli.py", "orthanc_openmrs/http/server.py"} <= set(names)
    # The review pages' templates and style sheet travel with the code.
    assert {
        "orthanc_openmrs/web/app.py",
        "orthanc_openmrs/web/templates/base.html",
        "orthanc_openmrs/web/templates/queue.html",
        "orthanc_openmrs/web/static/style.css",
    } <= set(names)
    assert [n for n in names if "devtools" in n or "openmrs_double" in n] == []
