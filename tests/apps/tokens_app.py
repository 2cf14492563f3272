"""A test app that issues subscribe tokens, with an ``authorize`` hook that reads their subject.

Settings come from ``SSE_*`` environment variables (see :mod:`tests.apps.settings`);
``TEST_SECRET_KEY`` and ``TEST_SECRET_KEY_FALLBACKS`` (comma-separated) set the keys,
``TEST_DEBUG_LOG=1`` logs everything at debug.
"""

from __future__ import annotations

import logging
import os

from flask import Flask, jsonify, request

from flask_sse_keepalive import SSE, signals
from tests.apps.settings import sse_settings

if os.environ.get("TEST_DEBUG_LOG"):
    logging.basicConfig(level=logging.DEBUG)

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("TEST_SECRET_KEY", "tokens-app-secret")
if os.environ.get("TEST_SECRET_KEY_FALLBACKS"):
    app.config["SECRET_KEY_FALLBACKS"] = os.environ["TEST_SECRET_KEY_FALLBACKS"].split(",")
app.config.update(sse_settings())
sse = SSE(app)

#: what the hook and the signals saw, for tests to read through /control/log
_log: list[dict] = []


@sse.authorize
def _authorize(channel: str) -> bool:
    subject = sse.current_subject()
    _log.append({"hook": channel, "subject": subject, "token": "token" in request.args})
    return subject != "banned"


@signals.client_disconnected.connect_via(app)
def _disconnected(sender, connection, reason):
    _log.append({"signal": "disconnected", "reason": reason, "expires_at": connection.expires_at})


@app.post("/control/token")
def token():
    body = request.get_json()
    issued = sse.token(
        body["channels"], expires_in=body.get("expires_in", 600), subject=body.get("subject")
    )
    return jsonify(token=issued)


@app.post("/control/publish")
def publish():
    body = request.get_json()
    event_id = sse.publish(body.get("data"), channel=body.get("channel", "default"))
    return jsonify(ids=[event_id])


@app.get("/control/stats")
def stats():
    return jsonify(sse.stats())


@app.get("/control/log")
def log():
    return jsonify(_log)
