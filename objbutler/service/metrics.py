"""Request counts and a latency summary per route, shown at ``/metrics`` in the Prometheus text format."""

from __future__ import annotations

import collections
import threading

import numpy as np

__all__ = ["Metrics"]

_WINDOW = 10_000  # latencies kept per route for the quantiles


class Metrics:
    """Thread-safe counters: requests by (route, status) and the last latencies of each route."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[tuple[str, int]] = collections.Counter()
        self._latency: dict[str, collections.deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=_WINDOW))
        self._seconds: dict[str, float] = collections.defaultdict(float)

    def record(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        with self._lock:
            self._counts[(route, status)] += 1
            self._latency[route].append(seconds)
            self._seconds[route] += seconds

    def count(self, route: str | None = None, status: int | None = None) -> int:
        """Requests answered, optionally of one route and/or status."""
        with self._lock:
            return sum(n for (r, s), n in self._counts.items()
                       if (route is None or r == route) and (status is None or s == status))

    def text(self) -> str:
        """The Prometheus exposition: ``objbutler_requests_total`` and ``objbutler_request_seconds``."""
        lines = ["# HELP objbutler_requests_total Requests answered, by route and HTTP status.",
                 "# TYPE objbutler_requests_total counter"]
        with self._lock:
            counts = sorted(self._counts.items())
            latency = {route: np.array(values) for route, values in self._latency.items()}
            seconds = dict(self._seconds)
        for (route, status), n in counts:
            lines.append(f'objbutler_requests_total{{route="{route}",status="{status}"}} {n}')
        lines += ["# HELP objbutler_request_seconds Latency of the last requests of each route.",
                  "# TYPE objbutler_request_seconds summary"]
        for route, values in sorted(latency.items()):
            for q in (0.5, 0.9, 0.99):
                lines.append(f'objbutler_request_seconds{{route="{route}",quantile="{q}"}} '
                             f"{float(np.quantile(values, q)):.6f}")
            total = sum(n for (r, _), n in counts if r == route)
            lines.append(f'objbutler_request_seconds_sum{{route="{route}"}} {seconds[route]:.6f}')
            lines.append(f'objbutler_request_seconds_count{{route="{route}"}} {total}')
        return "\n".join(lines) + "\n"
