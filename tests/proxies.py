"""nginx and HAProxy in front of a test server, configured by the docs' snippets.

The configuration a test runs is ``docs/snippets/nginx_sse.conf`` or
``docs/snippets/haproxy_sse.cfg`` as the docs show it, with only the listen
address, the upstream address and the idle timeouts replaced (each must occur
exactly once, so a snippet that changes shape fails here instead of being
tested half). Each proxy is the test's own process, in the foreground, with
its pid file, logs and temporary files under the test's directory; it is
stopped by pid at teardown.

Without nginx or haproxy the tests skip, unless ``CI`` is set, where that is a
failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, Server, free_port, wait_for_port

SNIPPETS = ROOT / "docs" / "snippets"
NGINX_SNIPPET = SNIPPETS / "nginx_sse.conf"
HAPROXY_SNIPPET = SNIPPETS / "haproxy_sse.cfg"

#: The upstream the snippets name (gunicorn's documented bind address).
DOC_UPSTREAM = "127.0.0.1:8000"


def find_binary(name: str) -> str:
    """The path of ``name``; skip without it (fail when ``CI`` is set)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is not None:
        return path
    reason = f"{name} is not installed: apt-get install {name}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, and the proxy tests must run there")
    pytest.skip(reason)


def substitute(text: str, replacements: dict[str, str], source: Path) -> str:
    """Replace each key of ``replacements``, which must occur exactly once."""
    for old, new in replacements.items():
        count = text.count(old)
        if count != 1:
            raise AssertionError(f"{source.name} should hold {old!r} once, holds it {count} times")
        text = text.replace(old, new)
    return text


@dataclass
class Proxy:
    """A proxy process in front of ``upstream``: ``url`` and ``port`` are its own."""

    kind: str
    server: Server
    upstream: Server
    config: str

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def log(self) -> str:
        return self.server.log()

    def idle_timeout_cut(self, request_path: str) -> bool:
        """Whether the proxy's log says it ended ``request_path`` for an idle upstream."""
        for line in self.log().splitlines():
            if f"GET {request_path} HTTP/1.1" not in line:
                continue
            if self.kind == "nginx" and "upstream timed out" in line:
                return True
            # HAProxy's termination state: "s" the server-side timeout, "D" in the data phase.
            if self.kind == "haproxy" and " sD-- " in line:
                return True
        return False


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop a proxy by its pid, bounded. On ``SIGTERM`` nginx's master stops its
    workers before it exits; only a master that had to be killed leaves them, and
    they go with its process group."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _start(
    kind: str, cmd: list[str], port: int, log_path: Path, config: str, upstream: Server
) -> Proxy:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    server = Server(proc, port, log_path)
    proxy = Proxy(kind, server, upstream, config)
    try:
        wait_for_port(port, 10, kind, proc)
    except Exception as exc:
        _stop_group(proc)
        raise RuntimeError(f"{kind} did not start ({exc}):\n{server.log()}\n{config}") from None
    return proxy


class Proxies:
    """Starts proxies for one test and stops every one of them at its end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Proxy] = []

    def nginx(
        self, upstream: Server, *, idle_timeout: str = "5s", snippet: str | None = None
    ) -> Proxy:
        """nginx with the snippet's site; ``proxy_read_timeout`` set to ``idle_timeout``.

        The main configuration around the site is the test's: its pid file,
        logs and temp paths, and short ``send_timeout``/``proxy_send_timeout``
        (which time writes, so they must not end an idle stream either).
        """
        binary = find_binary("nginx")
        port = free_port()
        prefix = self.directory / f"nginx-{port}"
        for name in ("logs", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / name).mkdir(parents=True, exist_ok=True)
        site = substitute(
            NGINX_SNIPPET.read_text() if snippet is None else snippet,
            {
                "listen 80;": f"listen 127.0.0.1:{port};",
                f"server {DOC_UPSTREAM};": f"server 127.0.0.1:{upstream.port};",
                "proxy_read_timeout 60s;": f"proxy_read_timeout {idle_timeout};",
            },
            NGINX_SNIPPET,
        )
        (prefix / "site.conf").write_text(site)
        # As root, nginx's workers would run as nobody, who cannot enter the test's directory.
        user = "user root;\n" if os.geteuid() == 0 else ""
        main = f"""{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    send_timeout {idle_timeout};
    proxy_send_timeout {idle_timeout};
    include {prefix}/site.conf;
}}
"""
        (prefix / "nginx.conf").write_text(main)
        cmd = [binary, "-p", f"{prefix}/", "-c", f"{prefix}/nginx.conf", "-g", "daemon off;"]
        # nginx reports start-up errors on stderr and the rest in error.log.
        proxy = _start("nginx", cmd, port, prefix / "logs" / "error.log", site, upstream)
        self.started.append(proxy)
        return proxy

    def haproxy(
        self, upstream: Server, *, idle_timeout: str = "5s", snippet: str | None = None
    ) -> Proxy:
        """HAProxy with the snippet; ``timeout server`` and ``timeout client`` set to
        ``idle_timeout``. A ``global`` section of the test's sends its log to stderr."""
        binary = find_binary("haproxy")
        port = free_port()
        directory = self.directory / f"haproxy-{port}"
        directory.mkdir(parents=True, exist_ok=True)
        body = substitute(
            HAPROXY_SNIPPET.read_text() if snippet is None else snippet,
            {
                "bind :80": f"bind 127.0.0.1:{port}",
                f"server app1 {DOC_UPSTREAM}": f"server app1 127.0.0.1:{upstream.port}",
                "timeout client 60s": f"timeout client {idle_timeout}",
                "timeout server 60s": f"timeout server {idle_timeout}",
            },
            HAPROXY_SNIPPET,
        )
        config = f"global\n    log stderr format raw local0\n\n{body}"
        path = directory / "haproxy.cfg"
        path.write_text(config)
        cmd = [binary, "-f", str(path), "-db"]
        proxy = _start("haproxy", cmd, port, directory / "haproxy.log", config, upstream)
        self.started.append(proxy)
        return proxy

    def start(self, kind: str) -> Callable[..., Proxy]:
        start: Callable[..., Proxy] = getattr(self, kind)
        return start

    def stop_all(self) -> None:
        while self.started:
            _stop_group(self.started.pop().server.proc)
