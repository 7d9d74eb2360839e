"""A fault-injecting HTTP proxy in front of a real S3 server (moto's), for tests.

Every request is forwarded to the server on a fresh connection and the response relayed, one request per
client connection. GET requests are numbered; with ``fail_every=m`` every m-th GET is answered 503 SlowDown
without reaching the server (botocore retries it), and with ``cut_every=n`` every n-th GET has its response
relayed only up to ``cut_after`` bytes of body before both connections are closed (the client sees a broken
body mid-stream and has to resume it). The counters say how many faults were injected. With
``strip_if_match=True`` the If-Match header is dropped from requests, as a server that ignores it would (the
reader must then notice a replaced object by its ETag). While the proxy runs, AWS_ENDPOINT_URL_S3 points at
it and uda_dist.data.s3 makes new clients.
"""
from __future__ import annotations

import itertools
import os
import socket
import socketserver
import threading
import urllib.parse


SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")


class FaultProxy:
    def __init__(self, upstream: str, *, cut_every: int = 0, fail_every: int = 0, cut_after: int = 100_000,
                 strip_if_match: bool = False):
        parsed = urllib.parse.urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.cut_every, self.fail_every, self.cut_after = cut_every, fail_every, cut_after
        self.strip_if_match = strip_if_match
        self.cuts = self.failures = self.gets = 0
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._saved: str | None = None

    def __enter__(self) -> "FaultProxy":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self._saved = os.environ.get("AWS_ENDPOINT_URL_S3")
        os.environ["AWS_ENDPOINT_URL_S3"] = self.url
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is None:
            os.environ.pop("AWS_ENDPOINT_URL_S3", None)
        else:
            os.environ["AWS_ENDPOINT_URL_S3"] = self._saved
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        head = _read_head(reader)
        if head is None:
            return
        method = head.split(b" ", 1)[0]
        if b"\r\nexpect: 100-continue" in head.lower():  # botocore's PUTs wait a second for this otherwise
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            head = _without_header(head, b"expect")
        length = _content_length(head)
        body = reader.read(length) if length else b""
        fault = self._fault() if method == b"GET" else None
        if fault == "fail":
            conn.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
                         + f"Content-Length: {len(SLOW_DOWN)}\r\n\r\n".encode() + SLOW_DOWN)
            return
        if self.strip_if_match:
            head = _without_header(head, b"if-match")
        response = self._forward(_with_connection_close(head) + body)
        if fault == "cut":
            end = response.index(b"\r\n\r\n") + 4
            response = response[: end + self.cut_after]
        conn.sendall(response)
        conn.shutdown(socket.SHUT_RDWR)

    def _fault(self) -> str | None:
        with self._lock:
            number = next(self._numbers)
            self.gets += 1
            if self.fail_every and number % self.fail_every == 0:
                self.failures += 1
                return "fail"
            if self.cut_every and number % self.cut_every == 0:
                self.cuts += 1
                return "cut"
        return None

    def _forward(self, request: bytes) -> bytes:
        with socket.create_connection(self.upstream) as upstream:
            upstream.sendall(request)
            chunks = []
            while chunk := upstream.recv(1 << 20):
                chunks.append(chunk)
        return _with_connection_close(b"".join(chunks))


def _read_head(reader) -> bytes | None:
    lines = []
    while True:
        line = reader.readline()
        if not line:
            return None
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _with_connection_close(message: bytes) -> bytes:
    """The message with its Connection header set to close (one request per connection)."""
    message = _without_header(message, b"connection")
    end = message.index(b"\r\n\r\n")
    return message[:end] + b"\r\nConnection: close" + message[end:]


def _without_header(message: bytes, name: bytes) -> bytes:
    """The message without the header ``name`` (lower case) in its head."""
    end = message.index(b"\r\n\r\n")
    lines = [line for line in message[:end].split(b"\r\n") if not line.lower().startswith(name + b":")]
    return b"\r\n".join(lines) + message[end:]
