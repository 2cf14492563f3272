import socket
import subprocess
import sys
import time

import httpx
import pytest


@pytest.fixture
def server():
    """``gunicorn -k gevent app:app`` on a free port, stopped after the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = ["gunicorn", "-k", "gevent", "-b", f"127.0.0.1:{port}", "app:app"]
    proc = subprocess.Popen([sys.executable, "-m", *command])
    try:
        deadline = time.monotonic() + 20
        while True:  # wait until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()  # streams end within a second; no need to wait for them
        proc.wait(timeout=30)


def test_headline_reaches_a_real_stream(server):
    with httpx.stream("GET", f"{server}/stream?channel=news", timeout=10) as response:
        lines = response.iter_lines()
        assert next(lines) == "retry: 3000"  # sent at once
        # Once subscribed, whatever is published reaches the stream.
        assert ": sse-keepalive subscribed" in lines
        httpx.post(f"{server}/news", json={"title": "Hello"})
        data = next(line for line in lines if line.startswith("data:"))
        assert data == 'data: {"title":"Hello"}'
