"""Keep the latest headlines, and carry on where it left off after a restart."""

import json
import logging
import sys
from pathlib import Path

from flask_sse_keepalive.client import Reconnect, SSEClient

STATE = Path("headlines.json")
log = logging.getLogger("headlines")


def load() -> dict:
    if STATE.exists():
        return json.loads(STATE.read_text())
    return {"last_event_id": None, "headlines": []}


def save(state: dict) -> None:
    partial = STATE.with_suffix(".tmp")
    partial.write_text(json.dumps(state))
    partial.replace(STATE)  # all or nothing, even if the process dies here


def reconnecting(info: Reconnect) -> None:
    log.warning("stream lost (%s), reconnecting in %.1f s", info.reason, info.delay)


def main(url: str) -> None:
    state = load()
    with SSEClient(
        url,
        channels=["news"],
        last_event_id=state["last_event_id"],  # resume after what was saved
        on_reconnect=reconnecting,
    ) as client:
        for event in client:
            if event.event == "stream-reset":
                # The server could not replay what was missed: start over
                # from the source of truth (here: nothing but the stream).
                log.warning("missed events: %s", event.json()["reason"])
                state["headlines"] = []
            elif event.event == "headline":
                state["headlines"] = [*state["headlines"], event.json()["title"]][-10:]
            state["last_event_id"] = client.last_event_id
            save(state)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8000/stream")
