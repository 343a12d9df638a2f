"""A tiny TCP proxy on 127.0.0.1 that can lose replies on command.

It sits between giftwire and Redis to make the one fault a client cannot tell apart from
any other: the request reached Redis and ran, but the reply never came back. Commands:

* ``drop_reply_to(marker)``: on the connection whose request contains ``marker`` (a gift's
  client id), the reply Redis sends is thrown away and both sides are closed. The request
  was forwarded in full, so the script ran; the client only sees its connection reset.
* ``refuse(True)``: new connections are accepted and closed at once (Redis unreachable),
  so the client library's own reconnect-and-retry cannot hide the lost reply.
* ``cut_all()``: close every open connection now.
* ``partition(True)``: stop forwarding, both ways, without closing anything (a network
  partition: the client sees no error, only silence, until its timeout); new connections
  hang too. ``partition(False)`` heals it: what was held is delivered late, as TCP would.
"""

from __future__ import annotations

import asyncio
import contextlib

from server.ledger.embedded import free_port

_CHUNK = 65_536


class CuttableProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.replies_dropped = 0
        self.connections_refused = 0
        self._marker: bytes | None = None
        self._doomed: set[asyncio.StreamWriter] = set()
        self._refusing = False
        self._refuse_after_drop = False
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = asyncio.Event()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut_all()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def drop_reply_to(self, marker: bytes, *, then_refuse: bool = False) -> None:
        """Lose the reply to the request carrying ``marker``; with ``then_refuse``, refuse
        new connections from that moment on (until ``refuse(False)``)."""
        self.dropped.clear()
        self._marker = marker
        self._refuse_after_drop = then_refuse

    def refuse(self, refusing: bool) -> None:
        self._refusing = refusing

    def partition(self, partitioned: bool) -> None:
        if partitioned:
            self._flowing.clear()
        else:
            self._flowing.set()

    def cut_all(self) -> None:
        for client, upstream in list(self._pairs):
            client.close()
            upstream.close()
        self._pairs.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.connections_refused += 1
            writer.close()
            return
        await self._flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        loop = asyncio.get_running_loop()
        for task in (
            loop.create_task(self._pipe(reader, up_writer, pair, upstream=writer)),
            loop.create_task(self._pipe(up_reader, writer, pair, upstream=None)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        *,
        upstream: asyncio.StreamWriter | None,
    ) -> None:
        """Copy one direction. ``upstream`` is set for requests: the client's writer, which
        is doomed when a request carries the marker; replies to a doomed writer are lost."""
        try:
            while data := await source.read(_CHUNK):
                if upstream is not None and self._marker is not None and self._marker in data:
                    self._marker = None
                    self._doomed.add(upstream)
                elif upstream is None and sink in self._doomed:
                    # The request was forwarded and Redis has answered: lose the answer.
                    self._doomed.discard(sink)
                    self._refusing = self._refusing or self._refuse_after_drop
                    self.replies_dropped += 1
                    self.dropped.set()
                    break
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for side in pair:
                side.close()
            self._pairs.discard(pair)
