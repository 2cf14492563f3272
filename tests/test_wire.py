"""The test client itself: how :class:`~tests.wire.RawStream` tells a complete
response from a truncated or reset one, and what :class:`~tests.wire.ChunkedBody`
refuses. A scripted server on a loopback port sends the bytes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from tests.wire import ChunkedBody, FramingError, RawStream

CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
PLAIN_HEAD = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class ScriptedServer:
    """Accepts one connection, reads the request head, sends ``response``;
    then, once :meth:`finish` is called (or at once if ``wait`` is false),
    ends the connection with a FIN (``"close"``), an RST (``"reset"``), or
    not at all (``"hold"``, until the test ends)."""

    def __init__(self, response: bytes, end: str, wait: bool) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.response = response
        self.end = end
        self.go = threading.Event()
        if not wait:
            self.go.set()
        self.stopped = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.go.set()

    def _run(self) -> None:
        try:
            self.listener.settimeout(10)
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(10)
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(4096)
                    if not data:
                        return
                    request += data
                conn.sendall(self.response)
                if not self.go.wait(10):
                    raise TimeoutError("the test did not let the server end the connection")
                if self.end == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                elif self.end == "hold":
                    self.stopped.wait(10)
        except BaseException as exc:
            self.failure = exc
        finally:
            self.listener.close()

    def stop(self) -> None:
        self.go.set()
        self.stopped.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the scripted server did not stop"
        if self.failure is not None:
            raise self.failure


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    """``scripted(response, end="close", wait=False)``: a :class:`ScriptedServer`."""
    servers: list[ScriptedServer] = []

    def start(response: bytes, end: str = "close", *, wait: bool = False) -> ScriptedServer:
        servers.append(ScriptedServer(response, end, wait))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


# -- how a response ends ------------------------------------------------------------


def test_the_last_chunk_completes_a_response_while_the_connection_stays_open(scripted) -> None:
    body = chunk(b"data: one\n\n") + chunk(b": bye\n\n") + b"0\r\n\r\n"
    server = scripted(CHUNKED_HEAD + body, "hold")
    stream = RawStream(server.port)
    stream.read_to_end(5)  # does not wait for the FIN that never comes
    assert stream.end == "complete"
    assert stream.data() == ["one"]
    assert stream.parser.comments == ["bye"]


def test_a_chunked_body_cut_by_a_fin_is_truncated(scripted) -> None:
    server = scripted(CHUNKED_HEAD + chunk(b"data: one\n\n"))
    stream = RawStream(server.port)
    assert stream.read_until_end(5) == "truncated"
    assert stream.data() == ["one"]
    with pytest.raises(AssertionError, match="ended truncated, not complete"):
        RawStream(scripted(CHUNKED_HEAD + chunk(b"data: one\n\n")).port).read_to_end(5)


def test_a_fin_inside_a_chunk_is_truncated(scripted) -> None:
    server = scripted(CHUNKED_HEAD + b"20\r\ndata: cut sho")
    stream = RawStream(server.port)
    assert stream.read_until_end(5) == "truncated"
    assert stream.wire == b""


def test_a_fin_before_the_trailer_ends_is_truncated(scripted) -> None:
    server = scripted(CHUNKED_HEAD + chunk(b"data: one\n\n") + b"0\r\n")
    assert RawStream(server.port).read_until_end(5) == "truncated"


def test_a_reset_is_not_an_end(scripted) -> None:
    server = scripted(CHUNKED_HEAD + chunk(b"data: one\n\n"), "reset", wait=True)
    stream = RawStream(server.port)
    stream.wait_for(lambda s: s.events, 5, "the event")
    server.finish()
    with pytest.raises(AssertionError, match=r"the response ended \(reset\) while waiting"):
        stream.wait_for(lambda s: len(s.events) == 2, 5, "a second event")
    assert stream.end == "reset"


def test_read_to_end_fails_on_a_reset(scripted) -> None:
    # Even an unchunked body, which a FIN completes, is not complete when reset.
    server = scripted(PLAIN_HEAD + b"data: one\n\n", "reset", wait=True)
    stream = RawStream(server.port, http10=True)
    stream.wait_for(lambda s: s.events, 5, "the event")
    server.finish()
    with pytest.raises(AssertionError, match="ended reset, not complete"):
        stream.read_to_end(5)


def test_an_unchunked_body_is_complete_at_the_fin(scripted) -> None:
    server = scripted(PLAIN_HEAD + b"data: one\n\n: shutdown\n\n")
    stream = RawStream(server.port, http10=True)
    stream.read_to_end(5)
    assert (stream.data(), stream.parser.comments) == (["one"], ["shutdown"])


def test_a_content_length_body(scripted) -> None:
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 12\r\n\r\n"
    whole = RawStream(scripted(head + b"no room now\n", "hold").port)
    whole.read_to_end(5)
    assert (whole.status, whole.wire) == (503, b"no room now\n")
    short = RawStream(scripted(head + b"no room").port)
    assert short.read_until_end(5) == "truncated"


# -- framing errors over a socket ---------------------------------------------------


def test_a_missing_crlf_after_a_chunk_fails_the_read(scripted) -> None:
    server = scripted(CHUNKED_HEAD + b"b\r\ndata: one\n\nb\r\ndata: two\n\n\r\n", "hold")
    with pytest.raises(FramingError, match="no CRLF after a chunk of 11 bytes"):
        RawStream(server.port).wait_for(lambda s: len(s.events) == 2, 5, "two events")


def test_a_bad_size_line_fails_the_read(scripted) -> None:
    server = scripted(CHUNKED_HEAD + b"zz\r\ndata: one\n\n\r\n", "hold")
    with pytest.raises(FramingError, match="bad chunk-size line"):
        RawStream(server.port).read_until_end(5)


# -- the chunked decoder --------------------------------------------------------------

GOOD = b"b\r\ndata: one\n\n\r\n" + b"B;name=value\r\ndata: two\n\n\r\n" + b"0\r\nX-T: 1\r\n\r\n"


@pytest.mark.parametrize("piece", [1, 2, 7, len(GOOD)])
def test_chunks_fed_in_pieces_of_any_size(piece: int) -> None:
    body = ChunkedBody()
    chunks = []
    for start in range(0, len(GOOD), piece):
        assert not body.ended
        chunks += body.feed(GOOD[start : start + piece])
    assert chunks == [b"data: one\n\n", b"data: two\n\n"]
    assert body.ended


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"b\r\ndata: one\n\nXY", "no CRLF after a chunk"),
        (b"b\r\ndata: one\n\n\n", "no CRLF after a chunk"),
        (b"b\r\ndata: one\n\n\rX", "no CRLF after a chunk"),
        (b"zz\r\n", "bad chunk-size line"),
        (b"0x5\r\n", "bad chunk-size line"),
        (b"+5\r\n", "bad chunk-size line"),
        (b"-1\r\n", "bad chunk-size line"),
        (b" 5\r\n", "bad chunk-size line"),
        (b"5 \r\n", "bad chunk-size line"),
        (b"\r\n", "bad chunk-size line"),
        (b"5\nhello\r\n", "LF without CR"),
        (b"5\rhello\r\n", "bad chunk-size line"),
        (b"1" * 2000, "bad chunk-size line"),
        (b"5;" + b"x" * 2000, "no CRLF within"),
        (b"0\r\n\r\nextra", "bytes after the last chunk"),
    ],
)
def test_the_decoder_refuses_broken_framing(data: bytes, message: str) -> None:
    with pytest.raises(FramingError, match=message):
        ChunkedBody().feed(data)
    body = ChunkedBody()
    with pytest.raises(FramingError, match=message):
        for byte in range(len(data)):  # at the first wrong byte, not later
            body.feed(data[byte : byte + 1])


def test_bytes_after_the_end_are_refused_in_a_later_read() -> None:
    body = ChunkedBody()
    assert body.feed(b"0\r\n\r\n") == []
    assert body.ended
    with pytest.raises(FramingError, match="bytes after the last chunk"):
        body.feed(b"x")
