"""``flask sse ...``: publish, tail and inspect streams from the command line."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from .brokers.base import BrokerUnavailable

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
def stats_command() -> None:
    """Print this process's figures as JSON (the broker's channels included)."""
    json.dump(_extension().stats(), sys.stdout, indent=2, sort_keys=True)
    click.echo()
