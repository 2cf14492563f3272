"""Network namespaces for tests: clients on a real kernel across a veth pair.

The server runs in the test's own namespace on the host end of a veth pair;
clients run in a namespace of their own on the other end. ``cut()`` takes the
client's end down: from then on nothing arrives from the client, no FIN and
no reset, exactly as when a phone leaves coverage. ``mend()`` brings it back.

Needs root and ``ip`` (iproute2). Without them the tests skip, unless ``CI``
or ``SSE_REQUIRE_NETNS=1`` is set, where that is a failure. Every namespace
and link made is removed in ``close()``, which the fixture calls in
``finally``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

import pytest

_counter = itertools.count()


def unavailable_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "ip (iproute2) is not installed: apt-get install iproute2"
    return None


def require_netns() -> None:
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") or os.environ.get("SSE_REQUIRE_NETNS") == "1":
        pytest.fail(f"{reason}, and CI needs these tests to run")
    pytest.skip(reason)


def _ip(*args: str, namespace: str | None = None, check: bool = True) -> None:
    cmd = ["ip", *args] if namespace is None else ["ip", "netns", "exec", namespace, "ip", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


class Namespace:
    """One client namespace joined to this one by a veth pair, on its own /30."""

    def __init__(self) -> None:
        n = next(_counter)
        tag = f"{os.getpid() % 10000}{n}"
        self.name = f"ssetest{tag}"
        self.host_link = f"sseh{tag}"
        self.client_link = f"ssec{tag}"
        # 10.211.0.0/16, one /30 per namespace: host .1, client .2
        block = (os.getpid() * 7 + n) % 16384
        base = f"10.211.{block // 64}.{(block % 64) * 4}"
        prefix = base.rsplit(".", 1)[0]
        last = int(base.rsplit(".", 1)[1])
        self.host_ip = f"{prefix}.{last + 1}"
        self.client_ip = f"{prefix}.{last + 2}"
        self._made: list[str] = []
        try:
            _ip("netns", "add", self.name)
            self._made.append("netns")
            _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.client_link)
            self._made.append("link")
            _ip("link", "set", self.client_link, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
            _ip("addr", "add", f"{self.client_ip}/30", "dev", self.client_link, namespace=self.name)
            _ip("link", "set", self.client_link, "up", namespace=self.name)
            _ip("link", "set", "lo", "up", namespace=self.name)
        except Exception:
            self.close()
            raise

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the client namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def forget_fast(self) -> None:
        """Make this host give up on the client's address within a fraction
        of a second of it going silent (ARP: short reachable time, one probe),
        as a host does that has not heard from a neighbour for a while: TCP
        then meets "no route to host" while it retransmits."""
        neigh = f"/proc/sys/net/ipv4/neigh/{self.host_link}"
        for name, value in (
            ("base_reachable_time_ms", "100"),
            ("delay_first_probe_time", "0"),
            ("ucast_solicit", "1"),
            ("mcast_solicit", "1"),
            ("app_solicit", "0"),
            ("retrans_time_ms", "100"),
        ):
            with open(f"{neigh}/{name}", "w") as knob:
                knob.write(value)

    def cut(self) -> None:
        """The client vanishes: its link goes down, nothing more is sent or acknowledged."""
        _ip("link", "set", self.client_link, "down", namespace=self.name)

    def mend(self) -> None:
        _ip("link", "set", self.client_link, "up", namespace=self.name)

    def close(self) -> None:
        if "link" in self._made:
            _ip("link", "del", self.host_link, check=False)
        if "netns" in self._made:
            _ip("netns", "del", self.name, check=False)
        self._made.clear()
