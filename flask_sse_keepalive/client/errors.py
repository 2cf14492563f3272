"""Why a client stops for good: the server said no, or reconnecting ran out."""

from __future__ import annotations


class StreamError(Exception):
    """Base class of the client's errors: iteration stops and will not resume."""


class StreamRefused(StreamError):
    """The server refused the stream with a status that retrying will not change.

    Raised on ``400``, ``401``, ``403``, ``404`` and every other status that
    is neither ``200`` nor a "try later" (``5xx``, ``408``, ``425``, ``429``),
    and on a ``200`` that is not ``text/event-stream``. The client does not
    retry.

    :ivar status: the HTTP status.
    :ivar reason: the server's plain-text reason (its body, at most 500
        characters), e.g. ``invalid channel name 'a b': use 1-128 characters
        from A-Z a-z 0-9 _ - . : @``.
    :ivar url: the URL that was requested, with the value of its ``token``
        parameter replaced by ``redacted`` (as in ``str(error)``, and the
        ``reason``, should the server echo the token): an exception's text
        ends up in logs and error trackers.
    """

    def __init__(self, status: int, reason: str, url: str) -> None:
        super().__init__(status, reason, url)
        self.status = status
        self.reason = reason
        self.url = url

    def __str__(self) -> str:
        said = f": {self.reason}" if self.reason else ""
        return f"{self.status} from {self.url}{said}"


class StreamUnavailable(StreamError):
    """Reconnecting gave up: :class:`Backoff` ``max_attempts`` or
    ``give_up_after`` was reached. The last failure is the ``__cause__``.

    :ivar attempts: failed attempts in a row, the last one included.
    :ivar elapsed: seconds since the stream was lost (the first failure after
        the last healthy stream).
    :ivar reason: why the last attempt failed (a :data:`CloseReason`).
    """

    def __init__(self, attempts: int, elapsed: float, reason: str) -> None:
        super().__init__(attempts, elapsed, reason)
        self.attempts = attempts
        self.elapsed = elapsed
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"gave up after {self.attempts} failed attempts in {self.elapsed:.1f} s "
            f"(last: {self.reason})"
        )
