import pytest
from app import app


@pytest.fixture
def client():
    app.testing = True  # streams work in the test client, without gevent
    return app.test_client()


def test_headline_reaches_the_stream(client):
    response = client.get("/stream?channel=news", buffered=False)
    chunks = iter(response.response)
    seen = b""
    while b": sse-keepalive subscribed\n" not in seen:  # what is published now arrives
        seen += next(chunks)
    assert seen.startswith(b"retry: 3000\n")
    client.post("/news", json={"title": "Hello"})
    assert b'data: {"title":"Hello"}\n' in next(chunks)
    response.close()  # the client goes away: the stream's cleanup runs
