"""The service's own HTTP surface while `run` runs: /health (liveness), /ready (readiness) and
/metrics (Prometheus). Read-only: nothing here can change the ledger or either server, and
nothing shows a patient, a study's UID or a URL. The review pages (web/), behind a sign-in,
are mounted beside them under /review/.

    health.py   pure: is the loop alive, is the service ready, from what it last told
    metrics.py  the Prometheus registry: the monitor's counters, the ledger read at scrape time
    server.py   the ASGI app (Starlette) served by uvicorn in a thread, and the three routes
"""

from __future__ import annotations

from orthanc_openmrs.http.server import HttpSurface

__all__ = ["HttpSurface"]
