"""`python -m orthanc_openmrs` runs the command-line tool."""

from __future__ import annotations

from orthanc_openmrs.cli import main

raise SystemExit(main())
