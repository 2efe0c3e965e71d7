"""A stand-in for the Anthropic Messages and OpenAI Chat Completions APIs on 127.0.0.1, answering in their wire
formats (bodies, error shapes, status codes, `retry-after`), so the tests drive the real SDKs end to end.

What it answers depends on the API key of the request (see `behave`): tests sharing one stand-in, each with a
tenant and key of its own, never disturb each other."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

ANTHROPIC_PATH = "/v1/messages"
OPENAI_PATH = "/v1/chat/completions"
REVIEW_TEXT = "## Review\n\nStart with the long file; then split the most complex function."

# What the stand-in does for a key: answer, or fail the way each API fails.
OK = "ok"
RATE_LIMITED = "rate_limited"  # 429 with retry-after
SERVER_ERROR = "server_error"  # 500
OVERLOADED = "overloaded"  # 529 (Anthropic's "overloaded_error"; OpenAI answers 503 for the same)
BAD_KEY = "bad_key"  # 401
SLOW = "slow"  # sleeps `delay_s` before answering (past the client's timeout)


@dataclass(frozen=True)
class Behaviour:
    kind: str = OK
    text: str = REVIEW_TEXT
    retry_after: str = "1"
    delay_s: float = 0.0


@dataclass
class Received:
    """One request as it arrived, and the usage the stand-in answered with (on success)."""

    api: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    usage: tuple[int, int] | None = None

    @property
    def key(self) -> str:
        """The credential the SDK sent: Anthropic's SDK sends `Authorization: Bearer`, the API also takes
        `x-api-key`; OpenAI's sends `Authorization: Bearer`."""
        authorization = self.headers.get("authorization", "")
        if authorization.startswith("Bearer "):
            return authorization.removeprefix("Bearer ")
        return self.headers.get("x-api-key", "")

    @property
    def system(self) -> str:
        if self.api == "anthropic":
            return str(self.body.get("system", ""))
        return next((str(m["content"]) for m in self.body.get("messages", []) if m.get("role") == "system"), "")

    @property
    def user(self) -> str:
        return next((str(m["content"]) for m in self.body.get("messages", []) if m.get("role") == "user"), "")


@dataclass
class _State:
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": f"req_{uuid.uuid4().hex}"}


def _openai_error(message: str, kind: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _anthropic_answer(request: Received, behaviour: Behaviour) -> tuple[int, dict[str, str], dict[str, Any]]:
    key = request.key
    if behaviour.kind == BAD_KEY:
        # Echoes the key on purpose: the worst a provider could do, which the review must not store or log.
        return 401, {}, _anthropic_error("authentication_error", f"invalid x-api-key {key}")
    if behaviour.kind == RATE_LIMITED:
        headers = {"retry-after": behaviour.retry_after, "anthropic-ratelimit-requests-remaining": "0"}
        return (
            429,
            headers,
            _anthropic_error("rate_limit_error", f"Number of requests has exceeded your rate limit ({key})"),
        )
    if behaviour.kind == SERVER_ERROR:
        return 500, {}, _anthropic_error("api_error", "Internal server error")
    if behaviour.kind == OVERLOADED:
        return 529, {}, _anthropic_error("overloaded_error", "Overloaded")
    if "anthropic-version" not in request.headers:
        return 400, {}, _anthropic_error("invalid_request_error", "anthropic-version: header is required")
    usage = (_tokens(request.system + request.user), _tokens(behaviour.text))
    request.usage = usage
    return (
        200,
        {},
        {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": request.body["model"],
            "content": [{"type": "text", "text": behaviour.text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": usage[0],
                "output_tokens": usage[1],
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "service_tier": "standard",
            },
        },
    )


def _openai_answer(request: Received, behaviour: Behaviour) -> tuple[int, dict[str, str], dict[str, Any]]:
    key = request.key
    if behaviour.kind == BAD_KEY:
        message = f"Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys."
        return 401, {}, _openai_error(message, "invalid_request_error", "invalid_api_key")
    if behaviour.kind == RATE_LIMITED:
        headers = {"retry-after": behaviour.retry_after, "x-ratelimit-remaining-requests": "0"}
        message = f"Rate limit reached for requests ({key}). Please try again in 1s."
        return 429, headers, _openai_error(message, "requests", "rate_limit_exceeded")
    if behaviour.kind == SERVER_ERROR:
        message = "The server had an error while processing your request. Sorry about that!"
        return 500, {}, _openai_error(message, "server_error", None)
    if behaviour.kind == OVERLOADED:
        message = "The engine is currently overloaded, please try again later."
        return 503, {}, _openai_error(message, "server_error", None)
    usage = (_tokens(request.system + request.user), _tokens(behaviour.text))
    request.usage = usage
    return (
        200,
        {},
        {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": behaviour.text, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": usage[0],
                "completion_tokens": usage[1],
                "total_tokens": usage[0] + usage[1],
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": None,
        },
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read `received`, not an access log."""

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        api = {ANTHROPIC_PATH: "anthropic", OPENAI_PATH: "openai"}.get(self.path)
        state = self.server.state
        if api is None:
            self._send("openai", 404, {}, _openai_error(f"Unknown path {self.path}", "invalid_request_error", None))
            return
        request = Received(api, self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(raw or b"{}"))
        with state.lock:
            state.received.append(request)
            behaviour = state.behaviours.get(request.key, Behaviour())
        answer = _anthropic_answer if api == "anthropic" else _openai_answer
        if not request.key:
            body = (
                _anthropic_error("authentication_error", "x-api-key header is required")
                if api == "anthropic"
                else _openai_error("You didn't provide an API key.", "invalid_request_error", None)
            )
            self._send(api, 401, {}, body)
            return
        if behaviour.kind == SLOW:
            state.closing.wait(behaviour.delay_s)
            behaviour = Behaviour(text=behaviour.text)
        self._send(api, *answer(request, behaviour))

    def _send(self, api: str, status: int, headers: dict[str, str], body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.send_header("request-id" if api == "anthropic" else "x-request-id", f"req_{uuid.uuid4().hex}")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): what a slow answer is for


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class LlmStandIn:
    """Both APIs on one ephemeral port, served by a thread; `with LlmStandIn() as api:`."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = _State()
        self._thread = threading.Thread(target=self._server.serve_forever, name="llm-stand-in", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        """OpenAI's base URL includes the version (the SDK's default is https://api.openai.com/v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def behave(self, key: str, behaviour: Behaviour) -> None:
        with self._server.state.lock:
            self._server.state.behaviours[key] = behaviour

    def received(self, key: str | None = None) -> list[Received]:
        """Requests so far, those made with `key` only when given."""
        with self._server.state.lock:
            return [r for r in self._server.state.received if key is None or r.key == key]

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.state.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
