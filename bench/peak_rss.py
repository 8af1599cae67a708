"""Run a Python module or script in this process, then write its peak RSS (KiB) to a file.

Usage: python peak_rss.py REPORT_FILE -m MODULE [ARGS...]
       python peak_rss.py REPORT_FILE SCRIPT.py [ARGS...]

Why not getrusage? On Linux, exec() folds the high-water mark of the address space it
replaces into the new program's ru_maxrss, so a child spawned by a big parent (the benchmark,
which also hosts the OpenMRS double) reports the parent's peak. VmHWM in /proc/self/status
covers only the current address space: the peak of this interpreter and what it ran.
"""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path


def peak_rss_kib() -> int:
    status = Path("/proc/self/status").read_text(encoding="ascii")
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")
    return int(match.group(1))


def run(target: list[str]) -> int | str | None:
    """Run the target as `python <target>` would; its exit code."""
    try:
        if target[0] == "-m":
            sys.argv = [target[1], *target[2:]]
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(target)
            runpy.run_path(target[0], run_name="__main__")
    except SystemExit as exc:
        return exc.code
    return 0


def main() -> None:
    if len(sys.argv) < 3 or (sys.argv[2:3] == ["-m"] and len(sys.argv) < 4):
        sys.exit(__doc__)
    report = Path(sys.argv[1])
    code = run(sys.argv[2:])
    # Written last, so that the peak includes everything the target did.
    report.write_text(str(peak_rss_kib()), encoding="ascii")
    sys.exit(code)


if __name__ == "__main__":
    main()
