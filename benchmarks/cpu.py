"""Where the CPU of a benchmark call goes: this client, the proxy, the server (on the same cores).

On this machine client, counting proxy and LocalStack share two cores. When a store-bound
method is no faster than its floor, the question is whose CPU is the bound; :class:`CpuMeter`
reads each party's CPU seconds (user + system, children included) around one call::

    meter = CpuMeter({"proxy": [proxy_pid], "server": server_pids})
    with meter.measure() as used:
        run()
    used  # {"client": 0.41, "proxy": 0.22, "server": 0.93, "wall": 0.71}
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping

__all__ = ["CpuMeter"]


def _process_seconds(pids: Iterable[int]) -> float:
    """CPU seconds used so far by these processes and all their descendants (0 for any that is gone)."""
    import psutil

    total = 0.0
    seen: set[int] = set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for process in family:
            if process.pid in seen:
                continue
            seen.add(process.pid)
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
    return total


class CpuMeter:
    """CPU seconds of this process and of named other processes around a block.

    Parameters
    ----------
    others : mapping of str to iterable of int
        Party name -> process ids (their descendants are counted too).
    """

    def __init__(self, others: Mapping[str, Iterable[int]]) -> None:
        self.others = {name: tuple(pids) for name, pids in others.items()}

    def snapshot(self) -> dict[str, float]:
        """CPU seconds used so far by this process (``client``) and each party, and ``wall`` (perf_counter)."""
        own = os.times()
        out = {"client": own.user + own.system, "wall": time.perf_counter()}
        out.update({name: _process_seconds(pids) for name, pids in self.others.items()})
        return out

    @contextlib.contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        """Yield a dict filled on exit with each party's CPU seconds (and ``wall``) spent in the block."""
        used: dict[str, float] = {}
        before = self.snapshot()
        try:
            yield used
        finally:
            after = self.snapshot()
            used.update({name: after[name] - before[name] for name in before})
