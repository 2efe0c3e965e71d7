"""A stand-in Sentry on 127.0.0.1: takes the envelopes the real sentry-sdk posts to `/api/<project>/envelope/`
(gzip or plain) and keeps the raw bytes and the decoded events, so a test can check both what arrived and what
did not (a secret anywhere in the payload)."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

PROJECT = "42"
PUBLIC_KEY = "0123456789abcdef0123456789abcdef"


def parse_envelope(body: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """(item header, payload) of every item; the first line is the envelope's own header."""
    items = []
    _, _, rest = body.partition(b"\n")
    while rest.strip():
        header_line, _, rest = rest.partition(b"\n")
        header = json.loads(header_line)
        length = header.get("length")
        if length is not None:
            payload, rest = rest[:length], rest[length + 1 :]
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((header, payload))
    return items


class SentryStandIn:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: list[bytes] = []
        self._events: list[dict[str, Any]] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                    body = gzip.decompress(body)
                known = self.path == f"/api/{PROJECT}/envelope/"
                if known:
                    events = [json.loads(p) for h, p in parse_envelope(body) if h.get("type") == "event"]
                    with standin._lock:
                        standin._bodies.append(body)
                        standin._events.extend(events)
                answer = json.dumps({"id": "0" * 32}).encode() if known else b""
                self.send_response(200 if known else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="sentry-standin", daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://{PUBLIC_KEY}@127.0.0.1:{self._server.server_address[1]}/{PROJECT}"

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def raw(self) -> bytes:
        """Everything received, decompressed: for checking that a value appears nowhere."""
        with self._lock:
            return b"\n".join(self._bodies)

    def wait_for(
        self, check: Callable[[dict[str, Any]], bool], *, timeout_s: float = 20.0, what: str = "an event"
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events():
                if check(event):
                    return event
            if time.monotonic() > deadline:
                seen = [
                    (e.get("tags", {}), e.get("exception", {}).get("values", [{}])[-1].get("type"))
                    for e in self.events()
                ]
                raise AssertionError(f"timed out waiting for {what}; received: {seen}")
            time.sleep(0.1)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
