"""The start-up check against the real servers: a stop asked while it runs leaves no
connection to the broker open."""

from __future__ import annotations

import asyncio
import contextlib
import gc

import pytest

from stream.devstack import LocalBroker
from stream.preflight import check_servers
from stream.settings import Settings


class SlowAnswers:
    """A relay to the broker that holds each of its answers back `delay_s`; counts the
    connections made to it, those their client has closed and the answers relayed."""

    def __init__(self, upstream: str, delay_s: float) -> None:
        self.host, port = upstream.rsplit(":", 1)
        self.port, self.delay_s = int(port), delay_s
        self.opened = 0
        self.closed = 0
        self.answers = 0
        self.changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        self.server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        self.changed.set()
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        answers = asyncio.ensure_future(self._relay(up_reader, writer, self.delay_s))
        self._tasks.add(answers)
        await self._relay(reader, up_writer, 0)  # until the client closes its end
        self.closed += 1
        self.changed.set()
        answers.cancel()

    async def _relay(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay_s: float
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65_536):
                await asyncio.sleep(delay_s)
                sink.write(data)
                await sink.drain()
                if delay_s:
                    self.answers += 1
                    self.changed.set()
        sink.close()


async def test_a_check_stopped_while_the_broker_answers_closes_its_connection(
    broker: LocalBroker, redis_url: str
) -> None:
    """aiokafka closes a bootstrap connection on errors only: cancelled while it waited for
    the metadata, the check left it open (the Faust app stopped while it started)."""
    relay = SlowAnswers(broker.bootstrap, delay_s=0.5)
    settings = Settings(kafka_bootstrap=await relay.start(), redis_url=redis_url)
    loop = asyncio.get_running_loop()
    handler, reported = loop.get_exception_handler(), []
    loop.set_exception_handler(lambda _, context: reported.append(context["message"]))
    try:
        check = asyncio.ensure_future(check_servers(settings))
        # The first answer (the API versions) connects the client; its metadata request
        # is on its way when the stop comes.
        while relay.answers == 0:
            relay.changed.clear()
            await asyncio.wait_for(relay.changed.wait(), 10)
        await asyncio.sleep(0.1)
        check.cancel()
        with pytest.raises(asyncio.CancelledError):
            await check

        async def all_closed() -> None:
            while relay.closed < relay.opened:
                relay.changed.clear()
                await relay.changed.wait()

        await asyncio.wait_for(all_closed(), 5)
        gc.collect()
        assert relay.opened >= 1
        assert reported == []  # an open connection found by the GC says "Unclosed AIOKafka..."
    finally:
        loop.set_exception_handler(handler)
        await relay.close()
