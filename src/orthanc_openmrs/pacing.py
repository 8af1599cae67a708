"""A shared upload rate limit, to protect a production OpenMRS during a backfill."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimit:
    """At most `per_second` acquisitions per second across all threads (0: unlimited).

    Each caller reserves the next free slot under the lock and sleeps outside it, so workers
    queue fairly and none holds the lock while waiting.
    """

    def __init__(
        self,
        per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._interval = 1.0 / per_second if per_second > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0

    def acquire(self) -> float:
        """Wait for a slot; returns how long this call waited."""
        if not self._interval:
            return 0.0
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self._interval
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
        return wait
