"""Network profiles: the same server reached over loopback or through a slow, cloud-like link.

Kernel traffic shaping is not available on these machines, so a profile is a
counting proxy (:class:`benchmarks.proxy.ProxyProcess`, a FaultProxy with no
fault rules) in front of the target's server:

``loopback``
    The target as it is (its pass-through counting proxy): the server's own speed.
``cloud-20ms``
    A second proxy that holds every request 20 ms (a cloud round trip) and caps
    each connection at 100 MB/s in each direction.

``objbutler bench SUITE --profile loopback,cloud-20ms`` runs every selected
suite once per profile, and the report puts the profiles side by side.
Other names of the form ``cloud-<N>ms`` give N ms and the same cap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator

from benchmarks.proxy import ProxyProcess
from benchmarks.targets import Target

__all__ = ["PROFILES", "Profile", "parse_profiles", "profiled", "start_profile"]

CLOUD_BANDWIDTH = 100e6
"""Bytes per second per connection of the cloud profiles (about what one S3 connection sustains)."""


@dataclasses.dataclass(frozen=True)
class Profile:
    """How far the server is: a round trip added to every request and a cap on each connection.

    A profile that adds neither is the target as it is (``loopback``).

    Parameters
    ----------
    name : str
        As it appears in rows and reports.
    latency_ms : float
        Added to every request.
    bandwidth : float, optional
        Bytes per second per connection and direction (None: no cap).
    """

    name: str
    latency_ms: float = 0.0
    bandwidth: float | None = None

    @property
    def is_loopback(self) -> bool:
        """True when the profile adds nothing (the target as it is)."""
        return self.latency_ms == 0 and self.bandwidth is None

    def describe(self) -> str:
        """``20 ms per request, 100 MB/s per connection`` or ``no added latency``."""
        if self.is_loopback:
            return "loopback: no added latency or cap"
        cap = "no bandwidth cap" if self.bandwidth is None else f"{self.bandwidth / 1e6:g} MB/s per connection"
        return f"{self.name}: {self.latency_ms:g} ms per request, {cap}"


PROFILES = {
    "loopback": Profile("loopback"),
    "cloud-20ms": Profile("cloud-20ms", 20.0, CLOUD_BANDWIDTH),
}
"""The named profiles."""


def parse_profiles(text: str) -> tuple[Profile, ...]:
    """``"loopback,cloud-20ms"`` -> the profiles, in order (``cloud-<N>ms`` accepted for any N).

    Raises
    ------
    ValueError
        For an unknown name or an empty list.
    """
    out = []
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        if name in PROFILES:
            out.append(PROFILES[name])
            continue
        match = re.fullmatch(r"cloud-(\d+(?:\.\d+)?)ms", name)
        if match is None:
            raise ValueError(f"unknown profile {name!r}: one of {sorted(PROFILES)} or cloud-<N>ms")
        out.append(Profile(name, float(match.group(1)), CLOUD_BANDWIDTH))
    if not out:
        raise ValueError("no profile given")
    return tuple(dict.fromkeys(out))


def start_profile(target: Target, profile: Profile) -> tuple[Target, ProxyProcess | None]:
    """The target as seen through ``profile``, and the proxy started for it (the caller stops it).

    Raises
    ------
    ValueError
        When a slow profile is asked of a target without an HTTP server on loopback.
    """
    if profile.is_loopback:
        return dataclasses.replace(target, profile=profile.name), None
    if target.server_endpoint is None or target.proxy is None:
        raise ValueError(f"profile {profile.name} needs an HTTP target on 127.0.0.1, not {target.name}")
    proxy = ProxyProcess(target.server_endpoint, latency_ms=profile.latency_ms, bandwidth=profile.bandwidth)
    options = dict(target.store_options)
    if "endpoint_url" in options:
        options["endpoint_url"] = proxy.endpoint
    elif "auth_url" in options:
        options["auth_url"] = f"{proxy.endpoint}/auth/v1.0"
    return dataclasses.replace(target, store_options=options, proxy=proxy, profile=profile.name), proxy


@contextlib.contextmanager
def profiled(target: Target, profile: Profile) -> Iterator[Target]:
    """:func:`start_profile` for a ``with`` block: the proxy it started is stopped after."""
    place, proxy = start_profile(target, profile)
    try:
        yield place
    finally:
        if proxy is not None:
            proxy.stop()
