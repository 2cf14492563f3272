"""The Sentinel URL's options, against real processes (a primary, a replica
and three Sentinels): ``?password=`` for the Redis servers and
``?sentinel_password=`` for the Sentinels. Each publishes, streams and
resumes under ``gunicorn -k gevent``; each has its control: a wrong
password is refused, and the error says so."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from flask_sse_keepalive import BrokerUnavailable
from flask_sse_keepalive.brokers.redis import RedisBroker
from flask_sse_keepalive.event import Event
from tests.conftest import Server

from .conftest import APP, app_env, publish_stream_resume
from .ha import SentinelSetup
from .tls import Certificates

REDIS_PASSWORD = "redis-secret"
SENTINEL_PASSWORD = "sentinel-secret"


@pytest.fixture
def secured(sentinels: Callable[..., SentinelSetup]) -> SentinelSetup:
    """Redis servers and Sentinels that each require their own password."""
    return sentinels(password=REDIS_PASSWORD, sentinel_password=SENTINEL_PASSWORD)


def with_query(setup: SentinelSetup, password: str, sentinel_password: str) -> str:
    return f"{setup.url}?password={password}&sentinel_password={sentinel_password}"


def test_password_and_sentinel_password(
    secured: SentinelSetup, gunicorn: Callable[..., Server]
) -> None:
    url = with_query(secured, REDIS_PASSWORD, SENTINEL_PASSWORD)
    publish_stream_resume(gunicorn(APP, env=app_env(url)))

    # The controls, on the same servers: each password is checked where it goes.
    for url, refusal in [
        (with_query(secured, "wrong", SENTINEL_PASSWORD), "invalid username-password pair"),
        (f"{secured.url}?sentinel_password={SENTINEL_PASSWORD}", "Authentication required"),
        (with_query(secured, REDIS_PASSWORD, "wrong"), "AuthenticationError: invalid username"),
        (f"{secured.url}?password={REDIS_PASSWORD}", "AuthenticationError: .*authenticated"),
    ]:
        broker = RedisBroker(url)
        try:
            with pytest.raises(BrokerUnavailable, match=refusal) as refused:
                broker.publish("a", Event(data="never stored"))
            # A few words per Sentinel, not three clients' descriptions.
            assert len(str(refused.value)) < 1000, refused.value
        finally:
            broker.close()


def test_rediss_sentinel_with_the_ca_in_the_url(
    sentinels: Callable[..., SentinelSetup],
    certificates: Certificates,
    gunicorn: Callable[..., Server],
) -> None:
    # Redis servers and Sentinels that speak TLS only: the Sentinels are
    # asked over TLS, and so is the primary they name.
    setup = sentinels(tls=certificates)
    assert setup.url.startswith("rediss+sentinel://")
    publish_stream_resume(gunicorn(APP, env=app_env(f"{setup.url}?ssl_ca_certs={certificates.ca}")))

    # The controls: a CA that did not sign the certificates, and no TLS at
    # all, are refused by the same servers.
    plain = setup.url.replace("rediss+sentinel://", "redis+sentinel://", 1)
    for url, refusal in [
        (f"{setup.url}?ssl_ca_certs={certificates.other_ca}", "certificate verify failed"),
        (plain, "Connection reset by peer"),
    ]:
        broker = RedisBroker(url)
        try:
            with pytest.raises(BrokerUnavailable, match=refusal) as refused:
                broker.publish("a", Event(data="never stored"))
            assert "Sentinel" in str(refused.value), refused.value
        finally:
            broker.close()
