"""A TCP proxy on 127.0.0.1 that delays every byte sent to the server by a fixed time.

    python bench/proxy.py --upstream 127.0.0.1:PORT --delay-ms 20 [--max-seconds 3600]

Prints ``LISTENING <port>`` once ready. Used to give the peers (SlateDB, Icechunk: Rust
clients that kvstore's in-process fault injector cannot reach) the same per-request latency
kvstore gets from ``FaultInjectingStore``: every request reaches the server ``delay`` later
than it was sent (a one-way delay, so each round trip costs ``delay`` more; bandwidth is
not limited). Each chunk is forwarded at its arrival time + delay, keeping order. Responses
pass through undelayed. The proxy stops by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


async def pipe_delayed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def receive() -> None:
        try:
            while data := await reader.read(1 << 16):
                queue.put_nowait((loop.time() + delay, data))
        finally:
            queue.put_nowait(None)

    async def send() -> None:
        while (item := await queue.get()) is not None:
            due, data = item
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    await asyncio.gather(receive(), send())


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


async def serve(upstream_host: str, upstream_port: int, delay: float, max_seconds: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(upstream_host, upstream_port)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(pipe_delayed(client_r, server_w, delay), pipe(server_r, client_w))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (client_w, server_w):
                with contextlib.suppress(OSError):
                    w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"LISTENING {port}", flush=True)
    async with server:
        await asyncio.sleep(max_seconds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True, help="host:port of the server (loopback only)")
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--max-seconds", type=float, default=3600.0)
    args = ap.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost"):
        raise SystemExit("the proxy only forwards to 127.0.0.1")
    asyncio.run(serve(host, int(port), args.delay_ms / 1e3, args.max_seconds))


if __name__ == "__main__":
    main()
