"""A proxy in front of an S3 server (moto's) that injects faults, from a fixed seed.

Each request passes, or with probability ``rate`` gets one fault: a 503 SlowDown or a 500
InternalError answered by the proxy, a connection dropped before the request reaches the
server, a connection dropped after the server applied it (the answer is lost), or a delay.
Requests whose path starts with ``fail_prefix`` always get a 503. Counts of requests and of
each fault are kept for the test to report.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("slowdown", "internal_error", "drop_before", "drop_after", "delay")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te",
              "trailer", "upgrade"}  # fmt: skip
S3_ERROR = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            "<Message>{message}</Message></Error>")  # fmt: skip


class FaultProxy:
    """``with FaultProxy(upstream, rate, seed) as proxy:`` serves on ``proxy.url``."""

    def __init__(
        self, upstream: str, rate: float = 0.0, seed: int = 0, fail_prefix: str | None = None,
        delay_s: float = 0.5,
    ) -> None:  # fmt: skip
        self.upstream = urlsplit(upstream)
        self.rate, self.fail_prefix, self.delay_s = rate, fail_prefix, delay_s
        self.random = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self._failed: set[tuple[str, str]] = set()  # requests that got a fault, until retried
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def decide(self, method: str, path: str) -> str:
        """This request's fate: ``pass``, ``always_503`` or one of :data:`FAULTS`. A request
        for what an earlier one failed on counts as a retry."""
        with self._lock:
            self.counts["requests"] += 1
            if (method, path) in self._failed:
                self._failed.discard((method, path))
                self.counts["retries"] += 1
            if self.fail_prefix and path.split("?", 1)[0].startswith(self.fail_prefix):
                fate = "always_503"
            elif self.random.random() < self.rate:
                fate = self.random.choice(FAULTS)
            else:
                fate = "pass"
            self.counts[fate] += 1
            if fate not in ("pass", "delay", "drop_after"):  # the client must ask again
                self._failed.add((method, path))
            return fate

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes | None):
        """The upstream server's answer: ``(status, headers, body)``."""
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port,
                                                timeout=60)  # fmt: skip
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _body(self) -> bytes | None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            def _drop(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):  # the client may have gone already
                    self.connection.shutdown(socket.SHUT_RDWR)

            def _answer(self, status: int, headers: list, body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                length = dict((k.lower(), v) for k, v in headers).get("content-length")
                head = self.command == "HEAD"
                self.send_header("Content-Length", length if head and length else str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _error(self, status: int, code: str, message: str) -> None:
                body = S3_ERROR.format(code=code, message=message).encode()
                self._answer(status, [("Content-Type", "application/xml")], body)

            def _handle(self) -> None:
                body = self._body()
                fate = proxy.decide(self.command, self.path)
                if fate in ("always_503", "slowdown"):
                    return self._error(503, "SlowDown", "Please reduce your request rate.")
                if fate == "internal_error":
                    return self._error(500, "InternalError", "We encountered an internal error.")
                if fate == "drop_before":
                    return self._drop()
                if fate == "delay":
                    time.sleep(proxy.delay_s)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                status, answer_headers, answer = proxy.forward(self.command, self.path, headers,
                                                               body)  # fmt: skip
                if fate == "drop_after":  # the server applied it; its answer is lost
                    return self._drop()
                self._answer(status, answer_headers, answer)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        return Handler
