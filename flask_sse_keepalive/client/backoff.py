"""When to reconnect: exponential backoff with full jitter, and ``Retry-After``.

Pure: the random source is a parameter, the clock is the caller's.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import dataclass

#: The backoff never starts from less than this (seconds): a server that
#: sends ``retry: 0`` and crash-loops must not be hammered.
MIN_BASE = 0.1
#: A stream open at least this long (and at least the base delay) proves the
#: server healthy: the next reconnection starts the backoff over.
HEALTHY_AFTER = 1.0
#: A ``Retry-After`` wait is stretched by up to this fraction, so that the
#: clients a server turned away together do not all come back together.
RETRY_AFTER_SPREAD = 0.2

_RANDOM = random.Random()


@dataclass(frozen=True)
class Backoff:
    """How long a client waits before reconnecting, and when it gives up.

    The *n*-th reconnection in a row waits a random time between 0 and
    ``min(maximum, base * 2 ** (n - 1))`` ("full jitter"), where ``base`` is
    the stream's reconnection time: the server's ``retry:`` value once it has
    sent one (a flask-sse-keepalive server sends ``SSE_RETRY_MS`` first
    thing, and a jittered one when it shuts down), ``initial`` until then,
    and never less than 0.1 s. A stream that stayed open for at least
    ``max(1 s, base)`` proves the server healthy, and the count starts over.
    A ``503`` or ``429`` with ``Retry-After`` waits that long, plus up to 20 %.

    :param initial: the base in seconds until the server sends ``retry:``.
    :param maximum: the longest wait in seconds (``Retry-After`` excepted).
    :param max_attempts: give up (:class:`StreamUnavailable`) rather than make
        more than this many attempts in a row without a healthy stream;
        ``0`` never reconnects; ``None`` (the default) never gives up.
    :param give_up_after: give up rather than go on reconnecting for longer
        than this many seconds since the stream was lost; ``None`` (the
        default) never gives up.
    """

    initial: float = 3.0
    maximum: float = 30.0
    max_attempts: int | None = None
    give_up_after: float | None = None

    def __post_init__(self) -> None:
        for name in ("initial", "maximum", "give_up_after"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and value >= 0):
                raise ValueError(f"Backoff {name} must be a non-negative number, got {value!r}")
        if self.max_attempts is not None and not (
            isinstance(self.max_attempts, int) and self.max_attempts >= 0
        ):
            raise ValueError(f"Backoff max_attempts must be an int >= 0, got {self.max_attempts!r}")

    def ceiling(self, base: float, attempt: int) -> float:
        """The longest wait before attempt number ``attempt`` (1, 2, ...) in a row."""
        exponent = min(max(attempt - 1, 0), 32)  # 2 ** 32 times any base exceeds any maximum
        return min(self.maximum, max(base, MIN_BASE) * 2.0**exponent)

    def delay(
        self,
        base: float,
        attempt: int,
        retry_after: float | None = None,
        rng: random.Random = _RANDOM,
    ) -> float:
        """A wait in seconds before attempt number ``attempt`` in a row."""
        if retry_after is not None:
            return retry_after * rng.uniform(1.0, 1.0 + RETRY_AFTER_SPREAD)
        return rng.uniform(0.0, self.ceiling(base, attempt))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date.

    :param now: the current time (``time.time()``) for a date.
    :returns: ``None`` when the header is missing or malformed.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # an HTTP date is always GMT; a naive one is not an HTTP date
    seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None
