import httpx

from flask_sse_keepalive.client import SSEClient


def test_headlines_reach_a_python_client(server):
    with SSEClient(f"{server}/stream", channels=["news"]) as client:
        client.wait_subscribed(timeout=10)  # from now on, what is published arrives
        for title in ("Hello", "World"):
            httpx.post(f"{server}/news", json={"title": title})
        first, second = client.receive(timeout=10), client.receive(timeout=10)
    assert first.event == second.event == "headline"
    assert [first.json(), second.json()] == [{"title": "Hello"}, {"title": "World"}]
    assert second.id == client.last_event_id  # where a new client would resume
