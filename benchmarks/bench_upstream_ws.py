"""CPU per received message of socket_proxy's websocket client, beside the ``websockets`` library's client.

Usage::

    .venv/bin/python benchmarks/bench_upstream_ws.py [--messages 300000] [--rounds 3]

A local server (a process of its own) answers the websocket upgrade and writes the frames of the shipped
``@trade`` recording back to back, as fast as the client reads them (the exchange's combined-stream frames,
~200 bytes each). Each round, each client connects in a process of its own and receives ``--messages``
messages as bytes: :class:`socket_proxy.wsclient.ExchangeSocket` (picows; each message handed to a callback)
and ``websockets``' ``recv(decode=False)`` loop, with the ping settings socket_proxy uses. It prints the CPU
time (user + system, the client process) per message of each, and their ratio, the median over the rounds;
and for scale, the in-process parse-and-aggregate cost per frame that ``bench_market_path.py`` takes as its
ceiling. Bounded: a few seconds per round.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import platform
import socket
import statistics
import time

from bench_market_path import ceiling as market_path_ceiling
from machine import cpu_model
from websockets.utils import accept_key

from crypto_mesh.binance import DEFAULT_RECORDING, recording_lines
from launcher.replay.server import text_frame


def recorded_frames(count: int = 30_000) -> list[bytes]:
    """The first ``count`` frames of the shipped recording, as UTF-8 bytes."""
    return [
        line if isinstance(line, bytes) else line.encode()
        for line in itertools.islice(recording_lines(DEFAULT_RECORDING), count)
    ]


def serve(sock: socket.socket) -> None:
    """The server process: every connection gets the recording's frames, looped, until it closes."""
    blob = b"".join(text_frame(frame) for frame in recorded_frames())

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n\r\n"
        )
        try:
            while True:
                writer.write(blob)
                await writer.drain()
        except (ConnectionError, OSError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


async def receive_exchange_socket(url: str, messages: int) -> float:
    from socket_proxy import upstream
    from socket_proxy.wsclient import ExchangeSocket

    socket_ = await ExchangeSocket.connect(
        url,
        open_timeout=upstream.OPEN_TIMEOUT_S,
        ping_interval=upstream.PING_INTERVAL_S,
        ping_timeout=upstream.PING_TIMEOUT_S,
        max_message_bytes=upstream.MAX_FRAME_BYTES,
    )
    done = asyncio.get_running_loop().create_future()
    count = 0
    started = 0.0

    def on_message(raw: bytes) -> None:
        nonlocal count, started
        count += 1
        if count == 1:
            started = time.process_time()
        elif count == messages + 1 and not done.done():
            done.set_result(time.process_time() - started)

    socket_.deliver_to(on_message)
    taken = await done
    await socket_.close()
    return taken


async def receive_websockets(url: str, messages: int) -> float:
    from websockets.asyncio.client import connect

    from socket_proxy import upstream

    ws = await connect(
        url,
        open_timeout=upstream.OPEN_TIMEOUT_S,
        ping_interval=upstream.PING_INTERVAL_S,
        ping_timeout=upstream.PING_TIMEOUT_S,
        max_size=upstream.MAX_FRAME_BYTES,
    )
    await ws.recv(decode=False)
    started = time.process_time()
    for _ in range(messages):
        raw = await ws.recv(decode=False)
        raw = raw if type(raw) is bytes else bytes(raw)
    taken = time.process_time() - started
    await ws.close()
    return taken


def client(which: str, url: str, messages: int, out: multiprocessing.Queue) -> None:
    from crypto_mesh.runtime import default_loop_factory

    receive = receive_exchange_socket if which == "wsclient" else receive_websockets
    with asyncio.Runner(loop_factory=default_loop_factory()) as runner:
        out.put(runner.run(receive(url, messages)))


def ceiling_per_frame(seconds: float = 2.0) -> float:
    """CPU per frame (s) of parse + aggregate in this process, as ``bench_market_path.py``'s ceiling."""
    from aggregator.secondstat import SecondWindows
    from crypto_mesh.binance import parse_trade_frame

    frames = recorded_frames()
    windows = SecondWindows(grace_ms=1_000)
    done = 0
    started = time.process_time()
    while time.process_time() - started < seconds:
        for raw in frames:
            windows.add(parse_trade_frame(raw), 0)
        done += len(frames)
    return (time.process_time() - started) / done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {cpu_model()}; {os.cpu_count()} cores; Python {platform.python_version()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"parameters: {args.messages:,} messages per client and round, {args.rounds} rounds")
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"ws://127.0.0.1:{listener.getsockname()[1]}/stream"
    server = multiprocessing.Process(target=serve, args=(listener,), daemon=True)
    server.start()
    results: dict[str, list[float]] = {"wsclient": [], "websockets": []}
    try:
        for round_number in range(1, args.rounds + 1):
            for which, per_messages in results.items():
                out: multiprocessing.Queue = multiprocessing.Queue()
                process = multiprocessing.Process(target=client, args=(which, url, args.messages, out))
                process.start()
                per_message = out.get(timeout=300) / args.messages
                process.join(30)
                per_messages.append(per_message)
                print(f"round {round_number}: {which}: {per_message * 1e6:.2f} µs of CPU per message")
    finally:
        server.kill()
    ours, theirs = (statistics.median(results[which]) for which in ("wsclient", "websockets"))
    _, ceiling, _ = market_path_ceiling(DEFAULT_RECORDING, 3.0)
    print(f"socket_proxy.wsclient (picows): {ours * 1e6:.2f} µs of CPU per message (median)")
    print(f"websockets: {theirs * 1e6:.2f} µs of CPU per message (median) = {theirs / ours:.1f} x wsclient's")
    print(
        f"for scale, parse + aggregate in process (bench_market_path.py's ceiling): {ceiling * 1e6:.2f} µs per "
        f"frame; wsclient costs {ours / ceiling:.2f} x that, websockets {theirs / ceiling:.2f} x"
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
