"""A TCP proxy that delays every byte the server sends by a fixed time: a local S3 server made to answer with
the latency of a real one (tens of milliseconds per request instead of one), for benchmarks whose speed depends
on how many requests are in flight at once."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def delayed(target_port: int, delay_s: float) -> Iterator[int]:
    """Serve a proxy to 127.0.0.1:`target_port` on a free loopback port (yielded) while the block runs."""
    listener = socket.create_server(("127.0.0.1", 0))
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), asyncio.Event()

    async def serve() -> None:
        server = await asyncio.start_server(
            lambda reader, writer: _proxy(reader, writer, target_port, delay_s), sock=listener)
        ready.set()
        try:
            await stop.wait()
        finally:
            server.close()
            connections = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in connections:
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield listener.getsockname()[1]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


async def _proxy(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, target_port: int,
                 delay_s: float) -> None:
    server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
    for writer in (client_writer, server_writer):
        # asyncio sets this only on sockets made with proto=IPPROTO_TCP, not on those socket.create_server
        # accepts; without it, Nagle held an answer's last segment until the client's delayed ACK (40 ms).
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    loop = asyncio.get_running_loop()

    async def upstream() -> None:  # requests go through at once
        while data := await client_reader.read(65536):
            server_writer.write(data)
            await server_writer.drain()
        server_writer.close()

    async def downstream() -> None:  # each chunk of the answers leaves `delay_s` after it came: a delay line
        while data := await server_reader.read(65536):
            due = loop.time() + delay_s
            loop.call_at(due, client_writer.write, data)
        await asyncio.sleep(delay_s)
        client_writer.close()

    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        await asyncio.gather(upstream(), downstream())
    client_writer.close()
    server_writer.close()
