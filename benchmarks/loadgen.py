"""The load generator process: runs one scenario against one server, prints JSON.

``python -m benchmarks.loadgen --port 8000 --scenario fanout --spec '{"streams": 50}'``
(``--host`` when the server is not on ``127.0.0.1``, as in the ``vanish`` scenario)

The runner starts it pinned to its own CPU, apart from the server. It uses one
asyncio loop on raw sockets; its own CPU use is part of every result, so a
saturated generator shows instead of silently capping the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import selectors
import sys
import time
from typing import Any

from .procinfo import raise_nofile
from .scenarios import SCENARIOS

__all__ = ["main", "run"]


class BatchingSelector(selectors.EpollSelector):
    """An epoll selector that waits ``pause`` seconds after each wake-up.

    In throughput scenarios the cost of the generator is per read, not per
    byte: letting a few milliseconds of events pile up in the socket buffers
    makes each read carry many events, so the generator stays far from
    saturation. The publisher's lead is much larger than what arrives in one
    pause, so throughput is not affected; latency scenarios do not use it.
    """

    def __init__(self, pause: float) -> None:
        super().__init__()
        self.pause = pause

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(timeout)
        if ready:
            time.sleep(self.pause)
            ready = super().select(0)
        return ready


class Unhandled:
    """The loop's exception handler: errors nobody retrieved, counted, the first kept.

    Thousands of them (a future failed that nobody awaited) must not drown the
    error that matters in tracebacks; they end up as one warning in the result.
    """

    def __init__(self) -> None:
        self.count = 0
        self.first = ""

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.count += 1
        if not self.first:
            exc = context.get("exception")
            self.first = f"{context.get('message', '')}: {exc!r}" if exc else str(context)

    def warning(self) -> str:
        return f"{self.count} errors nobody retrieved in the generator, the first: {self.first}"


async def _scenario(
    host: str, port: int, scenario: str, spec: dict[str, Any], unhandled: Unhandled
) -> dict[str, Any]:
    asyncio.get_running_loop().set_exception_handler(unhandled)
    return await SCENARIOS[scenario](host, port, spec)


def run(host: str, port: int, scenario: str, spec: dict[str, Any]) -> dict[str, Any]:
    raise_nofile()
    pause = float(spec.get("read_batch_ms", 0)) / 1000
    unhandled = Unhandled()
    # Collections of thousands of live protocol objects would pause the loop
    # and show up as latency; the generator makes little cyclic garbage.
    gc.disable()
    try:
        if pause > 0:
            factory = lambda: asyncio.SelectorEventLoop(BatchingSelector(pause))  # noqa: E731
            with asyncio.Runner(loop_factory=factory) as runner:
                result = runner.run(_scenario(host, port, scenario, spec, unhandled))
        else:
            result = asyncio.run(_scenario(host, port, scenario, spec, unhandled))
    finally:
        gc.enable()
        if unhandled.count:
            print(unhandled.warning(), file=sys.stderr)
    if unhandled.count:
        result.setdefault("warnings", []).append(unhandled.warning())
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one benchmark scenario against a server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    parser.add_argument("--spec", default="{}", help="scenario parameters, as JSON")
    args = parser.parse_args(argv)
    result = run(args.host, args.port, args.scenario, json.loads(args.spec))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
