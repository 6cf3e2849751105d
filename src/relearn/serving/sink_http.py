"""A minimal HTTP/1.1 client for the payload logger's sink: one kept-alive connection, one POST at a time.

A general-purpose client (httpx) costs a few hundred µs of CPU per request under the GIL, which the
serving process then lacks; the logger needs only POST and the status line.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from relearn.errors import Unavailable

_CLOSED = "connection closed by the sink"


class SinkError(Unavailable):
    """The sink refused an event or the connection failed."""


class SinkConnection:
    """One kept-alive HTTP/1.1 connection to the sink: ``post`` sends one request and reads its answer.

    Plain ``http://`` only (the sink is an in-cluster service); a connection the server closed while idle
    is reopened and the request sent again once (the server had not read it).
    """

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"payload-log sink must be an http:// URL, not {url!r}")
        self.host = parts.hostname or "localhost"
        self.port = parts.port or 80
        self.timeout = timeout
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        host = parts.netloc.rpartition("@")[2]
        self._prefix = f"POST {target} HTTP/1.1\r\nHost: {host}\r\n".encode("latin-1")
        self._sock: socket.socket | None = None
        self._buffer = b""

    def close(self) -> None:
        """Drop the connection (the next ``post`` opens a new one)."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buffer = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._buffer = sock, b""
        return sock

    def post(self, headers: dict[str, str], body: bytes) -> int:
        """POST one event; the HTTP status. Raises :class:`SinkError` (connection closed) or OSError."""
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = b"".join(
            (self._prefix, head.encode("utf-8"), b"Content-Length: %d\r\n\r\n" % len(body), body)
        )
        reused = self._sock is not None
        try:
            return self._exchange(request)
        except (SinkError, ConnectionError) as exc:
            self.close()
            stale = isinstance(exc, ConnectionError) or str(exc) == _CLOSED
            if not (reused and stale):
                raise
        except BaseException:
            self.close()
            raise
        try:
            return self._exchange(request)  # the idle connection had been closed by the server: once more
        except BaseException:
            self.close()
            raise

    def _exchange(self, request: bytes) -> int:
        sock = self._sock or self._connect()
        sock.sendall(request)
        head = self._read_until(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status_line = lines[0].split(None, 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
            raise SinkError(f"bad status line {lines[0][:80]!r}")
        status = int(status_line[1])
        length, chunked, close = None, False, status_line[0] == b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                token = value.strip().lower()
                close = token == b"close" or (close and token != b"keep-alive")
        if chunked:
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    while self._read_until(b"\r\n"):  # trailers, up to the empty line
                        pass
                    break
                self._take(size + 2)
        elif length is not None:
            self._take(length)
        elif status >= 200 and status not in (204, 304):
            close = True  # body delimited by closing the connection: we do not need it
        if close:
            self.close()
        return status

    def _recv(self) -> None:
        assert self._sock is not None
        data = self._sock.recv(65536)
        if not data:
            raise SinkError(_CLOSED)
        self._buffer += data

    def _read_until(self, marker: bytes) -> bytes:
        while (end := self._buffer.find(marker)) < 0:
            self._recv()
        out, self._buffer = self._buffer[:end], self._buffer[end + len(marker) :]
        return out

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._recv()
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out
