"""The documentation, checked against the software.

The quickstart's samples live in ``docs/snippets/`` and are run here as a user
would run them: ``app.py`` and ``static/news.html`` in a directory of their
own, served by the documented gunicorn command, read with the documented curl
commands and in Chromium, and the bytes shown in the docs compared with the
real ones. The testing guide's examples are run with pytest in the same
layout. Also: every public name has a docstring, and every setting is on the
configuration page with its default.
"""

from __future__ import annotations

import configparser
import inspect
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import flask_sse_keepalive
from flask_sse_keepalive.config import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SNIPPETS = DOCS / "snippets"
PACKAGE = ROOT / "flask_sse_keepalive"
CHROMIUM = Path("/usr/bin/chromium")

#: The origin the docs' commands use; replaced by the test server's.
DOC_ORIGIN = "http://localhost:8000"
#: The epoch in the ids the docs show; replaced by the test server's.
DOC_EPOCH = "44076300"


def snippet_lines(name: str) -> list[str]:
    """The commands of a shell snippet, one per line."""
    text = (SNIPPETS / name).read_text()
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def make_site(directory: Path) -> Path:
    """The quickstart's files laid out as the docs tell: ``app.py``, ``static/news.html``."""
    directory.mkdir()
    shutil.copy(SNIPPETS / "quickstart_app.py", directory / "app.py")
    (directory / "static").mkdir()
    shutil.copy(SNIPPETS / "news.html", directory / "static" / "news.html")
    return directory


def start_documented_server(gunicorn: Callable[..., Any], site: Path) -> Any:
    """Start the app with the command from ``run.sh``."""
    (command,) = snippet_lines("run.sh")
    argv = shlex.split(command)
    assert argv[:3] == ["gunicorn", "-k", "gevent"], argv
    # The fixture passes -k, -w and -b itself; --chdir puts app.py on the path.
    return gunicorn(argv[-1], worker_class=argv[2], args=("--chdir", str(site)))


