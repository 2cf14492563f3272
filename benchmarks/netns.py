"""A network namespace joined to this one by a veth pair: clients that can vanish.

The server listens on the host end of the pair; the load generator runs in
the namespace, on the other end. :meth:`Namespace.cut_command` takes the
generator's end down: from then on nothing from the generator reaches the
server, no FIN and no reset, as when a phone leaves coverage.

Needs root and ``ip`` (iproute2). The addresses are the benchmark's own,
one ``/30`` in ``10.231.0.0/16`` per namespace (host ``.1``, generator
``.2``). Everything made is removed by :meth:`Namespace.close`, which the
context manager calls whatever happened.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from types import TracebackType

__all__ = ["Namespace", "unavailable_reason"]


def unavailable_reason() -> str | None:
    """Why a namespace cannot be made here, or ``None`` if it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "ip (iproute2) is not installed: apt-get install iproute2"
    return None


def _ip(*args: str, check: bool = True) -> None:
    cmd = ["ip", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


class Namespace:
    """One generator namespace on its own ``/30``; use it as a context manager."""

    def __init__(self) -> None:
        # Interface names are at most 15 characters; the pid keeps two runs apart.
        tag = str(os.getpid() % 100000)
        self.name = f"ssebench{tag}"
        self.host_link = f"sbh{tag}"
        self.client_link = f"sbc{tag}"
        block = os.getpid() % 16384
        prefix = f"10.231.{block // 64}"
        last = (block % 64) * 4
        self.host_ip = f"{prefix}.{last + 1}"
        self.client_ip = f"{prefix}.{last + 2}"
        self._made: list[str] = []

    def __enter__(self) -> Namespace:
        try:
            _ip("netns", "add", self.name)
            self._made.append("netns")
            _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.client_link)
            self._made.append("link")
            _ip("link", "set", self.client_link, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
            _ip("-n", self.name, "addr", "add", f"{self.client_ip}/30", "dev", self.client_link)
            _ip("-n", self.name, "link", "set", self.client_link, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut_command(self) -> list[str]:
        """The command, run inside the namespace, that takes the generator's end down."""
        return ["ip", "link", "set", self.client_link, "down"]

    def close(self) -> None:
        """Remove the link and the namespace (what of them was made)."""
        if "link" in self._made:
            _ip("link", "del", self.host_link, check=False)
        if "netns" in self._made:
            _ip("netns", "del", self.name, check=False)
        self._made.clear()
