"""The extension's Python API: set-up, config validation, publish, signals, relay."""

from __future__ import annotations

import json

import pytest
from blinker import Namespace
from flask import Flask

from flask_sse_keepalive import SSE, Event, signals
from tests.test_memory_broker import Collector


def make_app(**config: object) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    return app


def listen(app: Flask, sse: SSE, *channels: str) -> Collector:
    """A subscriber on the app's broker, to see what was published."""
    collector = Collector(channels)
    sse.state(app).broker.attach(collector, None)
    return collector


def test_init_app_later_and_twice() -> None:
    sse = SSE()
    app = make_app(SSE_URL_PREFIX="/events")
    sse.init_app(app)
    assert app.extensions["sse"] is sse
    rules = {r.rule for r in app.url_map.iter_rules()}
    assert rules >= {"/events", "/events/static/<path:filename>"}
    assert app.config["SSE_HEARTBEAT_INTERVAL"] == 15.0
    with pytest.raises(RuntimeError, match="already set up"):
        sse.init_app(app)
    with pytest.raises(RuntimeError, match="already set up"):
        SSE(app)


def test_one_extension_serves_two_apps_with_separate_buses() -> None:
    sse = SSE()
    first, second = make_app(), make_app()
    sse.init_app(first)
    sse.init_app(second)
    one = listen(first, sse, "a")
    two = listen(second, sse, "a")
    with first.app_context():
        sse.publish("to the first", channel="a")
    assert len(one.messages) == 1 and two.messages == []


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("SSE_HEARTBEAT_INTERVAL", "soon", "must be a number"),
        ("SSE_HEARTBEAT_INTERVAL", 0, "at least"),
        ("SSE_HISTORY_SIZE", 0, "at least"),
        ("SSE_QUEUE_SIZE", True, "must be a number"),
        ("SSE_MAX_CONNECTIONS", -1, "at least"),
        ("SSE_REPORT_INTERVAL", 0, "at least"),
        ("SSE_REPORT_INTERVAL", "often", "must be a number"),
    ],
)
def test_invalid_settings_fail_at_init_app(key: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"{key}.*{message}"):
        SSE(make_app(**{key: value}))


def test_an_unknown_broker_scheme_fails_at_init_app() -> None:
    with pytest.raises(ValueError, match="unknown scheme 'kafka'"):
        SSE(make_app(SSE_BROKER_URL="kafka://x"))


def test_settings_from_environment_strings() -> None:
    app = make_app(SSE_HEARTBEAT_INTERVAL="0.5", SSE_MAX_CONNECTIONS="10")
    sse = SSE(app)
    settings = sse.state(app).settings
    assert settings.heartbeat_interval == 0.5 and settings.max_connections == 10


def test_publish_needs_an_app_context_and_init_app() -> None:
    sse = SSE(make_app())
    with pytest.raises(RuntimeError, match="application context"):
        sse.publish("x")
    other = make_app()
    with other.app_context(), pytest.raises(RuntimeError, match="did you forget init_app"):
        sse.publish("x")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"channel": "no spaces"}, "invalid channel name"),
        ({"channel": ""}, "invalid channel name"),
        ({"event": "two\nlines"}, "must not contain"),
        ({"retry": -5}, "retry"),
    ],
)
def test_publish_refuses_bad_arguments(kwargs: dict, error: str) -> None:
    app = make_app()
    sse = SSE(app)
    with app.app_context(), pytest.raises(ValueError, match=error):
        sse.publish("x", **kwargs)


def test_publish_returns_the_id_and_sends_event_published() -> None:
    app = make_app()
    sse = SSE(app)
    seen: list[tuple[Event, str]] = []

    @signals.event_published.connect_via(app)
    def receiver(sender, event, channel):
        seen.append((event, channel))

    try:
        collector = listen(app, sse, "prices")
        with app.app_context():
            event_id = sse.publish({"p": 1}, event="tick", channel="prices", retry=100)
            null_id = sse.publish(None, channel="prices")
        assert seen[0] == (
            Event(data='{"p":1}', event="tick", id=event_id, retry=100),
            "prices",
        )
        assert collector.messages[0].id == event_id
        assert b"data: null\n" in collector.messages[1].payload and null_id != event_id
    finally:
        signals.event_published.disconnect(receiver, sender=app)


def test_relay_publishes_what_an_app_signal_sends() -> None:
    app = make_app()
    sse = SSE(app)
    ours = Namespace().signal("order-placed")
    collector = listen(app, sse, "orders", "audit")
    default = sse.relay(ours, channel="orders", event="order")
    custom = sse.relay(
        ours, channel="audit", data=lambda sender, **kw: f"{sender}:{kw['order_id']}", sender="shop"
    )
    with app.app_context():
        ours.send("shop", order_id=7)
        ours.send("elsewhere", order_id=8)  # only the default relay takes it
    payloads = [m.payload.decode() for m in collector.messages]
    assert json.loads(payloads[0].split("data: ")[1].split("\n")[0]) == {"order_id": 7}
    assert "event: order\n" in payloads[0]
    assert "data: shop:7\n" in payloads[1]
    assert len(payloads) == 3
    ours.disconnect(default)
    ours.disconnect(custom)
    with app.app_context():
        ours.send("shop", order_id=9)
    assert len(collector.messages) == 3
    with pytest.raises(ValueError, match="invalid channel name"):
        sse.relay(ours, channel="bad name")


def test_stats_shape() -> None:
    app = make_app()
    sse = SSE(app)
    with app.app_context():
        sse.publish("x", channel="a")
        figures = sse.stats()
    assert figures["published"] == 1 and figures["connections"] == 0
    assert set(figures) >= {
        "pid", "connections", "channels", "published", "delivered", "heartbeats",
        "resets", "slow", "refused", "connects", "disconnects", "shutting_down",
        "id", "host", "app", "time", "uptime",
    }  # fmt: skip


def test_the_generator_of_sse_stream_sees_request_session_and_g() -> None:
    from flask import g, request, session

    from flask_sse_keepalive import sse_stream

    app = make_app(SECRET_KEY="test")
    app.testing = True  # streams in the test client, in development mode
    SSE(app)

    @app.get("/who")
    @sse_stream
    def who():
        g.user = request.args["user"]  # before the first yield: in the view
        session["seen"] = True
        yield "start"
        yield {"g": g.get("user"), "arg": request.args["user"], "session": session.get("seen")}

    response = app.test_client().get("/who?user=ada", buffered=False)
    body = b"".join(response.response)
    response.close()
    assert b"data: start\n" in body
    assert b'data: {"g":"ada","arg":"ada","session":true}\n' in body


def test_a_state_does_not_keep_its_app_alive() -> None:
    import gc
    import weakref

    sse = SSE()
    app = make_app()
    sse.init_app(app)
    state = sse.state(app)
    gone = weakref.ref(app)
    del app
    gc.collect()
    assert gone() is None, "the extension or its state holds the app"
    with pytest.raises(RuntimeError, match="no longer exists"):
        state.app  # noqa: B018


def test_cors_wildcard_with_credentials_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="flask_sse_keepalive"):
        SSE(make_app(SSE_CORS_ORIGINS="https://a.example", SSE_CORS_CREDENTIALS=True))
        assert caplog.records == []
        SSE(make_app(SSE_CORS_ORIGINS="*", SSE_CORS_CREDENTIALS=True))
    (record,) = caplog.records
    assert record.getMessage().startswith(
        "tests.test_extension: SSE_CORS_ORIGINS='*' with SSE_CORS_CREDENTIALS lets every site"
    )
