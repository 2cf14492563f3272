"""Broker-level scenarios, run in a gevent-patched subprocess.

The test process is not patched (pytest runs plain), and the Redis broker
delivers from greenlets, so each scenario runs as
``python -m tests.redis.scenarios NAME REDIS_URL`` and prints one JSON line
with what it observed; ``tests/redis/test_broker.py`` asserts on it.
Subscribers here are plain recorders: they keep every delivery, duplicates
included (a real connection would drop repeats, which would hide them).
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and sys.argv[1:2] != ["publish"]:
    from gevent import monkey

    monkey.patch_all()

import json
import logging
import os
import random
import subprocess
import time
from collections.abc import Callable

import gevent
import gevent.monkey
import redis

from flask_sse_keepalive.brokers.base import BrokerUnavailable, Message, format_id
from flask_sse_keepalive.brokers.redis import RedisBroker
from flask_sse_keepalive.event import Event


class Recorder:
    """A subscriber that keeps everything it is given."""

    def __init__(self, channels: list[str]) -> None:
        self.channels = tuple(channels)
        self.seqs: list[int] = []
        self.messages: list[Message] = []
        self.resets: list[dict] = []
        #: how many events it had each time the broker said it was ready
        self.ready_at: list[int] = []

    def deliver(self, message: Message) -> None:
        self.seqs.append(message.seq)
        self.messages.append(message)

    def reset(self, reason: str, position: str, seq: int) -> None:
        self.resets.append({"reason": reason, "position": position, "after": len(self.seqs)})
        self.seqs.append(-seq)  # a marker in the sequence: "reset to seq"

    def deliver_batch(self, messages: list[Message], payload: bytes) -> None:
        for message in messages:
            self.deliver(message)

    def replay(self, messages: list[Message]) -> None:
        for message in messages:
            self.deliver(message)

    def ready(self) -> None:
        self.ready_at.append(len(self.seqs))


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        gevent.sleep(0.01)


def history(client: redis.Redis, channels: tuple[str, ...]) -> list[int]:
    """Every seq on ``channels`` that Redis keeps, in order."""
    seqs: set[int] = set()
    for channel in channels:
        for entry_id, _ in client.xrange(f"sse:stream:{channel}"):
            seqs.add(int(entry_id.split(b"-")[0]))
    return sorted(seqs)


def current(client: redis.Redis) -> tuple[str, int]:
    return client.get("sse:epoch").decode(), int(client.get("sse:seq") or 0)


# -- scenarios ---------------------------------------------------------------


def seam(url: str) -> dict:
    """Subscribers attach, resume, detach and come back while another process
    publishes as fast as it can: every one must see each event of its channels
    after its resume point exactly once, in order."""
    client = redis.Redis.from_url(url)
    broker = RedisBroker(url, history_size=100_000)
    broker.publish("ch0", Event(data="start"))
    # Many channels, few subscribers each: channels often lose their last
    # local subscriber and are subscribed again, racing the publishes.
    channels = [f"ch{n}" for n in range(8)]
    publisher = subprocess.Popen(
        [sys.executable, "-m", "tests.redis.scenarios", "publish", url, "8000", ",".join(channels)]
    )
    rng = random.Random(7)
    # Each logical subscriber: (channels, resume seq or None, its recorders in turn)
    logical: list[dict] = []
    try:
        while publisher.poll() is None:
            gevent.sleep(rng.uniform(0, 0.01))
            epoch, seq = current(client)
            active = [entry for entry in logical if not entry["left"]]
            if active and rng.random() < 0.15:
                # Leave for good.
                entry = rng.choice(active)
                broker.detach(entry["recorders"][-1])
                entry["left"] = True
                continue
            if active and rng.random() < 0.3:
                # Come back after a disconnect, from the last event received.
                entry = rng.choice(active)
                old = entry["recorders"][-1]
                broker.detach(old)
                broker.detach(old)  # idempotent
                delivered = [s for r in entry["recorders"] for s in r.seqs if s > 0]
                last = delivered[-1] if delivered else entry["after"]
                recorder = Recorder(entry["channels"])
                entry["recorders"].append(recorder)
                broker.attach(recorder, None if last is None else format_id(epoch, last))
                continue
            chosen = rng.sample(channels, rng.randint(1, 2))
            if rng.random() < 0.2:
                after = None
                resume = None
            else:
                after = rng.randint(max(1, seq - 300), seq)
                resume = format_id(epoch, after)
            recorder = Recorder(chosen)
            logical.append(
                {"channels": chosen, "after": after, "recorders": [recorder], "left": False}
            )
            broker.attach(recorder, resume)
        assert publisher.returncode == 0, "the publishing process failed"
        # A stream without an id is live from when the broker has positioned
        # it (it says so: "subscribed"), not from when it attached: wait for
        # each to be positioned before the last events, or one that attached
        # just now would rightly miss them.
        wait_until(
            lambda: all(e["recorders"][-1].ready_at for e in logical if not e["left"]),
            30,
            "every subscriber to be positioned",
        )
        # A last event on every channel, which every subscriber must reach.
        finals = {c: broker.publish(c, Event(data="end")).seq for c in channels}
        final = max(finals.values())

        def caught_up() -> bool:
            return all(
                entry["recorders"][-1].seqs[-1:] == [max(finals[c] for c in entry["channels"])]
                for entry in logical
                if not entry["left"]
            )

        try:
            wait_until(caught_up, 30, "every subscriber to reach the last event of its channels")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}: {stuck(logical, finals, broker)}") from None
    finally:
        if publisher.poll() is None:
            publisher.kill()
            publisher.wait()
    errors = []
    for index, entry in enumerate(logical):
        expected = history(client, tuple(entry["channels"]))
        got = [s for r in entry["recorders"] for s in r.seqs]
        if any(s < 0 for s in got):
            errors.append(f"subscriber {index}: unexpected reset {entry['recorders']}")
            continue
        if entry["after"] is None:
            # Live from wherever it joined: a contiguous tail of the history.
            if got:
                expected = expected[expected.index(got[0]) :]
        else:
            expected = [s for s in expected if s > entry["after"]]
        if entry["left"]:
            expected = expected[: len(got)]
        if got != expected:
            missing = sorted(set(expected) - set(got))[:10]
            dups = len(got) - len(set(got))
            errors.append(
                f"subscriber {index} on {entry['channels']} after {entry['after']}: "
                f"{len(got)} events, {len(expected)} expected, missing {missing}, "
                f"{dups} duplicates, in order: {got == sorted(got)}"
            )
    broker.close()
    return {
        "subscribers": len(logical),
        "reconnects": sum(len(e["recorders"]) - 1 for e in logical),
        "events": final,
        "errors": errors,
    }


def stuck(logical: list[dict], finals: dict[str, int], broker: RedisBroker) -> str:
    """What the subscribers that did not catch up have, for the failure message."""
    lines = []
    for index, entry in enumerate(logical):
        recorder = entry["recorders"][-1]
        want = max(finals[c] for c in entry["channels"])
        if entry["left"] or recorder.seqs[-1:] == [want]:
            continue
        lines.append(
            f"subscriber {index} on {entry['channels']} after {entry['after']}"
            f" (recorder {len(entry['recorders'])}): wants {want}, has {recorder.seqs[-5:]},"
            f" resets {recorder.resets}, positioned with {recorder.ready_at} events"
        )
    lines.append(f"broker: {broker.health()}")
    return "; ".join(lines[-20:])


def publish(url: str, count: str, channels: str) -> dict:
    """A plain (unpatched) process publishing as fast as it can."""
    broker = RedisBroker(url, history_size=100_000)
    names = channels.split(",")
    for n in range(int(count)):
        broker.publish(names[n % len(names)], Event(data=str(n)))
    return {"published": int(count)}


def flush(url: str) -> dict:
    """Redis loses everything while connected: each subscriber is told with a
    ``broker-reset`` (at the first event of the new epoch on its channels),
    never left to a silent gap, and is live again after it."""
    client = redis.Redis.from_url(url)
    broker = RedisBroker(url)
    on_a, on_b = Recorder(["a"]), Recorder(["b"])
    first = broker.publish("a", Event(data="1"))
    broker.attach(on_a, first.id)
    broker.attach(on_b, None)
    wait_until(lambda: bool(on_a.ready_at and on_b.ready_at), 5, "both positioned")
    before = broker.publish("a", Event(data="2"))
    wait_until(lambda: len(on_a.seqs) == 1, 5, "the event before the flush")
    client.flushall()
    new_epoch = broker.publish("a", Event(data="3"))
    wait_until(lambda: bool(on_a.resets), 5, "a's reset")
    live_a = broker.publish("a", Event(data="4"))
    wait_until(lambda: live_a.seq in on_a.seqs, 5, "a's next event")
    broker.publish("b", Event(data="5"))
    wait_until(lambda: bool(on_b.resets), 5, "b's reset")
    live_b = broker.publish("b", Event(data="6"))
    wait_until(lambda: live_b.seq in on_b.seqs, 5, "b's next event")
    broker.close()
    return {
        "old_epoch": before.id.rsplit("-", 1)[0],
        "new_epoch": new_epoch.id.rsplit("-", 1)[0],
        "a": on_a.seqs,
        "a_resets": on_a.resets,
        "b": on_b.seqs,
        "b_resets": on_b.resets,
        "before": before.seq,
        "live_a": live_a.seq,
        "live_b": live_b.seq,
    }


def rollback(url: str) -> dict:
    """Redis comes back behind ids it handed out (as from an old snapshot):
    the broker notices on catch-up and starts a new epoch, so that no id is
    handed out twice; its subscribers get ``broker-reset``."""
    client = redis.Redis.from_url(url)
    broker = RedisBroker(url)
    recorder = Recorder(["a"])
    broker.attach(recorder, None)
    wait_until(lambda: bool(recorder.ready_at), 5, "the subscriber positioned")
    sent = [broker.publish("a", Event(data=str(n))) for n in range(10)]
    wait_until(lambda: recorder.seqs[-1:] == [sent[-1].seq], 5, "the 10 events")
    client.set("sse:seq", sent[4].seq)  # five ids forgotten, as after a crash
    client.client_kill_filter(_type="pubsub")  # and the connection dropped
    wait_until(lambda: bool(recorder.resets), 10, "the reset after reconnecting")
    after = broker.publish("a", Event(data="next"))
    wait_until(lambda: recorder.seqs[-1:] == [after.seq], 5, "the next event")
    broker.close()
    return {
        "old_epoch": sent[0].id.rsplit("-", 1)[0],
        "next_id": after.id,
        "resets": recorder.resets,
        "seqs": recorder.seqs,
    }


def subscriptions(url: str) -> dict:
    """One pub/sub subscription per channel per process, only while it has
    local subscribers; ``detach`` is idempotent."""
    client = redis.Redis.from_url(url)
    broker = RedisBroker(url)

    def numsub() -> dict[str, int]:
        pairs = client.pubsub_numsub("sse:live:x", "sse:live:y")
        return {name.decode().rsplit(":", 1)[1]: count for name, count in pairs}

    many = [Recorder(["x"]) for _ in range(50)]
    both = Recorder(["x", "y"])
    for recorder in [*many, both]:
        broker.attach(recorder, None)
    wait_until(lambda: numsub() == {"x": 1, "y": 1}, 5, "x and y subscribed")
    observed = {"attached": numsub(), "counts": broker.subscriber_counts()}
    gevent.sleep(0.2)
    broker.publish("x", Event(data="hello"))
    wait_until(lambda: all(r.seqs for r in [*many, both]), 5, "the event on x everywhere")
    # One encoding per process: every subscriber got the very same payload object.
    observed["shared_payload"] = len({id(r.messages[0].payload) for r in [*many, both]}) == 1
    for recorder in many:
        broker.detach(recorder)
        broker.detach(recorder)
    gevent.sleep(0.2)
    observed["x_still_needed"] = numsub()
    broker.detach(both)
    wait_until(lambda: numsub() == {"x": 0, "y": 0}, 5, "x and y unsubscribed")
    observed["detached"] = numsub()
    observed["counts_after"] = broker.subscriber_counts()
    names = [c["name"] for c in client.client_list() if c["name"].startswith("sse:")]
    observed["connections"] = len(names)
    observed["names"] = sorted(set(names))
    observed["pid"] = os.getpid()
    broker.close()
    return observed


def down(url: str) -> dict:
    """Redis is not there yet: attach returns at once, publish fails in bounded
    time; once Redis answers, replay and live delivery start by themselves."""
    broker = RedisBroker(url)
    live, resumer = Recorder(["a"]), Recorder(["a"])
    started = time.monotonic()
    broker.attach(live, None)
    broker.attach(resumer, "f00d-5")
    attach_seconds = time.monotonic() - started
    started = time.monotonic()
    try:
        broker.publish("a", Event(data="x"))
        raised = False
    except BrokerUnavailable:
        raised = True
    publish_seconds = time.monotonic() - started
    print("waiting-for-redis", flush=True)
    # The test starts redis-server now; the broker's backoff finds it.
    wait_until(lambda: bool(resumer.resets), 20, "the reset once Redis answers")
    wait_until(lambda: bool(live.ready_at and resumer.ready_at), 20, "both subscribers ready")
    message = broker.publish("a", Event(data="y"))
    wait_until(
        lambda: message.seq in live.seqs and message.seq in resumer.seqs, 10, "live delivery"
    )
    broker.close()
    return {
        "attach_seconds": attach_seconds,
        "publish_raised": raised,
        "publish_seconds": publish_seconds,
        "live": live.seqs,
        "resumer": resumer.seqs,
        "resumer_resets": resumer.resets,
        "resumer_ready_at": resumer.ready_at,
        "published_seq": message.seq,
    }


def fork(url: str) -> dict:
    """A broker used before a fork starts afresh in the child (its own
    connections and greenlets) and keeps working in the parent."""
    broker = RedisBroker(url)
    parent_sub = Recorder(["p"])
    broker.attach(parent_sub, None)
    broker.publish("p", Event(data="before"))
    gevent.sleep(0.3)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        code = 1
        try:
            # Meanwhile the parent publishes and must get every event itself:
            # its pub/sub socket is inherited here but must not be read here.
            gevent.sleep(0.5)
            child_sub = Recorder(["c"])
            broker.attach(child_sub, None)
            gevent.sleep(0.3)
            message = broker.publish("c", Event(data="child"))
            wait_until(lambda: message.seq in child_sub.seqs, 5, "delivery in the child")
            os.write(write, json.dumps({"child_pid": os.getpid(), "seqs": child_sub.seqs}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    during = [broker.publish("p", Event(data=str(n))) for n in range(50)]
    wait_until(
        lambda: during[-1].seq in parent_sub.seqs, 5, "the parent's events during the child's life"
    )
    _, status = os.waitpid(pid, 0)
    child = json.loads(os.read(read, 65536) or b"{}")
    message = broker.publish("p", Event(data="after"))
    wait_until(lambda: message.seq in parent_sub.seqs, 5, "delivery in the parent after the fork")
    broker.close()
    return {
        "child_status": status,
        "child": child,
        "parent": parent_sub.seqs,
        "during": [m.seq for m in during],
    }


def stale(url: str, check: str = "peek") -> dict:
    """The pool hands out a publishing connection that Redis has closed (as
    its idle ``timeout`` does), then one with a reply left unread on it: each
    publish must go out on a new connection, neither failing nor reading the
    old reply. ``check="none"`` is the control: the pool does not look."""
    broker = RedisBroker(url)
    admin = redis.Redis.from_url(url)
    pool = broker._state().pool
    if check == "none":
        pool.ensure_connection = lambda connection: connection.connect()
    first = broker.publish("s", Event(data="first"))
    admin.client_kill_filter(_type="normal", skipme=True)
    time.sleep(0.2)  # the end of the stream has reached the client

    def publish(data: str) -> str:
        try:
            return broker.publish("s", Event(data=data)).id
        except Exception as exc:
            return repr(exc)

    after_close = publish("second")
    connection = pool.get_connection()
    connection.send_command("ECHO", "left over")
    pool.release(connection)
    time.sleep(0.2)  # the reply has arrived
    after_leftover = publish("third")
    broker.close()
    return {
        "ids": [first.id, after_close, after_leftover],
        "stored": admin.xlen("sse:stream:s"),
    }


def fork_in_flight(url: str) -> dict:
    """A process that serves streams and publishes forks while its fan-out's
    probe and a publish wait on Redis's replies: the child's copies of the
    connections must not take those replies away, or the parent waits out its
    socket timeout, drops its subscription and fails the publish. Timed as
    :func:`report_fork` is: Redis holds writes for 0.8 s, and the parent
    blocks for 0.6 s after the fork."""
    client = redis.Redis.from_url(url)
    broker = RedisBroker(url, probe_interval=0.3)
    said = _said()
    sub = Recorder(["p"])
    broker.attach(sub, None)
    gevent.sleep(0.3)  # subscribed and positioned: live from here
    first = broker.publish("p", Event(data="before"))
    wait_until(lambda: first.seq in sub.seqs, 5, "delivery before the fork")
    fanout = broker._serving()
    assert fanout is not None
    heard = fanout.last_message
    wait_until(lambda: fanout.last_message != heard, 10, "a probe back")
    gevent.sleep(0.35)  # quiet for longer than the probe interval
    connects = fanout.reconnects
    client.execute_command("CLIENT", "PAUSE", 800, "WRITE")
    fanout.wake.set()  # the supervisor looks now, and probes
    in_flight = gevent.spawn(broker.publish, "p", Event(data="in flight"))
    wait_until(lambda: fanout.probe_sent is not None, 2, "a probe sent into the pause")
    gevent.sleep(0.05)  # its PUBLISH is written and waits on its reply
    pid, read = fork_while_redis_holds_replies(dict)
    _, status = os.waitpid(pid, 0)
    child_said = json.loads(os.read(read, 65536) or b"{}").get("said")
    # A new subscriber needs the supervisor: stuck on a reply that never
    # comes, it would serve it only after its socket timeout and a new
    # subscription.
    started = time.monotonic()
    late = Recorder(["q"])
    broker.attach(late, None)
    wait_until(lambda: bool(late.ready_at), 10, "a subscriber after the fork")
    positioned_after = time.monotonic() - started
    in_flight.join(10)
    published = in_flight.value.seq if in_flight.successful() else repr(in_flight.exception)
    if in_flight.successful():
        wait_until(lambda: published in sub.seqs, 5, "the publish in flight at the fork")
    after = broker.publish("q", Event(data="after"))
    wait_until(lambda: after.seq in late.seqs, 5, "delivery after the fork")
    health = broker.health()
    broker.close()
    return {
        "child_status": status,
        "child_said": child_said,
        "parent_said": [r.getMessage() for r in said],
        "new_connections": health["reconnects"] - connects,
        "positioned_after": positioned_after,
        "published_in_flight": published,
        "probes_lost": health["probes_lost"],
    }


def report_fork(url: str) -> dict:
    """A process that reports to the cluster view forks while a report is in
    flight: the child must not keep the parent's reporter (gevent carries
    greenlets over a fork) nor read the parent's reply from its copy of the
    socket, and reports for itself once it serves; the parent goes on
    reporting without a gap and without an error.

    Redis holds writes for 0.8 s (``CLIENT PAUSE``) so that the parent's
    report is waiting on its reply when the process forks, and the parent
    then blocks its whole process for 0.6 s, so that the child's loop is the
    first to see the reply arrive."""
    client = redis.Redis.from_url(url)
    broker = RedisBroker(url)
    reports = {"n": 0}
    said = _said()
    interval = 0.5  # a report lives 1.5 s: longer than the pause and the block together

    def parent_figures() -> dict:
        reports["n"] += 1
        return {"id": "parent", "pid": os.getpid(), "n": reports["n"], "channels": {}}

    def reported(process_id: str) -> dict:
        return json.loads(client.get(f"sse:process:{process_id}") or b"{}")

    broker.presence().start(parent_figures, interval)
    wait_until(lambda: reported("parent").get("n", 0) >= 2, 5, "the parent's reports")
    counted = reports["n"]
    wait_until(lambda: reports["n"] > counted, 2, "a report")
    # The next report comes in 0.5 s, into the pause.
    client.execute_command("CLIENT", "PAUSE", 800, "WRITE")
    wait_until(lambda: reports["n"] > counted + 1, 2, "a report sent into the pause")
    gevent.sleep(0.05)  # the report's command is written and waits on its reply

    def in_child() -> dict:
        broker.presence().start(
            lambda: {"id": "child", "pid": os.getpid(), "channels": {}}, interval
        )
        wait_until(lambda: bool(reported("child")), 5, "the child's own report")
        return {"pid": os.getpid(), "own_report_pid": reported("child")["pid"]}

    pid, read = fork_while_redis_holds_replies(in_child)
    seen = []
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        assert time.monotonic() < deadline, "the child did not end within 20 s"
        seen.append(reported("parent").get("pid"))
        gevent.sleep(0.01)
    child = json.loads(os.read(read, 65536) or b"{}")
    before = reported("parent").get("n", 0)
    wait_until(lambda: reported("parent").get("n", 0) >= before + 2, 5, "the next reports")
    after = reported("parent")["n"]
    broker.close()
    return {
        "child_status": status,
        "child": child,
        "parent_pid": os.getpid(),
        "seen_during_child": sorted(set(seen), key=str),
        "parent_reports_before": before,
        "parent_reports_after": after,
        "parent_said": [r.getMessage() for r in said],
    }


def fork_while_redis_holds_replies(child: Callable[[], dict]) -> tuple[int, int]:
    """Fork while Redis holds replies the process waits on (``CLIENT PAUSE``).

    The child waits 1 s (the pause ends: a reader it inherited would take a
    reply), runs ``child``, and sends back what it returns, with what the
    library logged in the child (``said``). The parent blocks its whole process for
    0.6 s, so that the child's loop is the first to see the replies arrive.
    Returns the child's pid and the pipe's end its result comes on.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            said = _said()
            gevent.sleep(1.0)
            result = {**child(), "said": [r.getMessage() for r in said]}
            os.write(write, json.dumps(result).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    gevent.monkey.get_original("time", "sleep")(0.6)
    return pid, read


def _said() -> list[logging.LogRecord]:
    """Every record the library logs at INFO and above from now on."""
    said: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = said.append  # type: ignore[method-assign]
    logger = logging.getLogger("flask_sse_keepalive")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return said


def count_rush(url: str, callers: str) -> dict:
    """Many greenlets ask one channel's ``subscriber_count`` at once, just as
    its cached count is out of date, while Redis stalls for longer than a
    pool's wait (1 s) and the process's reporter writes meanwhile: they share
    one read, and nothing says Redis is unreachable."""
    admin = redis.Redis.from_url(url)
    said = _said()
    other, reader = RedisBroker(url), RedisBroker(url)
    other.presence().start(lambda: {"id": "other", "pid": 1, "channels": {"news": 2}}, 5.0)
    reader.presence().start(lambda: {"id": "reader", "pid": os.getpid(), "channels": {}}, 0.1)
    presence = reader.presence()
    wait_until(lambda: presence.remote_subscribers("news", 0.05) == 2, 5, "the other's report")

    def hgets() -> int:
        return int(admin.info("commandstats").get("cmdstat_hget", {}).get("calls", 0))

    def rush(stall_ms: int) -> dict:
        gevent.sleep(0.1)  # the cached count is out of date
        before = hgets()
        if stall_ms:
            admin.client_pause(stall_ms)
        started = time.monotonic()
        greenlets = [
            gevent.spawn(presence.remote_subscribers, "news", 0.05) for _ in range(int(callers))
        ]
        gevent.joinall(greenlets, timeout=20)
        answers = [g.value if g.successful() else repr(g.exception) for g in greenlets]
        return {
            "answers": sorted(set(map(str, answers))),
            "hgets": hgets() - before,
            "seconds": time.monotonic() - started,
        }

    observed = {"calm": rush(0), "stalled": rush(1500)}
    other.close()
    reader.close()
    observed["warnings"] = [r.getMessage() for r in said if r.levelno >= logging.WARNING]
    return observed


SCENARIOS: dict[str, Callable[..., dict]] = {
    "seam": seam,
    "publish": publish,
    "flush": flush,
    "subscriptions": subscriptions,
    "rollback": rollback,
    "down": down,
    "fork": fork,
    "fork_in_flight": fork_in_flight,
    "stale": stale,
    "report_fork": report_fork,
    "count_rush": count_rush,
}

if __name__ == "__main__":
    name, *args = sys.argv[1:]
    print(json.dumps(SCENARIOS[name](*args)), flush=True)
