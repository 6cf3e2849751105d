"""The payload logger's hand-written HTTP/1.1 client (relearn.serving.sink_http), against a real TCP server.

The server is scripted at the byte level, so each framing the client must read is exact: Content-Length,
chunked with trailers, a body delimited by closing, HTTP/1.0, ``Connection: close``, a server that drops an
idle kept-alive connection, and garbage.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator

import pytest

from relearn.demo.stack import free_port
from relearn.serving.sink_http import SinkConnection, SinkError

OK = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok"


class Scripted(socketserver.ThreadingTCPServer):
    """Answers each request with the next scripted reply; records (connection number, request)."""

    daemon_threads = allow_reuse_address = True

    def __init__(self, replies: list[bytes]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.replies, self.requests, self.connections = list(replies), [], 0
        self.close_after: set[int] = set()  # reply indexes after which the server closes the connection


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: Scripted = self.server  # type: ignore[assignment]
        server.connections += 1
        number, buffer = server.connections, b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = self.request.recv(65536)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            while len(buffer) < length:
                buffer += self.request.recv(65536)
            body, buffer = buffer[:length], buffer[length:]
            index = len(server.requests)
            server.requests.append((number, head.decode(), body))
            self.request.sendall(server.replies[index])
            if index in server.close_after:
                return


@pytest.fixture
def serve() -> Iterator:
    servers: list[Scripted] = []

    def start(*replies: bytes) -> Scripted:
        server = Scripted(list(replies))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _url(server: Scripted, path: str = "/") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_posts_reuse_one_kept_alive_connection_and_send_the_exact_request(serve) -> None:
    server = serve(OK, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nnope!")
    conn = SinkConnection(_url(server, "/events?x=1"), timeout=5)
    assert conn.post({"ce-id": "1", "Content-Type": "application/json"}, b'{"a": 1}') == 202
    assert conn.post({"ce-id": "2"}, b"{}") == 400  # a refusal is a status, not an exception
    assert [number for number, _, _ in server.requests] == [1, 1]
    head, body = server.requests[0][1], server.requests[0][2]
    lines = head.split("\r\n")
    port = server.server_address[1]
    assert lines[0] == "POST /events?x=1 HTTP/1.1" and f"Host: 127.0.0.1:{port}" in lines
    assert "ce-id: 1" in lines and "Content-Length: 8" in lines and body == b'{"a": 1}'
    conn.close()


def test_chunked_bodies_with_trailers_are_read_to_their_end(serve) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
    server = serve(chunked, OK)
    conn = SinkConnection(_url(server), timeout=5)
    assert conn.post({}, b"1") == 200
    assert conn.post({}, b"2") == 202  # the first body was consumed exactly: the second status parses
    assert [number for number, _, _ in server.requests] == [1, 1]


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",  # HTTP/1.0: closed unless keep-alive
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",  # no length: the body runs to the close
    ],
)
def test_a_reply_that_ends_the_connection_makes_the_next_post_open_a_new_one(serve, reply) -> None:
    server = serve(reply, OK)
    server.close_after = {0}
    conn = SinkConnection(_url(server), timeout=5)
    assert conn.post({}, b"1") == 200
    assert conn.post({}, b"2") == 202
    assert [number for number, _, _ in server.requests] == [1, 2]


def test_an_idle_connection_the_server_dropped_is_reopened_and_the_event_sent_once(serve) -> None:
    server = serve(OK, OK)
    server.close_after = {0}  # the server closes right after answering, as an idle timeout would
    conn = SinkConnection(_url(server), timeout=5)
    assert conn.post({}, b"first") == 202
    assert conn.post({}, b"second") == 202
    assert [(number, body) for number, _, body in server.requests] == [(1, b"first"), (2, b"second")]


def test_garbage_and_refused_connections_raise_and_leave_no_half_open_connection(serve) -> None:
    server = serve(b"SMTP ready\r\n\r\n")
    conn = SinkConnection(_url(server), timeout=5)
    with pytest.raises(SinkError, match="bad status line"):
        conn.post({}, b"x")
    assert conn._sock is None  # dropped: the next post starts clean
    with pytest.raises(OSError):  # nothing listens on a free port
        SinkConnection(f"http://127.0.0.1:{free_port()}/", timeout=2).post({}, b"x")
    with pytest.raises(ValueError, match="http://"):
        SinkConnection("https://sink.example/", timeout=1)