class Curl:
    """A documented curl command run against the test server, its output read as it arrives."""

    def __init__(self, command: str, origin: str, epoch: str = DOC_EPOCH) -> None:
        argv = shlex.split(command.replace(DOC_ORIGIN, origin).replace(DOC_EPOCH, epoch))
        assert argv[0] == "curl", argv
        self.proc = subprocess.Popen(
            [*argv, "--silent", "--show-error"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.output = b""
        self.ended = False

    def wait_for(self, predicate: Callable[[bytes], bool], timeout: float, what: str) -> bytes:
        """Read until ``predicate(output)`` holds; fail after ``timeout`` s saying ``what``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while not predicate(self.output):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; curl printed {self.output!r}"
                )
            if self.ended:
                raise AssertionError(f"curl ended while waiting for {what}: {self.output!r}")
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    self.output += chunk
                else:
                    self.ended = True
        return self.output

    def read_at_least(self, size: int, timeout: float, what: str) -> bytes:
        return self.wait_for(lambda out: len(out) >= size, timeout, what)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def curl() -> Iterator[Callable[..., Curl]]:
    """Start documented curl commands; every one is stopped at teardown."""
    require_curl()
    started: list[Curl] = []

    def start(command: str, origin: str, epoch: str = DOC_EPOCH) -> Curl:
        process = Curl(command, origin, epoch)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def run_curl(command: str, origin: str, epoch: str = DOC_EPOCH) -> bytes:
    """Run a documented curl command that ends by itself; its output."""
    argv = shlex.split(command.replace(DOC_ORIGIN, origin).replace(DOC_EPOCH, epoch))
    assert argv[0] == "curl", argv
    result = subprocess.run(
        [*argv, "--silent", "--show-error"], capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def wire(name: str, epoch: str = DOC_EPOCH) -> bytes:
    """Bytes the docs show (``docs/snippets/wire/``), with the server's epoch in the ids."""
    return (SNIPPETS / "wire" / name).read_bytes().replace(DOC_EPOCH.encode(), epoch.encode())


# -- the quickstart -----------------------------------------------------------


def test_install_commands_name_the_package_and_its_extras() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    name = setup["metadata"]["name"]
    extras = set(setup["options.extras_require"])
    for command in snippet_lines("install.sh"):
        argv = shlex.split(command)
        assert argv[:2] == ["pip", "install"], command
        requirement = argv[2]
        package, _, extra = requirement.partition("[")
        assert package == name
        if extra:
            assert extra.rstrip("]") in extras, f"{requirement}: no such extra in setup.cfg"


def test_quickstart_wire_bytes_are_what_the_server_sends(gunicorn, curl, tmp_path) -> None:
    server = start_documented_server(gunicorn, make_site(tmp_path / "site"))
    first = wire("first.txt")
    heartbeat = wire("heartbeat.txt")

    (stream_command,) = snippet_lines("curl_stream.sh")
    stream = curl(stream_command, server.url)
    stream.read_at_least(len(first), 10, "the first bytes")
    assert stream.output == first
    # The default interval is 15 s; the docs show the default.
    stream.read_at_least(len(first + heartbeat), 30, "a heartbeat after 15 s of silence")
    assert stream.output == first + heartbeat

    printed = b"".join(
        run_curl(command, server.url) for command in snippet_lines("curl_publish.sh")
    )
    epoch = json.loads(printed.splitlines()[0])["id"].rpartition("-")[0]
    assert printed == wire("publish.txt", epoch)
    expected = first + heartbeat + wire("events.txt", epoch)
    stream.read_at_least(len(expected), 10, "the two published events")
    assert stream.output == expected

    (resume_command,) = snippet_lines("curl_resume.sh")
    resumed = curl(resume_command, server.url, epoch)
    resumed.read_at_least(len(wire("resume.txt", epoch)), 10, "the replay after the resume id")
    assert resumed.output == wire("resume.txt", epoch)

    (reset_command,) = snippet_lines("curl_reset.sh")
    reset = curl(reset_command, server.url, epoch)
    reset.read_at_least(len(wire("reset.txt", epoch)), 10, "a stream-reset")
    assert reset.output == wire("reset.txt", epoch)

    # A reload (HUP) ends the streams at once with a spread-out retry, as
    # Concepts and Deployment say, instead of holding the old worker.
    os.kill(server.pid, signal.SIGHUP)
    farewell = re.compile(rb": shutdown\nretry: (\d+)\n\n\Z")
    stream.wait_for(lambda out: farewell.search(out) is not None, 10, "the shutdown farewell")
    match = farewell.search(stream.output)
    assert match is not None
    assert 1500 <= int(match.group(1)) <= 4500  # SSE_RETRY_MS 3000 times 0.5 to 1.5
    assert stream.proc.wait(timeout=10) == 0, "curl should see the response end normally"


def require_curl() -> None:
    """Skip without curl, except in CI (``CI`` set), where that is a failure."""
    if shutil.which("curl") is None:
        if os.environ.get("CI"):
            pytest.fail("curl is not installed and CI is set: the docs' commands must run")
        pytest.skip("curl is not installed: apt-get install curl")


def _unavailable(reason: str) -> None:
    if os.environ.get("SSE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} and SSE_REQUIRE_BROWSER=1")
    pytest.skip(reason)


def drive_news_page(url: str) -> None:
    """Open the quickstart's page in Chromium (in a process of its own).

    Prints ``open`` once its ``EventSource`` is connected, then, as a JSON
    line, the headlines listed and any page errors once two have arrived.
    Playwright's sync API allows one instance per thread, and the browser
    tests may hold one for the whole session: hence the separate process.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.wait_for_function("() => stream.readyState === EventSource.OPEN", timeout=45_000)
            print("open", flush=True)
            try:
                page.wait_for_function(
                    "() => document.querySelectorAll('#news li').length >= 2", timeout=45_000
                )
            except PlaywrightTimeout:
                errors.append("waited 45 s for two headlines")
            headlines = page.eval_on_selector_all(
                "#news li", "items => items.map(i => i.textContent)"
            )
            print(json.dumps({"headlines": headlines, "errors": errors}), flush=True)
        finally:
            browser.close()


def test_quickstart_page_shows_published_headlines(gunicorn, tmp_path) -> None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        _unavailable("playwright is not installed: pip install playwright (no browser download)")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} not found: apt-get install chromium")
    require_curl()
    server = start_documented_server(gunicorn, make_site(tmp_path / "site"))
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from tests.test_docs import drive_news_page; drive_news_page(sys.argv[1])",
            f"{server.url}/static/news.html",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert driver.stdout is not None
        ready, _, _ = select.select([driver.stdout], [], [], 60)
        line = driver.stdout.readline() if ready else ""
        if line != "open\n":
            driver.kill()
            _, err = driver.communicate(timeout=10)
            raise AssertionError(f"the page did not connect within 60 s: {line!r}\n{err[-2000:]}")
        for command in snippet_lines("curl_publish.sh"):
            run_curl(command, server.url)
        out, err = driver.communicate(timeout=90)
        assert driver.returncode == 0, err[-2000:]
        result = json.loads(out.splitlines()[-1])
        assert result == {"headlines": ["Hello", "World"], "errors": []}, server.log()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate(timeout=10)


# -- the testing guide --------------------------------------------------------


def run_pytest_in(site: Path, passed: int) -> None:
    """Run the tests a user would have in ``site``; all ``passed`` must pass."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", str(site)],
        cwd=site,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{passed} passed" in result.stdout, result.stdout


def test_testing_guide_examples_pass(tmp_path) -> None:
    site = make_site(tmp_path / "site")
    shutil.copy(SNIPPETS / "testing_client.py", site / "test_client_stream.py")
    shutil.copy(SNIPPETS / "testing_gunicorn.py", site / "test_gunicorn_stream.py")
    run_pytest_in(site, 2)


# -- reference pages ----------------------------------------------------------


def test_every_public_name_has_a_docstring() -> None:
    for name in flask_sse_keepalive.__all__:
        obj = getattr(flask_sse_keepalive, name)
        # __doc__, not inspect.getdoc: a class must not borrow its base's.
        assert (obj.__doc__ or "").strip(), f"flask_sse_keepalive.{name} has no docstring"
        if inspect.isclass(obj):
            for member_name, member in vars(obj).items():
                if member_name.startswith("_") or not callable(member):
                    continue
                assert (member.__doc__ or "").strip(), f"{name}.{member_name} has no docstring"


def _config_rows() -> dict[str, str]:
    """``{key: "type, default" cell}`` from the configuration page's table."""
    text = (DOCS / "configuration.rst").read_text()
    rows = re.findall(r"^   \* - ``(SSE_[A-Z_]+)``\n     - (.+?)\n     - ", text, flags=re.M | re.S)
    return {key: " ".join(cell.split()) for key, cell in rows}


def _keys_read_by_the_code() -> set[str]:
    keys: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        keys |= set(re.findall(r"""["'](SSE_[A-Z_]+)["']""", path.read_text()))
    return keys


def _documented_default(value: object) -> str:
    if isinstance(value, str):
        return f'``"{value}"``'
    return f"``{value!r}``"


def test_every_setting_is_on_the_configuration_page_with_its_default() -> None:
    rows = _config_rows()
    for key, default in DEFAULTS.items():
        assert key in rows, f"{key} is missing from docs/configuration.rst"
        assert rows[key].endswith(_documented_default(default)), (
            f"{key}: the docs say {rows[key]!r}, the default is {default!r}"
        )
    missing = _keys_read_by_the_code() - set(rows)
    assert not missing, f"settings read by the code but not documented: {sorted(missing)}"
