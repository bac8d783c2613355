"""socket_proxy's websocket client (:mod:`socket_proxy.wsclient`) against a server over real TCP that writes the
frames of RFC 6455 byte for byte: fragmented messages, the close handshake, size limits, keepalive pings,
refused upgrades. (The replay exchange, a whole websocket server, is what the other socket_proxy tests use.)"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
import struct
from typing import Self

import pytest

from crypto_mesh.pki import SOCKET_PROXY, TlsFiles, ensure_mesh_pki
from socket_proxy import wsclient
from socket_proxy.wsclient import ExchangeSocket, HandshakeError

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A server frame (unmasked)."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        header = bytes([first, size])
    elif size < 1 << 16:
        header = bytes([first, 126]) + struct.pack("!H", size)
    else:
        header = bytes([first, 127]) + struct.pack("!Q", size)
    return header + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """``(opcode, payload)`` of the next client frame (masked, as RFC 6455 requires of clients)."""
    first, second = await reader.readexactly(2)
    assert second & 0x80, "a client frame must be masked"
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4)
    data = await reader.readexactly(size)
    return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class RawServer:
    """A websocket server whose connections the test drives: :meth:`accepted` gives each one's reader and
    writer once its upgrade was answered (101, or ``status`` when set)."""

    def __init__(self, status: int = 101) -> None:
        self.status = status
        self._accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/stream"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        if self.status != 101:
            writer.write(b"HTTP/1.1 %d Refused\r\nContent-Length: 0\r\n\r\n" % self.status)
            await writer.drain()
            writer.close()
            return
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        await writer.drain()
        await self._accepted.put((reader, writer))

    async def accepted(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(self._accepted.get(), 10)


async def connect(url: str, **options: float) -> ExchangeSocket:
    settings = {"open_timeout": 5.0, "ping_interval": 20.0, "ping_timeout": 20.0, "max_message_bytes": 1 << 20}
    settings.update(options)
    return await ExchangeSocket.connect(url, **settings)  # type: ignore[arg-type]


async def close_both(socket: ExchangeSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The client's close handshake, answered by the server: CLOSE 1000 both ways."""
    closing = asyncio.ensure_future(socket.close())
    opcode, payload = await asyncio.wait_for(read_frame(reader), 10)
    assert opcode == CLOSE and struct.unpack("!H", payload[:2]) == (1000,)
    writer.write(frame(CLOSE, payload))
    await writer.drain()
    await asyncio.wait_for(closing, 10)


async def test_messages_reach_the_handler_whole_and_in_order_also_those_before_it_was_set():
    async with RawServer() as server:
        socket = await connect(server.url)
        reader, writer = await server.accepted()
        writer.write(frame(TEXT, b'{"early":1}'))
        await writer.drain()
        await asyncio.sleep(0.2)
        received: list[bytes] = []
        socket.deliver_to(received.append)
        writer.write(
            frame(TEXT, b'{"a":', fin=False)
            + frame(PING, b"keepalive")  # a control frame may come between the fragments of a message
            + frame(CONTINUATION, b'"b', fin=False)
            + frame(CONTINUATION, b'c"}')
            + frame(BINARY, b"\x00\x01")
            + frame(TEXT, "é".encode())
        )
        await writer.drain()
        for _ in range(100):
            if len(received) == 4:
                break
            await asyncio.sleep(0.05)
        assert received == [b'{"early":1}', b'{"a":"bc"}', b"\x00\x01", "é".encode()]
        opcode, payload = await read_frame(reader)
        assert (opcode, payload) == (PONG, b"keepalive")
        await close_both(socket, reader, writer)


async def test_a_close_from_the_exchange_is_answered_with_its_code_and_reported():
    async with RawServer() as server:
        socket = await connect(server.url)
        reader, writer = await server.accepted()
        socket.deliver_to(lambda message: None)
        writer.write(frame(CLOSE, struct.pack("!H", 1001) + b"restarting"))
        await writer.drain()
        closed = await asyncio.wait_for(socket.wait_closed(), 10)
        assert (closed.code, closed.reason, closed.clean) == (1001, "restarting", True)
        opcode, payload = await read_frame(reader)
        assert opcode == CLOSE and struct.unpack("!H", payload[:2]) == (1001,)


async def test_an_abnormal_close_code_is_not_clean_and_a_dropped_connection_has_no_code():
    async with RawServer() as server:
        socket = await connect(server.url)
        _, writer = await server.accepted()
        writer.write(frame(CLOSE, struct.pack("!H", 1011)))
        await writer.drain()
        closed = await asyncio.wait_for(socket.wait_closed(), 10)
        assert (closed.code, closed.clean) == (1011, False)

        socket = await connect(server.url)
        _, writer = await server.accepted()
        writer.close()
        closed = await asyncio.wait_for(socket.wait_closed(), 10)
        assert (closed.code, closed.clean) == (None, False)


async def test_a_fragmented_message_over_the_limit_ends_the_connection_with_1009():
    async with RawServer() as server:
        socket = await connect(server.url, max_message_bytes=100)
        reader, writer = await server.accepted()
        received: list[bytes] = []
        socket.deliver_to(received.append)
        writer.write(frame(TEXT, b"x" * 60, fin=False) + frame(CONTINUATION, b"y" * 60))
        await writer.drain()
        opcode, payload = await asyncio.wait_for(read_frame(reader), 10)
        assert opcode == CLOSE and struct.unpack("!H", payload[:2]) == (1009,)
        with pytest.raises(wsclient.WebSocketError, match="over 100 bytes"):
            await asyncio.wait_for(socket.wait_closed(), 10)
        assert received == []


