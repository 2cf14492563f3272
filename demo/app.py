"""A live board: a price ticker, a chat room and a connection panel.

Run it::

    pip install -e .
    gunicorn -k gevent -b 127.0.0.1:8000 demo.app:app

Several workers share one event bus through Redis::

    SSE_BROKER_URL=redis://localhost:6379/0 gunicorn -k gevent -w 4 -b 127.0.0.1:8000 demo.app:app

Settings come from environment variables: every ``SSE_*`` key of the
extension (``SSE_BROKER_URL``, ``SSE_HEARTBEAT_INTERVAL``, ``SSE_RETRY_MS``,
...), plus ``DEMO_TICK_SECONDS`` (time between ticks, default ``1``) and
``DEMO_TICKER`` (``0`` turns the ticker off).

The ticker is a background thread (a greenlet under gevent) started by the
first request a process serves, never at import, so it lives in the gunicorn
worker and not in the master. With Redis and several workers, every worker
starts one, but only the holder of a short Redis lock publishes: the lock
expires a few ticks after its holder dies, and another worker takes over.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, jsonify, render_template, request

from flask_sse_keepalive import SSE

#: Channels of the board; the page subscribes to both on one stream.
TICKER_CHANNEL = "ticker"
CHAT_CHANNEL = "chat"
#: Chat messages kept for a page that opens (or resets) to start from.
CHAT_KEPT = 50
NAME_MAX = 32
TEXT_MAX = 500

SYMBOLS = {"ACME": 101.0, "GLOBEX": 47.5, "INITECH": 12.25, "UMBRELLA": 230.0}

sse = SSE()


def _env_config() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key.startswith(("SSE_", "DEMO_"))}


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The demo app, configured from the environment, then from ``config``."""
    app = Flask(__name__)
    app.config.update(DEMO_TICK_SECONDS="1", DEMO_TICKER="1")
    app.config.update(_env_config())
    app.config.update(config or {})
    sse.init_app(app)
    store = ChatStore.for_app(app)
    ticker = Ticker(app)
    atexit.register(ticker.stop)
    app.extensions["demo"] = {"chat": store, "ticker": ticker}

    @app.before_request
    def start_ticker() -> None:
        # Lazily, so that it runs in the process that serves (a gunicorn
        # worker), not in one that only imports the app.
        if _flag(app.config["DEMO_TICKER"]):
            ticker.start()

    @app.get("/")
    def index() -> str:
        return render_template(
            "index.html",
            channels=[TICKER_CHANNEL, CHAT_CHANNEL],
            broker=_broker_kind(app.config["SSE_BROKER_URL"]),
            heartbeat=app.config["SSE_HEARTBEAT_INTERVAL"],
            pid=os.getpid(),
        )

    @app.get("/chat")
    def recent_chat() -> Response:
        return jsonify(messages=store.recent())

    @app.post("/chat")
    def post_chat() -> tuple[Response, int]:
        body = request.get_json(silent=True) or request.form
        name = str(body.get("name", "")).strip()[:NAME_MAX] or "anonymous"
        text = str(body.get("text", "")).strip()
        if not text:
            return jsonify(error="say something"), 400
        if len(text) > TEXT_MAX:
            return jsonify(error=f"at most {TEXT_MAX} characters"), 400
        message = {"name": name, "text": text, "time": time.time()}
        message["id"] = sse.publish(message, event="chat", channel=CHAT_CHANNEL)
        store.add(message)
        return jsonify(message), 201

    @app.get("/health")
    def health() -> Response:
        return jsonify(pid=os.getpid(), broker=_broker_kind(app.config["SSE_BROKER_URL"]))

    return app


def _flag(value: Any) -> bool:
    return str(value).strip().lower() not in ("0", "false", "no", "off", "")


def _broker_kind(url: str) -> str:
    return url.split(":", 1)[0]


def _redis(app: Flask) -> Any | None:
    """A Redis client when the broker is Redis (the demo keeps its own state
    there too), else ``None``."""
    url = app.config["SSE_BROKER_URL"]
    if not url.startswith(("redis:", "rediss:", "unix:")):
        return None
    import redis

    return redis.Redis.from_url(url)


class ChatStore:
    """The last :data:`CHAT_KEPT` messages: in memory, or in a Redis list
    shared by every worker when the broker is Redis."""

    def __init__(self, client: Any | None, key: str = "demo:chat") -> None:
        self._client = client
        self._key = key
        self._memory: deque[dict[str, Any]] = deque(maxlen=CHAT_KEPT)

    @classmethod
    def for_app(cls, app: Flask) -> ChatStore:
        return cls(_redis(app))

    def add(self, message: dict[str, Any]) -> None:
        if self._client is None:
            self._memory.append(message)
            return
        pipe = self._client.pipeline()
        pipe.rpush(self._key, json.dumps(message))
        pipe.ltrim(self._key, -CHAT_KEPT, -1)
        pipe.execute()

    def recent(self) -> list[dict[str, Any]]:
        if self._client is None:
            return list(self._memory)
        return [json.loads(item) for item in self._client.lrange(self._key, 0, -1)]


# Extend the lock only if we still hold it (a plain SET would steal it back).
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class Ticker:
    """Publishes a random walk of a few prices every ``DEMO_TICK_SECONDS``.

    One per process, started on the first request. With the Redis broker only
    the holder of the ``demo:ticker-lock`` key publishes; the lock lasts three
    ticks and is renewed on each, so a dead holder is replaced within about
    three ticks. The prices live in Redis too, so the next holder continues the
    walk instead of starting over.
    """

    def __init__(self, app: Flask) -> None:
        self._app = app
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._token = secrets.token_hex(8)
        self._prices = dict(SYMBOLS)
        self._count = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                # Under gunicorn -k gevent the threading module is patched, so
                # this is a greenlet; under `flask run` it is a thread.
                self._thread = threading.Thread(target=self._run, name="demo-ticker", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        interval = float(self._app.config["DEMO_TICK_SECONDS"])
        client = _redis(self._app)
        with self._app.app_context():
            while not self._stop.wait(interval):
                try:
                    if client is None or self._hold_lock(client, interval):
                        self._tick(client)
                except Exception:
                    # A Redis outage or a publish failure: log it, try again next tick.
                    current_app.logger.exception("demo ticker: tick failed")

    def _hold_lock(self, client: Any, interval: float) -> bool:
        ttl_ms = int(interval * 3000)
        if client.set("demo:ticker-lock", self._token, nx=True, px=ttl_ms):
            stored = client.hgetall("demo:prices")
            if stored:
                self._prices = {k.decode(): float(v) for k, v in stored.items()}
            return True
        return bool(client.eval(_RENEW, 1, "demo:ticker-lock", self._token, ttl_ms))

    def _tick(self, client: Any | None) -> None:
        self._count += 1
        quotes = []
        for symbol, price in self._prices.items():
            new = max(0.01, round(price * (1 + random.gauss(0, 0.004)), 2))
            quotes.append({"symbol": symbol, "price": new, "change": round(new - price, 2)})
            self._prices[symbol] = new
        if client is not None:
            client.hset("demo:prices", mapping=self._prices)
        sse.publish({"quotes": quotes, "time": time.time()}, event="tick", channel=TICKER_CHANNEL)


app = create_app()
