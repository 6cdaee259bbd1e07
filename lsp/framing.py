"""LSP's framed messages read from a byte stream, back in step after a bad frame.

pygls's reader trusts every header: a Content-Length that is too short, too long, not a number
or missing leaves it out of step with the stream, and every later message is lost, so a client
waits forever. This reader (stdio and TCP) recovers:

- a header is found wherever `Content-Length:` appears in a line, so the tail of a body that was
  declared too short, left in front of the next header, does not hide it (it is skipped with a
  warning; the cut-off body itself got a ParseError);
- a frame whose length is not a number, or missing, is reported (ParseError, id null) and the
  reader looks for the next header;
- a body declared too long swallows the start of the next message; as soon as a whole JSON value
  is followed by a `Content-Length:` header, the value is taken as the message and the rest is
  read again as the stream (so the next message is not lost, and no read waits for bytes that
  will never come);
- a body that is not UTF-8 is decoded with U+FFFD in place of the bad bytes, with a warning.

Messages are handled in order, and each request's handler starts (and reads the documents)
before the next message is handled, even when both came in one read. `serve_stdio` and
`serve_tcp` are pygls's transports with this reader.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("demi.lsp")

CHUNK = 65536
MAX_HEADER_LINE = 1 << 20  # a "line" longer than this without a header is junk: dropped
_LENGTH = re.compile(rb"content-length:[ \t]*([^\r\n]*)", re.IGNORECASE)
_HEADER_START = re.compile(rb"content-length:", re.IGNORECASE)


class FrameError(ValueError):
    """A frame that could not be read (answered with ParseError, id null)."""


class FrameReader:
    """Buffered reads over `read_some(n)` (at least one byte, at most n; b"" at the end)."""

    def __init__(self, read_some: Callable[[int], Awaitable[bytes]]):
        self._read_some = read_some
        self._buf = bytearray()
        self._eof = False

    async def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = await self._read_some(CHUNK)
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    async def readline(self) -> bytes:
        """The next line with its end (b"" at the end of the stream)."""
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line = bytes(self._buf[: i + 1])
                del self._buf[: i + 1]
                return line
            if len(self._buf) > MAX_HEADER_LINE:
                m = _HEADER_START.search(bytes(self._buf), 1)
                keep = m.start() if m else len(self._buf) - 32
                log.warning("skipped %d bytes that were not an LSP header", keep)
                del self._buf[:keep]
            if not await self._fill():
                line, self._buf = bytes(self._buf), bytearray()
                return line

    async def read_body(self, n: int) -> tuple[bytes, bool]:
        """`n` bytes of body, or fewer when they hold a whole JSON value followed by the next
        message's header (the length was too long: the header and what follows are kept for the
        next read). The flag says whether the body was cut short that way."""
        scanned = 0
        while True:
            starts = [m.start() for m in _HEADER_START.finditer(self._buf, max(0, scanned - len(HEADER)))]
            for start in starts:  # (listed first: the buffer cannot shrink while a search holds it)
                if start >= n:
                    break
                head = bytes(self._buf[:start])
                if head.strip() and _is_json(head):
                    del self._buf[:start]
                    return head, True
            scanned = len(self._buf)
            if len(self._buf) >= n:
                body = bytes(self._buf[:n])
                k = _header_prefix_at_end(body)
                if k and _is_json(body[:-k]):  # the next header begins just before the declared end
                    del self._buf[: n - k]
                    return body[:-k], True
                del self._buf[:n]
                return body, False
            if not await self._fill():
                body, self._buf = bytes(self._buf), bytearray()
                return body, False


HEADER = b"content-length:"


def _header_prefix_at_end(body: bytes) -> int:
    """How many bytes at the end of `body` begin a Content-Length header (0: none). A body that
    ends like a JSON object does not, and costs nothing more."""
    if body.rstrip().endswith((b"}", b"]")):
        return 0
    tail = body[-len(HEADER) :].lower()
    for k in range(min(len(HEADER), len(body)), 0, -1):
        if tail.endswith(HEADER[:k]):
            return k
    return 0


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def decode_body(body: bytes) -> str:
    """The body as text: UTF-8, with U+FFFD (and a warning) for bytes that are not."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        log.warning("a message that is not UTF-8 (%s): bad bytes read as U+FFFD", exc.reason)
        return body.decode("utf-8", errors="replace")


