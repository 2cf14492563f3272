"""The async client, :class:`AsyncSSEClient`, on anyio (asyncio or trio).

The same shape as the blocking client: each connection attempt gets a reader
task (in the client's task group, entered by ``async with``) that hands the
head and the body's bytes over through a small bounded memory stream; the
task that iterates owns the :class:`Session` and waits on that stream with a
deadline. Cancelling the waiting task (a timeout around ``receive``) loses
nothing and leaves the connection open.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

import anyio
import httpx
from anyio.abc import TaskGroup

from ..parser import ClientEvent
from .backoff import Backoff
from .handover import CHANNEL_SIZE, OUTCOMES, Chunk, End, Head, Item, Sleep, Wait, deadline
from .hooks import Closed, Opened, Reconnect
from .session import REASON_BYTES, Params, Session, classify


class _Reader:
    """One attempt's I/O, in a task of the client's task group."""

    def __init__(self, http: httpx.AsyncClient, request: httpx.Request) -> None:
        self._http = http
        self._request = request
        self._send, self.receive = anyio.create_memory_object_stream[Item](CHANNEL_SIZE)
        self._scope = anyio.CancelScope()

    def stop(self) -> None:
        """Stop (from any task of the loop) and let the connection go."""
        self._scope.cancel()
        # Both ends, here: a task cancelled before it started never runs its
        # ``finally``.
        self._send.close()
        self.receive.close()

    async def run(self) -> None:
        with self._scope:
            try:
                await self._run()
            finally:
                self._send.close()

    async def _run(self) -> None:
        try:
            response = await self._http.send(self._request, stream=True)
        except Exception as exc:  # handed over: the client decides
            await self._put(End(exc))
            return
        try:
            kind = classify(response.status_code, response.headers.get("content-type"))
            if kind != "stream":
                reason = await _read_reason(response) if kind == "refuse" else ""
                await self._put(Head(response, False, reason))
                return
            if not await self._put(Head(response, True, "")):
                return
            async for chunk in response.aiter_bytes():
                if not await self._put(Chunk(chunk)):
                    return
            await self._put(End(None))
        except Exception as exc:  # handed over: the client decides
            await self._put(End(exc))
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def _put(self, item: Item) -> bool:
        try:
            await self._send.send(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False  # stopped
        return True


async def _read_reason(response: httpx.Response) -> str:
    body = b""
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= REASON_BYTES:
                break
    except httpx.TransportError:
        pass  # the reason is what arrived
    return body[:REASON_BYTES].decode("utf-8", "replace")


class AsyncSSEClient(Session[httpx.AsyncClient]):
    """The async twin of :class:`SSEClient`, with the same options
    (``client`` is an ``httpx.AsyncClient``):

    .. code-block:: python

        async with AsyncSSEClient("http://host/stream", channels=["prices"]) as client:
            async for event in client:
                print(event.id, event.event, event.json())

    Iterate inside ``async with``: it holds the task group of the reader
    tasks. It runs on asyncio and trio (through anyio).

    **Tasks**: one task at a time iterates or calls :meth:`receive` and
    :meth:`wait_subscribed`; a second one gets a :class:`RuntimeError`.
    :meth:`aclose` may be called from any task of the same event loop, any
    number of times: iteration then ends promptly. Cancelling the task that
    waits (``anyio.fail_after``, ``asyncio.timeout``) loses no event and
    keeps the connection. From another thread, close through the loop
    (``anyio.from_thread.run(client.aclose)``). Hooks run in the task that
    iterates.
    """

    def __init__(
        self,
        url: str,
        *,
        channels: Sequence[str] | None = None,
        last_event_id: str | None = None,
        params: Params | Callable[[], Params] | None = None,
        token: str | Callable[[], str] | None = None,
        headers: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
        heartbeat: float | None = None,
        client: httpx.AsyncClient | None = None,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        watchdog_factor: float | None = 2.5,
        fallback_interval: float | None = None,
        on_open: Callable[[Opened], object] | None = None,
        on_close: Callable[[Closed], object] | None = None,
        on_reconnect: Callable[[Reconnect], object] | None = None,
    ) -> None:
        self._task_group: TaskGroup | None = None
        self._reader: _Reader | None = None
        self._wait_scope: anyio.CancelScope | None = None
        self._released = False
        self._reading = False
        super().__init__(
            url,
            channels=channels,
            last_event_id=last_event_id,
            params=params,
            token=token,
            headers=headers,
            heartbeat=heartbeat,
            client=client,
            timeout=timeout,
            backoff=backoff,
            watchdog_factor=watchdog_factor,
            fallback_interval=fallback_interval,
            on_open=on_open,
            on_close=on_close,
            on_reconnect=on_reconnect,
        )

    def _new_http_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(follow_redirects=True)

    async def __aenter__(self) -> AsyncSSEClient:
        if self._task_group is not None:
            raise RuntimeError("this client is already entered")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        task_group, self._task_group = self._task_group, None
        try:
            await self.aclose()
        finally:
            # Waits for the reader tasks, all stopped by now.
            suppress = await task_group.__aexit__(exc_type, exc, traceback) if task_group else None
        return suppress

    def __aiter__(self) -> AsyncSSEClient:
        return self

    async def __anext__(self) -> ClientEvent:
        event = await self.receive()
        if event is None:
            raise StopAsyncIteration
        return event

    async def receive(self, timeout: float | None = None) -> ClientEvent | None:
        """The next event, connecting and reconnecting as needed.

        :param timeout: seconds to wait; ``None`` waits for as long as it takes.
        :returns: the event, or ``None`` once the client is closed.
        :raises TimeoutError: no event within ``timeout`` (the connection stays).
        :raises StreamRefused: the server refused the stream.
        :raises StreamUnavailable: :class:`Backoff` gave up.
        """
        outcome = await self._run(self._has_event, deadline(timeout, time.monotonic()))
        if outcome is None:
            raise TimeoutError(f"no event within {timeout} s")
        return self._take_event() if outcome else None

    async def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Read the stream until its server says it is subscribed; see
        :meth:`SSEClient.wait_subscribed`.

        :raises TimeoutError: not subscribed within ``timeout``.
        :raises RuntimeError: the client is closed.
        """
        outcome = await self._run(lambda: self._subscribed, deadline(timeout, time.monotonic()))
        if outcome is None:
            raise TimeoutError(f"the stream was not subscribed within {timeout} s")
        if not outcome:
            raise RuntimeError("the client is closed")

    async def aclose(self) -> None:
        """End iteration and release the connection (from any task of the loop)."""
        if self._closed:
            return
        self._closed = True
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        if self._reader is not None:
            self._reader.stop()
        if not self._reading:
            await self._release()

    # -- internals ------------------------------------------------------------

    async def _run(self, done: Callable[[], bool], deadline: float | None) -> bool | None:
        if self._reading:
            raise RuntimeError("another task is already reading this client")
        self._reading = True
        try:
            return await self._pump(done, deadline)
        except Exception:
            self._closed = True
            raise
        finally:
            self._reading = False
            if self._closed:
                with anyio.CancelScope(shield=True):
                    await self._release()

    async def _pump(self, done: Callable[[], bool], deadline: float | None) -> bool | None:
        while True:
            step = self._step(done, deadline)
            if isinstance(step, Wait):
                assert self._reader is not None
                self._received(await self._get(self._reader, step.timeout))
            elif isinstance(step, Sleep):
                with anyio.move_on_after(step.seconds) as scope:
                    self._wait_scope = scope
                    await anyio.sleep_forever()
                self._wait_scope = None
            elif step == "connect":
                self._connect()
            else:
                return OUTCOMES[step]

    async def _get(self, reader: _Reader, timeout: float | None) -> Item | None:
        """The reader's next item, or ``None`` (timeout, closed, stopped)."""
        try:
            return reader.receive.receive_nowait()
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            return End(None)  # the reader task was cancelled before it could say so
        except anyio.ClosedResourceError:
            return None  # stopped
        if timeout is not None and timeout <= 0:
            return None
        with anyio.move_on_after(timeout) as scope:
            self._wait_scope = scope
            try:
                return await reader.receive.receive()
            except anyio.EndOfStream:
                return End(None)
            except anyio.ClosedResourceError:
                return None
            finally:
                self._wait_scope = None
        return None

    def _connect(self) -> None:
        if self._task_group is None:
            raise RuntimeError("iterate inside 'async with AsyncSSEClient(...) as client:'")
        reader = _Reader(self._http, self._request(read_timeout=None))
        self._reader = reader
        self._task_group.start_soon(reader.run)

    def _has_reader(self) -> bool:
        return self._reader is not None

    def _stop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.stop()

    async def _release(self) -> None:
        if self._released:
            return
        self._released = True
        self._stop_reader()
        self._finish()
        if self._owns_http:
            await self._http.aclose()