async def test_a_continuation_without_a_message_is_a_protocol_error():
    async with RawServer() as server:
        socket = await connect(server.url)
        reader, writer = await server.accepted()
        socket.deliver_to(lambda message: None)
        writer.write(frame(CONTINUATION, b"stray"))
        await writer.drain()
        opcode, payload = await asyncio.wait_for(read_frame(reader), 10)
        assert opcode == CLOSE and struct.unpack("!H", payload[:2]) == (1002,)
        with pytest.raises(wsclient.WebSocketError, match="outside a message"):
            await asyncio.wait_for(socket.wait_closed(), 10)


async def test_an_idle_exchange_is_pinged_and_the_connection_ends_without_a_pong():
    async with RawServer() as server:
        socket = await connect(server.url, ping_interval=0.3, ping_timeout=0.3)
        reader, _ = await server.accepted()
        socket.deliver_to(lambda message: None)
        opcode, _ = await asyncio.wait_for(read_frame(reader), 10)
        assert opcode == PING
        closed = await asyncio.wait_for(socket.wait_closed(), 10)
        assert closed.code is None


async def test_an_exchange_that_answers_pings_keeps_the_connection():
    async with RawServer() as server:
        # A PONG answers within 1.5 s even on a loaded machine; two rounds show the connection outlives both.
        socket = await connect(server.url, ping_interval=1.5, ping_timeout=1.5)
        reader, writer = await server.accepted()
        socket.deliver_to(lambda message: None)
        for _ in range(2):
            opcode, payload = await asyncio.wait_for(read_frame(reader), 10)
            assert opcode == PING
            writer.write(frame(PONG, payload))
            await writer.drain()
        closing = asyncio.ensure_future(socket.close())
        opcode, payload = await asyncio.wait_for(read_frame(reader), 10)
        assert opcode == CLOSE and struct.unpack("!H", payload[:2]) == (1000,)
        assert not closing.done()  # the close handshake waits for the exchange's answer
        writer.write(frame(CLOSE, payload))
        await writer.drain()
        await asyncio.wait_for(closing, 10)
        assert (await socket.wait_closed()).code == 1000


async def test_a_handler_that_raises_ends_the_connection_and_wait_closed_raises_it():
    async with RawServer() as server:
        socket = await connect(server.url)
        _, writer = await server.accepted()

        def handler(message: bytes) -> None:
            raise RuntimeError(f"cannot handle {message!r}")

        socket.deliver_to(handler)
        writer.write(frame(TEXT, b"bad"))
        await writer.drain()
        with pytest.raises(RuntimeError, match="cannot handle b'bad'"):
            await asyncio.wait_for(socket.wait_closed(), 10)


async def test_control_messages_are_sent_as_text():
    async with RawServer() as server:
        socket = await connect(server.url)
        reader, writer = await server.accepted()
        socket.send_text('{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}')
        assert await asyncio.wait_for(read_frame(reader), 10) == (
            TEXT,
            b'{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}',
        )
        await close_both(socket, reader, writer)


async def test_a_refused_upgrade_is_a_handshake_error():
    async with RawServer(status=503) as server:
        with pytest.raises(HandshakeError):
            await connect(server.url)


async def test_a_close_the_exchange_never_answers_drops_the_connection_after_the_timeout(monkeypatch):
    monkeypatch.setattr(wsclient, "CLOSE_TIMEOUT_S", 2.0)
    async with RawServer() as server:
        socket = await connect(server.url)
        reader, _ = await server.accepted()
        closing = asyncio.ensure_future(socket.close())
        opcode, _ = await asyncio.wait_for(read_frame(reader), 10)
        assert opcode == CLOSE
        await asyncio.sleep(0.2)
        assert not closing.done()  # still waiting for an answer that never comes
        await asyncio.wait_for(closing, 10)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the connection is down


class TlsServer(RawServer):
    """:class:`RawServer` behind TLS, with the certificate of ``files`` (the mesh CA's, for 127.0.0.1)."""

    def __init__(self, files: TlsFiles, host: str = "127.0.0.1") -> None:
        super().__init__()
        self._host = host
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(files.cert_file, files.key_file)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, self._host, 0, ssl=self._context)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"wss://{self._host}:{port}/stream"
        return self


@pytest.fixture
def exchange_tls(tmp_path) -> TlsFiles:
    return ensure_mesh_pki(tmp_path, [SOCKET_PROXY])[SOCKET_PROXY]


async def test_an_exchange_whose_certificate_no_trusted_ca_signed_is_refused(exchange_tls):
    async with TlsServer(exchange_tls) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(server.url)


async def test_wss_carries_messages_once_the_certificate_is_trusted_for_the_host(exchange_tls, monkeypatch):
    # The system's CAs are what production trusts; here the mesh CA stands in for them.
    trusting = ssl.create_default_context(cafile=str(exchange_tls.ca_file))
    async with TlsServer(exchange_tls) as server:
        monkeypatch.setattr(ssl, "create_default_context", lambda *args, **kwargs: trusting)
        socket = await connect(server.url)
        reader, writer = await server.accepted()
        received: list[bytes] = []
        socket.deliver_to(received.append)
        writer.write(frame(TEXT, b'{"stream":"btcusdt@trade","data":{}}'))
        await writer.drain()
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.05)
        assert received == [b'{"stream":"btcusdt@trade","data":{}}']
        await close_both(socket, reader, writer)
    # The host name is checked too: the certificate names 127.0.0.1 and localhost, not 127.0.0.2.
    monkeypatch.undo()
    async with TlsServer(exchange_tls, host="127.0.0.2") as server:
        monkeypatch.setattr(ssl, "create_default_context", lambda *args, **kwargs: trusting)
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|match"):
            await connect(server.url)
