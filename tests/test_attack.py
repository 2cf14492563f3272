"""The stream route under attack, on a real ``gunicorn -k gevent`` worker.

* fuzzed requests (hypothesis): query strings, header values, methods and
  paths under the prefix; never a 5xx, never a traceback, the worker lives
  on and a normal stream works afterwards;
* a connection flood from one address, with ``SSE_MAX_CONNECTIONS_PER_CLIENT``:
  answered ``503`` with ``Retry-After``, while another client's stream keeps
  its latency;
* tokens replayed, stretched to other channels, signed with another key or
  another salt: all refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeTimedSerializer

from tests.conftest import ROOT, server_environ
from tests.test_hardening import worker_pids
from tests.test_streams import stats, wait_until
from tests.test_tokens import token_from
from tests.wire import RawStream

TOKENS_APP = "tests.apps.tokens_app:app"
BASIC_APP = "tests.apps.basic:app"
ORIGIN = "https://a.example"


# -- a raw request, for what no well-behaved client would send --------------------------


@dataclass
class Answer:
    status: int
    head: bytes
    body: bytes = b""
    streaming: bool = False


def send_raw(port: int, request: bytes, timeout: float = 10) -> Answer:
    """Send ``request`` as is on a new connection; the response head and what
    follows it (a stream's first bytes, a refusal's whole body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data:
            assert time.monotonic() < deadline, f"no response head within {timeout} s"
            chunk = sock.recv(65536)
            assert chunk, f"the connection closed before a response head: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        lower = head.lower()
        streaming = b"content-type: text/event-stream" in lower
        if streaming or b"content-length: 0\r\n" in lower + b"\r\n" or request[:5] == b"HEAD ":
            # A stream never ends: its first bytes are enough. HEAD has no body.
            with contextlib.suppress(OSError):
                sock.settimeout(0.2)
                body += sock.recv(65536)
            return Answer(status, head, body, streaming)
        # A refusal, or gunicorn's own error page: read it whole (it is short).
        sock.settimeout(2)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while len(body) < 65536 and b"0\r\n\r\n" not in body and not _complete(head, body):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
        return Answer(status, head, body)


def _complete(head: bytes, body: bytes) -> bool:
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


# -- the fuzz -------------------------------------------------------------------------


METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH", "TRACE", "CONNECT"]

#: printable characters of the request line, without those that end or split it
_URL_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#%? ")
#: header values as they could come off the wire (latin-1), CR and LF aside
_HEADER_CHARS = st.characters(min_codepoint=0, max_codepoint=0xFF, exclude_characters="\r\n")


def _encoded(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A value percent-encoded as a browser would, or raw where the request line allows."""
    return st.one_of(
        values.map(lambda v: quote(v, safe="")),
        values.filter(lambda v: all(0x21 <= ord(c) <= 0x7E and c not in "#%& " for c in v)),
    )


def requests(tokens: list[str]) -> st.SearchStrategy[bytes]:
    """Raw requests, mostly ``GET`` on the stream route, each part fuzzed: mostly
    plausible values, so that a request gets past one check to the next."""
    junk = st.one_of(
        st.text(max_size=40),
        st.text(_URL_CHARS, max_size=300),
        st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    )
    mutated_token = st.tuples(st.sampled_from(tokens), st.integers(0, 200), _URL_CHARS).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]
    )
    by_key = {
        "channel": st.one_of(
            st.sampled_from(["a", "b", "default"]),
            st.sampled_from(["", "a" * 129, "a b", "..", "@", "forbidden", "c"]),
            junk,
        ),
        "token": st.one_of(st.sampled_from(tokens), mutated_token, junk),
        "heartbeat": st.one_of(
            st.sampled_from(["1", "0", "-1", "nan", "inf", "-inf", "1e309", "0x10", "1_0", "5"]),
            st.floats().map(str),
            junk,
        ),
        "last_event_id": st.one_of(
            st.sampled_from(["0-0", "1-1", "abc-1", "-1", "1-", "x" * 1025, "é"]), junk
        ),
    }
    pair = st.one_of(
        *[st.tuples(st.just(key), values) for key, values in by_key.items()],
        st.tuples(st.sampled_from(["x", "channel[]", "tok%65n", "Channel", ""]), junk),
        st.tuples(st.text(_URL_CHARS, max_size=8), junk),
    )
    pairs = st.one_of(
        st.lists(pair, max_size=3),
        st.lists(pair, max_size=3),
        st.lists(pair, max_size=8),
        st.lists(pair, min_size=9, max_size=40),
    )
    query = pairs.flatmap(
        lambda pairs: st.tuples(*[_encoded(st.just(v)) for _, v in pairs]).map(
            lambda encoded: "&".join(f"{k}={v}" for (k, _), v in zip(pairs, encoded, strict=True))
        )
    )
    # Weighted towards the route itself: each branch is drawn about as often.
    path = st.one_of(
        *[st.just("/stream")] * 6,
        st.sampled_from(["/stream/", "/stream//", "/stream/static/sse-keepalive.js"]),
        st.text(_URL_CHARS, max_size=60).map(lambda p: "/stream/" + p),
        st.sampled_from(["/stream/..%2f..%2fetc/passwd", "/stream/%00", "/stream/static/%2e%2e"]),
    )
    method = st.one_of(
        *[st.just("GET")] * 6,
        st.sampled_from(METHODS),
        st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=12),
    )
    header_value = st.one_of(
        st.text(_HEADER_CHARS, max_size=300),
        st.sampled_from([*tokens, ORIGIN, "null", "https://evil.example", "0-0", "x" * 2000]),
    )
    header_names = st.sampled_from(
        ["Last-Event-ID", "Origin", "Access-Control-Request-Headers", "X-Client", "Authorization"]
    )
    headers = st.dictionaries(header_names, header_value, max_size=4)
    return st.builds(build_request, method, path, query, headers)


def build_request(method: str, path: str, query: str, headers: dict[str, str]) -> bytes:
    target = f"{path}?{query}" if query else path
    # The server closes after the response: a reply without a length ends there.
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1"), b"Host: 127.0.0.1"]
    lines.append(b"Connection: close")
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def test_fuzzed_requests_never_get_a_5xx_nor_a_traceback(gunicorn: Any) -> None:
    server = gunicorn(
        TOKENS_APP,
        env={"SSE_CORS_ORIGINS": ORIGIN, "SSE_MAX_CHANNELS": "8", "TEST_DEBUG_LOG": "1"},
    )
    pid = stats(server)["pid"]
    workers = worker_pids(server.pid)
    tokens = [
        token_from(server, ["a", "b"], subject="user-1"),
        token_from(server, ["a"], subject="banned"),
        token_from(server, ["default"], expires_in=0.001),  # expired by the time it is used
    ]
    seen: dict[int, int] = {}

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=requests(tokens))
    # Each answer of the route at least once, whatever is drawn.
    @example(request=build_request("GET", "/stream", f"channel=a&token={tokens[0]}", {}))
    @example(request=build_request("GET", "/stream", f"channel=c&token={tokens[0]}", {}))
    @example(request=build_request("GET", "/stream", f"token={tokens[2]}", {}))
    @example(request=build_request("GET", "/stream", "channel=a%20b", {}))
    def check(request: bytes) -> None:
        answer = send_raw(server.port, request)
        seen[answer.status] = seen.get(answer.status, 0) + 1
        assert answer.status < 500, (request, answer.head, answer.body)
        for sign in (b"Traceback", b'File "', b"Error handling request"):
            assert sign not in answer.head + answer.body, (request, answer.body)

    started = time.monotonic()
    check()
    elapsed = time.monotonic() - started
    assert elapsed < 120, f"the fuzz took {elapsed:.0f} s"
    # The fuzz reached the route's answers, not only gunicorn's parser.
    print(f"{sum(seen.values())} requests in {elapsed:.1f} s: {dict(sorted(seen.items()))}")
    assert {200, 400, 401, 403}.issubset(seen), seen
    log = server.log()
    assert "Traceback" not in log, log[-5000:]
    assert stats(server)["pid"] == pid, "the worker was replaced"
    assert worker_pids(server.pid) == workers
    # A normal stream works afterwards.
    stream = RawStream(server.port, f"/stream?channel=a&token={tokens[0]}")
    assert stream.status == 200
    stream.wait_for(lambda s: "sse-keepalive subscribed" in s.parser.comments, 5, "subscribed")
    httpx.post(
        f"{server.url}/control/publish", json={"data": "still here", "channel": "a"}, timeout=10
    ).raise_for_status()
    stream.wait_for(lambda s: s.events, 5, "an event after the fuzz")
    assert stream.data() == ["still here"]


# -- the flood ------------------------------------------------------------------------


def start_flood(port: int, *, source: str, total: int, in_flight: int) -> subprocess.Popen:
    """The flood of :mod:`tests.apps.flood`, in a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.apps.flood", str(port), source, str(total), str(in_flight),
         "/stream?channel=flood"],
        cwd=ROOT, env=server_environ(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


class Probe:
    """Another client's stream, and its events' latency: from the start of
    the publish request to the event's arrival on the stream."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.stream = RawStream(server.port, "/stream?channel=probe")
        self.stream.wait_for(
            lambda s: "sse-keepalive subscribed" in s.parser.comments, 5, "the probe subscribed"
        )
        self.sent: list[float] = []
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set() and self.stream.pump(0.05):
            pass

    def publish_for(self, seconds: float, every: float = 0.01) -> None:
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                seq = len(self.sent)
                self.sent.append(time.monotonic())
                client.post(
                    "/control/publish", json={"data": str(seq), "channel": "probe"}
                ).raise_for_status()
                time.sleep(every)

    def latencies(self, sent_between: tuple[float, float], timeout: float = 10) -> list[float]:
        wait_until(lambda: len(self.stream.events) >= len(self.sent), timeout, "every probe event")
        arrivals = dict(zip(self.stream.data(), self.stream.event_times, strict=True))
        low, high = sent_between
        return [
            arrivals[str(seq)] - sent for seq, sent in enumerate(self.sent) if low <= sent <= high
        ]

    def stop(self) -> None:
        self._stop.set()
        self._reader.join(timeout=5)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def test_a_flood_from_one_address_is_refused_while_another_client_keeps_its_latency(
    gunicorn: Any,
) -> None:
    cap, total = 20, 4000
    server = gunicorn(
        BASIC_APP,
        env={"SSE_MAX_CONNECTIONS_PER_CLIENT": str(cap), "SSE_HEARTBEAT_INTERVAL": "30"},
    )
    pid = stats(server)["pid"]
    probe = Probe(server)
    flood = None
    try:
        quiet_from = time.monotonic()
        probe.publish_for(2)
        quiet = probe.latencies((quiet_from, time.monotonic()))

        # 50 at a time: the worker answers the flood's requests in turn with
        # everyone else's (about half a millisecond each), so another client's
        # request waits behind about one of each. Many more at once slow every
        # client in proportion; per-address limits in front stop that sooner.
        flood_from = time.monotonic()
        flood = start_flood(server.port, source="127.0.0.2", total=total, in_flight=50)
        assert flood.stdout is not None
        while not select.select([flood.stdout], [], [], 0)[0]:
            assert flood.poll() is None, "the flood process failed"
            assert time.monotonic() - flood_from < 120, "the flood did not end within 120 s"
            probe.publish_for(0.2)
        flood_to = time.monotonic()
        result = json.loads(flood.stdout.readline())
        loud = probe.latencies((flood_from, flood_to))

        assert not result["errors"], result["errors"]
        assert result["statuses"] == {"200": cap, "503": total - cap}
        assert result["retry_after"] and set(result["retry_after"]) <= {"1", "2", "3", "4", "5"}
        figures = stats(server)
        assert figures["refused"] == total - cap
        assert figures["pid"] == pid
        assert figures["connections"] == cap + 1  # the flood's streams and the probe
        # The probe lost nothing and was never cut.
        assert probe.stream.end is None
        assert probe.stream.data() == [str(seq) for seq in range(len(probe.sent))]
        report = (
            f"{total} requests in {result['seconds']:.1f} s; event latency: "
            f"quiet p99 {p99(quiet) * 1000:.1f} ms ({len(quiet)} events), "
            f"flood p99 {p99(loud) * 1000:.1f} ms, max {max(loud) * 1000:.1f} ms "
            f"({len(loud)} events)"
        )
        print(report)
        assert len(loud) >= 20, report
        assert p99(loud) < max(10 * p99(quiet), 0.2), report
    finally:
        probe.stop()
        if flood is not None:
            flood.communicate(timeout=10)  # closes its stdin: it lets the streams go


# -- tokens misused ---------------------------------------------------------------------


def forged(channels: list[str], *, key: str, salt: str) -> str:
    """A token shaped like ours, signed with ``key`` and ``salt`` by hand."""
    payload = {"c": channels, "x": time.time() + 600}
    signer = {"key_derivation": "hmac", "digest_method": hashlib.sha256}
    return URLSafeTimedSerializer(key, salt=salt, signer_kwargs=signer).dumps(payload)


def test_misused_tokens_are_refused_by_a_real_worker(gunicorn: Any) -> None:
    server = gunicorn(TOKENS_APP, env={"SSE_HEARTBEAT_INTERVAL": "30"})

    def status(query: str) -> tuple[int, str]:
        """The status, and the body of a refusal (a stream let in is left open)."""
        answer = RawStream(server.port, f"/stream?{query}")
        if answer.status != 200:
            answer.read_to_end(5)
        return answer.status, answer.wire.decode() if answer.status != 200 else ""

    short = token_from(server, ["a"], expires_in=1)
    first = RawStream(server.port, f"/stream?channel=a&token={short}")
    assert first.status == 200
    first.read_to_end(5)  # the stream ends at the expiry ...
    assert first.parser.comments[-1] == "expired"
    # ... and the same token, replayed, opens nothing.
    assert status(f"channel=a&token={short}") == (401, "Token refused: expired.\n")

    for_a = token_from(server, ["a"])
    assert status(f"channel=a&channel=b&token={for_a}") == (
        403,
        "The token does not grant channel 'b'.\n",
    )
    # The control: the app's key and salt, signed by hand, let the stream in.
    ours = forged(["a"], key="tokens-app-secret", salt="flask-sse-keepalive.token")
    assert RawStream(server.port, f"/stream?channel=a&token={ours}").status == 200
    other_key = forged(["a"], key="another-key", salt="flask-sse-keepalive.token")
    assert status(f"channel=a&token={other_key}") == (401, "Token refused: bad signature.\n")
    other_salt = forged(["a"], key="tokens-app-secret", salt="another-app")
    assert status(f"channel=a&token={other_salt}") == (401, "Token refused: bad signature.\n")
