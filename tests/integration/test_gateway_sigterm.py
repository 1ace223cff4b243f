"""``atoll gateway serve`` as a real process: SIGTERM drains, garbage never kills it.

Passthrough relays whatever follows a well-formed ClientHello, so the backend
here is a plain TCP server streaming bytes: the test needs no TLS stack, only a
real ClientHello (made by OpenSSL through a memory BIO) naming the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import sys
from pathlib import Path

import httpx
import pytest

from tests.gatewaykit import free_port
from tests.polling import wait_for

HOST = "127.0.90.5"
TOTAL = 64 * 1024 * 1024


def client_hello(sni: str) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


HELLO = client_hello("bulk.demo.svc.atoll.test")


async def _backend() -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(len(HELLO))
        block = b"z" * (1 << 16)
        for _ in range(TOTAL // len(block)):
            writer.write(block)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, HOST, 0)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_sigterm_stops_accepting_and_lets_the_transfer_finish(
    tmp_path: Path, loop: str
) -> None:
    backend = await _backend()
    bport = backend.sockets[0].getsockname()[1]
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "services:\n  - namespace: demo\n    name: bulk\n    export: true\n"
        f"    ports: [{{name: tcp, port: {bport}}}]\n"
        f"    instances: [{{id: b1, address: {HOST}, port: {bport}}}]\n"
    )
    (tmp_path / "gw.yaml").write_text("drain_seconds: 30\n")
    port, admin = free_port(HOST), free_port(HOST)
    log_path = tmp_path / "gateway.log"
    log_file = log_path.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "atoll", "gateway", "serve", "--cluster", "east",
         "--state-dir", str(tmp_path / "state"), "--config", str(tmp_path / "gw.yaml"),
         "--listen", f"{HOST}:{port}", "--admin", f"{HOST}:{admin}",
         "--catalog-file", str(catalog), "--log-format", "text", "--loop", loop,
        stdout=log_file, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:

        def up() -> bool:
            try:
                st = httpx.get(f"http://{HOST}:{admin}/v1/status", timeout=1).json()
            except httpx.HTTPError:
                return False
            return bool(st["inbound"])

        await asyncio.to_thread(wait_for, "the gateway serving demo/bulk", up, 30)
        # garbage first: the process must survive it
        for junk in (b"\x00" * 64, b"GET / HTTP/1.0\r\n\r\n", HELLO[:20]):
            r, w = await asyncio.open_connection(HOST, port)
            w.write(junk)
            w.write_eof()
            assert await asyncio.wait_for(r.read(), 10) == b""
            w.close()
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(HELLO)
        got = len(await reader.readexactly(1 << 20))
        os.kill(proc.pid, signal.SIGTERM)
        await asyncio.sleep(0.5)
        try:
            refused = False
            await asyncio.open_connection(HOST, port)
        except OSError:
            refused = True
        assert refused, "a draining gateway must stop accepting"
        while chunk := await reader.read(1 << 18):
            got += len(chunk)
            await asyncio.sleep(0.001)
        writer.close()
        assert got == TOTAL
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        log = log_path.read_text()
        assert "drained" in log and "cancelled=0" in log, log[-2000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log_file.close()
        backend.close()
