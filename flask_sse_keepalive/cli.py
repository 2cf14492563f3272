"""``flask sse ...``: publish, tail and inspect streams from the command line."""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import urlsplit

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
@click.option("--token", default=None, help="A subscribe token, for a server that requires one.")
def tail_command(
    channels: tuple[str, ...],
    url: str,
    last_event_id: str | None,
    count: int | None,
    token: str | None,
) -> None:
    """Print the events of CHANNELS as JSON lines as they arrive.

    Reads the stream of a running server (so it works with any broker) with
    the package's Python client: it reconnects after a drop, a restart or a
    503, resumes after the last id it printed, and prints a stream-reset like
    any other event. A refusal (400, 401, 403, 404) ends it.
    """
    for channel in channels:
        problem = channel_problem(channel)
        if problem is not None:
            raise click.BadParameter(problem, param_hint="CHANNELS")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"not an http(s) URL: {url!r}", param_hint="--url")
    from .client import Reconnect, SSEClient, StreamRefused

    def reconnecting(info: Reconnect) -> None:
        why = f"{info.status} from the server" if info.status else info.reason
        click.echo(f"connection lost ({why}); reconnecting in {info.delay:.1f} s", err=True)

    stream_url = url.rstrip("/") + current_app.config["SSE_URL_PREFIX"]
    printed = 0
    try:
        with SSEClient(
            stream_url,
            channels=list(channels),
            last_event_id=last_event_id,
            token=token,
            on_reconnect=reconnecting,
        ) as client:
            for event in client:
                line = {"id": event.id or None, "event": event.event, "data": event.data}
                click.echo(json.dumps(line, ensure_ascii=False))
                printed += 1
                if count is not None and printed >= count:
                    return
    except StreamRefused as refused:
        raise click.ClickException(f"{refused.status} from the server: {refused.reason}") from None
