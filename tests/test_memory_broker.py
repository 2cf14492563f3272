"""The memory broker: ids, history, resume over several channels, resets."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from flask_sse_keepalive import Event
from flask_sse_keepalive.brokers.base import Message, parse_id
from flask_sse_keepalive.brokers.memory import MemoryBroker


@dataclass(eq=False)
class Collector:
    channels: tuple[str, ...]
    messages: list[Message] = field(default_factory=list)
    resets: list[tuple[str, str, int]] = field(default_factory=list)
    #: how many messages it had each time the broker said it was ready
    ready_at: list[int] = field(default_factory=list)
    #: the size of each batch it took at once
    batches: list[int] = field(default_factory=list)

    def deliver(self, message: Message) -> None:
        self.messages.append(message)

    def reset(self, reason: str, position: str, seq: int) -> None:
        self.resets.append((reason, position, seq))

    def deliver_batch(self, messages: list[Message], payload: bytes) -> None:
        assert payload == b"".join(m.payload for m in messages)
        self.batches.append(len(messages))
        for message in messages:
            self.deliver(message)

    def replay(self, messages: list[Message]) -> None:
        for message in messages:
            self.deliver(message)

    def ready(self) -> None:
        self.ready_at.append(len(self.messages))

    @property
    def data(self) -> list[str]:
        return [m.payload.decode().split("data: ")[1].split("\n")[0] for m in self.messages]


def publish(broker: MemoryBroker, channel: str, data: str) -> Message:
    return broker.publish(channel, Event(data=data))


def test_ids_increase_across_channels_and_carry_the_epoch() -> None:
    broker = MemoryBroker()
    ids = [publish(broker, ch, "x").id for ch in ("a", "b", "a")]
    parsed = [parse_id(i) for i in ids]
    assert [p[0] for p in parsed] == [broker.epoch] * 3
    assert [p[1] for p in parsed] == [1, 2, 3]
    assert MemoryBroker().epoch != broker.epoch


def test_payload_is_encoded_once_with_its_id() -> None:
    broker = MemoryBroker()
    live = Collector(("a",))
    other = Collector(("a",))
    broker.attach(live, None)
    broker.attach(other, None)
    published = broker.publish("a", Event(data="hi", event="t"))
    assert live.messages[0].payload == f"event: t\ndata: hi\nid: {published.id}\n\n".encode()
    assert live.messages[0].payload is other.messages[0].payload


def test_resume_over_two_channels_replays_in_id_order_then_goes_live() -> None:
    broker = MemoryBroker()
    first = publish(broker, "a", "a1")
    publish(broker, "b", "b1")
    publish(broker, "c", "c1")  # not subscribed
    publish(broker, "a", "a2")
    client = Collector(("a", "b"))
    broker.attach(client, first.id)
    assert client.data == ["b1", "a2"]
    assert client.ready_at == [2], "ready once, after the replay"
    publish(broker, "b", "b2")
    assert client.data == ["b1", "a2", "b2"]
    assert client.resets == []


def test_resume_from_the_latest_id_replays_nothing() -> None:
    broker = MemoryBroker()
    last = publish(broker, "a", "a1")
    client = Collector(("a",))
    broker.attach(client, last.id)
    assert client.messages == [] and client.resets == []


@pytest.mark.parametrize(
    ("make_id", "reason"),
    [
        (lambda b: "other-5", "unknown-epoch"),
        (lambda b: "garbage", "unknown-id"),
        (lambda b: f"{b.epoch}-999", "ahead"),
    ],
)
def test_ids_that_cannot_be_resumed_reset(make_id, reason: str) -> None:
    broker = MemoryBroker()
    publish(broker, "a", "a1")
    client = Collector(("a",))
    broker.attach(client, make_id(broker))
    assert client.resets == [(reason, f"{broker.epoch}-1", 1)]
    assert client.messages == []
    assert client.ready_at == [0]


def test_an_evicted_position_resets_but_one_inside_history_does_not() -> None:
    broker = MemoryBroker(history_size=3)
    ids = [publish(broker, "a", f"a{n}").id for n in range(1, 6)]  # keeps a3..a5
    evicted = Collector(("a",))
    broker.attach(evicted, ids[0])  # a2 is gone
    assert [r[0] for r in evicted.resets] == ["evicted"]
    kept = Collector(("a",))
    broker.attach(kept, ids[1])  # needs a3.. which are all kept
    assert kept.data == ["a3", "a4", "a5"] and kept.resets == []


def test_eviction_on_one_channel_does_not_reset_a_quiet_one() -> None:
    broker = MemoryBroker(history_size=2)
    quiet = publish(broker, "quiet", "q1")
    for n in range(5):
        publish(broker, "busy", f"b{n}")
    client = Collector(("quiet",))
    broker.attach(client, quiet.id)
    assert client.resets == [] and client.messages == []


def test_detach_stops_delivery_and_forgets_empty_channels() -> None:
    broker = MemoryBroker()
    client = Collector(("a", "b"))
    broker.attach(client, None)
    assert broker.subscriber_counts() == {"a": 1, "b": 1}
    broker.detach(client)
    broker.detach(client)  # idempotent
    publish(broker, "a", "x")
    assert client.messages == []
    assert broker.subscriber_counts() == {}


def test_a_subscriber_detaching_during_fan_out_does_not_disturb_others() -> None:
    broker = MemoryBroker()
    received: list[str] = []

    class Leaver(Collector):
        def deliver(self, message: Message) -> None:
            broker.detach(self)
            received.append("leaver")

    broker.attach(Leaver(("a",)), None)
    stayer = Collector(("a",))
    broker.attach(stayer, None)
    publish(broker, "a", "x")
    publish(broker, "a", "y")
    assert received == ["leaver"] and stayer.data == ["x", "y"]


def test_history_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="SSE_HISTORY_SIZE"):
        MemoryBroker(history_size=0)