async def run(reader: FrameReader, protocol: Any, stop: Any, on_error: Callable[[Exception, Any], None]) -> None:
    """Read messages until the stream ends or `stop` is set, and hand each to `protocol`."""
    while not stop.is_set():
        length: int | None = None
        bad: bytes | None = None
        while True:  # headers, up to the blank line
            line = await reader.readline()
            if not line:
                return
            if not line.strip():
                if length is not None or bad is not None:
                    break
                continue  # stray blank lines between messages
            m = _LENGTH.search(line)
            if m is None:
                continue  # Content-Type and other headers, or junk
            if m.start() > 0 and line[: m.start()].strip():
                log.warning(
                    "skipped %d bytes before a message header (the previous Content-Length was short?)", m.start()
                )
            value = m.group(1).strip()
            if value.isdigit():
                length, bad = int(value), None
            else:
                length, bad = None, value[:40]
        if length is None:
            shown = bad.decode("ascii", errors="replace") if bad is not None else ""
            error = FrameError(f"Content-Length {shown!r} is not a number of bytes: the message was skipped")
            log.warning("%s", error)
            on_error(error, None)
            continue
        body, cut = await reader.read_body(length)
        if cut:
            log.warning("Content-Length %d was more than the message's %d bytes: read to its end", length, len(body))
        try:
            message = json.loads(decode_body(body), object_hook=protocol.structure_message)
        except Exception as exc:  # noqa: BLE001 - answered (ParseError) or logged by the server
            on_error(exc, None)
            continue
        try:
            protocol.handle_message(message)
        except Exception as exc:  # noqa: BLE001 - one message must never end the loop
            log.exception("could not handle a message")
            on_error(exc, None)
        # Let the task this message started take its first step (where a request reads the
        # document) before the next message, already buffered, changes the document.
        await asyncio.sleep(0)


# -- the transports: pygls's stdio and TCP servers with this reader -----------------------------------------


def serve_stdio(server: Any, stdin: Any = None, stdout: Any = None) -> None:
    """LanguageServer.start_io's loop (pygls 2) with FrameReader; reads run on the server's pool."""
    import sys
    from threading import Event

    from pygls.io_ import StdoutWriter

    server._stop_event = Event()
    source = stdin or sys.stdin.buffer
    read1 = getattr(source, "read1", source.read)
    pool = server.thread_pool

    async def read_some(n: int) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(pool, read1, n)

    server.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
    try:
        asyncio.run(run(FrameReader(read_some), server.protocol, server._stop_event, server._report_server_error))
    except BrokenPipeError:
        log.error("the connection to the client is lost: shutting down")
    except (KeyboardInterrupt, SystemExit):
        pass
    except Exception:
        log.exception("the message loop failed")
        raise
    finally:
        server.shutdown()


def serve_tcp(server: Any, host: str, port: int) -> None:
    """LanguageServer.start_tcp (pygls 2) with FrameReader: one client, then the server ends."""
    from threading import Event

    server._stop_event = stop = Event()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.protocol.set_writer(writer)
        await run(FrameReader(reader.read), server.protocol, stop, server._report_server_error)
        server.shutdown()

    async def listen() -> None:
        server._server = await asyncio.start_server(connection, host, port)
        async with server._server:
            await server._server.serve_forever()

    try:
        asyncio.run(listen())
    except asyncio.CancelledError:
        log.debug("the TCP server was cancelled")
