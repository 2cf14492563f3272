"""The Python client's documentation, run as a user would run it.

The service example of ``docs/python-client.rst`` runs against the
quickstart app under the documented gunicorn command, is stopped, misses a
headline, and catches up when started again. The testing guide's Python
client example runs with pytest next to the quickstart app, with the
guide's ``server`` fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT
from tests.test_docs import SNIPPETS, make_site, run_pytest_in, start_documented_server


def headlines(site: Path) -> list[str] | None:
    state = site / "headlines.json"
    return json.loads(state.read_text())["headlines"] if state.exists() else None


def wait_for_headlines(site: Path, expected: list[str], service: subprocess.Popen) -> None:
    deadline = time.monotonic() + 15
    while headlines(site) != expected:
        if service.poll() is not None or time.monotonic() > deadline:
            service.kill()
            _, err = service.communicate()
            raise AssertionError(f"headlines {headlines(site)}, not {expected}: {err[-2000:]}")
        time.sleep(0.05)


def test_the_service_example_resumes_after_a_restart(
    gunicorn: Callable[..., Any], tmp_path: Path
) -> None:
    site = make_site(tmp_path / "site")
    shutil.copy(SNIPPETS / "python_client_service.py", site / "service.py")
    server = start_documented_server(gunicorn, site)

    def start_service() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-W", "error", "service.py", f"{server.url}/stream"],
            cwd=site,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stderr=subprocess.PIPE,
            text=True,
        )

    def publish(title: str) -> None:
        httpx.post(f"{server.url}/news", json={"title": title}, timeout=5).raise_for_status()

    service = start_service()
    try:
        # Until it is subscribed, a headline may pass it by: publish until one lands.
        deadline = time.monotonic() + 15
        while not headlines(site):
            assert time.monotonic() < deadline, "the service never saw a headline"
            publish("First")
            time.sleep(0.2)
        first = headlines(site)
        publish("Two")
        wait_for_headlines(site, [*first, "Two"], service)
        service.send_signal(signal.SIGTERM)
        service.communicate(timeout=10)
        publish("Missed while stopped")
        service = start_service()
        wait_for_headlines(site, [*first, "Two", "Missed while stopped"], service)
    finally:
        service.kill()
        service.communicate()


def test_the_testing_guides_python_client_example_passes(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    # The guide's gunicorn example defines the ``server`` fixture the
    # Python client example uses; as a conftest its own test is not collected.
    shutil.copy(SNIPPETS / "testing_gunicorn.py", site / "conftest.py")
    shutil.copy(SNIPPETS / "testing_python_client.py", site / "test_python_client.py")
    run_pytest_in(site, 1)


def test_every_public_name_of_the_client_has_a_docstring() -> None:
    import inspect

    import flask_sse_keepalive.client as client
    import flask_sse_keepalive.parser as parser

    names = [(client, name) for name in client.__all__]
    names += [(parser, name) for name in ("EventStreamParser", "Comment", "Retry")]
    for module, name in names:
        obj = getattr(module, name)
        if not inspect.isclass(obj):
            continue  # the Literal types are documented where they are defined
        assert (obj.__doc__ or "").strip(), f"{name} has no docstring"
        for member_name, member in inspect.getmembers(obj):
            if member_name.startswith("_") or not (
                callable(member) or isinstance(member, property)
            ):
                continue
            assert (member.__doc__ or "").strip(), f"{name}.{member_name} has no docstring"
