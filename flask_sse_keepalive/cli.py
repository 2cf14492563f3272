"""``flask sse ...``: publish, tail and inspect streams from the command line."""

from __future__ import annotations

import http.client
import json
import sys
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import click
from flask import current_app
from flask.cli import AppGroup

from .brokers.base import BrokerUnavailable
from .event import channel_problem

sse_cli = AppGroup("sse", help="Server-sent events: publish, tail, stats.")


def _extension() -> Any:
    extension = current_app.extensions.get("sse")
    if extension is None:
        raise click.UsageError("this app has no SSE extension: did you forget SSE(app)?")
    return extension


@sse_cli.command("publish")
@click.argument("channel")
@click.argument("data")
@click.option("--event", "-e", default=None, help="The event type.")
@click.option("--json", "as_json", is_flag=True, help="Parse DATA as JSON and send it encoded.")
def publish_command(channel: str, data: str, event: str | None, as_json: bool) -> None:
    """Publish DATA to CHANNEL and print the event id."""
    payload: Any = data
    if as_json:
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="DATA") from None
    try:
        event_id = _extension().publish(payload, event=event, channel=channel)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except BrokerUnavailable as exc:
        raise click.ClickException(f"broker unavailable: {exc}") from None
    click.echo(event_id)


@sse_cli.command("stats")
@click.option(
    "--all",
    "everywhere",
    is_flag=True,
    help="Every live process that serves streams, and the totals (sse.cluster_stats()).",
)
def stats_command(everywhere: bool) -> None:
    """Print figures as JSON: with --all those of every serving process and
    their totals; without, this command's own process's (which serves no
    streams: it shows the settings load)."""
    extension = _extension()
    if everywhere:
        try:
            figures = extension.cluster_stats()
        except BrokerUnavailable as exc:
            raise click.ClickException(f"broker unavailable: {exc}") from None
    else:
        figures = extension.stats()
    json.dump(figures, sys.stdout, indent=2, sort_keys=True)
    click.echo()


@sse_cli.command("tail")
@click.argument("channels", nargs=-1, required=True)
@click.option(
    "--url",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="Base URL of a running server; SSE_URL_PREFIX is appended.",
)
@click.option("--last-event-id", default=None, help="Resume after this event id.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after N events.")
def tail_command(
    channels: tuple[str, ...], url: str, last_event_id: str | None, count: int | None
) -> None:
    """Print the events of CHANNELS as JSON lines as they arrive.

    Reads the stream of a running server (so it works with any broker), and
    resumes with the last id it printed when the connection drops.
    """
    for channel in channels:
        problem = channel_problem(channel)
        if problem is not None:
            raise click.BadParameter(problem, param_hint="CHANNELS")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"not an http(s) URL: {url!r}", param_hint="--url")
    path = parts.path.rstrip("/") + current_app.config["SSE_URL_PREFIX"]
    path += "?" + urlencode([("channel", c) for c in channels])
    printed = 0
    delay = 0.5
    while count is None or printed < count:
        wait = delay
        try:
            for event in _read_stream(parts, path, last_event_id):
                click.echo(json.dumps(event, ensure_ascii=False))
                delay = 0.5
                if event.get("id") is not None:
                    last_event_id = event["id"]
                printed += 1
                if count is not None and printed >= count:
                    return
        except _Unavailable as exc:
            wait = max(delay, exc.retry_after)
            click.echo(f"{exc}; retrying in {wait:.1f} s", err=True)
        except (OSError, http.client.HTTPException) as exc:
            click.echo(f"connection lost ({exc}); reconnecting in {wait:.1f} s", err=True)
        time.sleep(wait)
        delay = min(delay * 2, 10.0)


class _Unavailable(Exception):
    """The server answered 5xx: try again later."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _read_stream(parts: Any, path: str, last_event_id: str | None) -> Any:
    """Yield the events of one connection as dicts; return when it ends."""
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_class(parts.hostname, parts.port, timeout=120)
    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        if response.status != 200:
            body = response.read(500).decode("utf-8", "replace").strip()
            message = f"{response.status} from the server: {body}"
            if response.status >= 500:
                retry_after = response.getheader("Retry-After") or ""
                raise _Unavailable(message, float(retry_after) if retry_after.isdigit() else 0)
            raise click.ClickException(message)
        fields: dict[str, Any] = {}
        data: list[str] = []
        while True:
            raw = response.readline()
            if not raw:
                return
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if data:
                    yield {
                        "id": fields.get("id"),
                        "event": fields.get("event"),
                        "data": "\n".join(data),
                    }
                fields, data = {}, []
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                elif name in ("id", "event"):
                    fields[name] = value
    finally:
        connection.close()
