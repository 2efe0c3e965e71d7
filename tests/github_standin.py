"""A stand-in of GitHub's REST API on 127.0.0.1, for the commit statuses workers post: it takes
`POST /repos/{owner}/{repo}/statuses/{sha}` as GitHub documents it, checks the token, the headers and the body's
shape as GitHub would (401 for another token, 422 for a bad state or a description over 140 characters), and
keeps what it took."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

_STATUSES = re.compile(r"^/repos/(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+)/statuses/(?P<sha>[0-9a-f]{40})$")
_STATES = {"error", "failure", "pending", "success"}


@dataclass(frozen=True)
class ReceivedStatus:
    full_name: str
    sha: str
    body: dict[str, Any]
    authorization: str


class GitHubStandIn:
    def __init__(self, *, token: str) -> None:
        self.token = token
        self.statuses: list[ReceivedStatus] = []
        self.refused: list[tuple[int, str]] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                found = _STATUSES.fullmatch(self.path)
                if found is None:
                    standin.refused.append((404, self.path))
                    self._answer(404, {"message": "Not Found"})
                    return
                authorization = self.headers.get("Authorization", "")
                if authorization not in (f"Bearer {standin.token}", f"token {standin.token}"):
                    standin.refused.append((401, self.path))
                    self._answer(401, {"message": "Bad credentials"})
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    standin.refused.append((400, self.path))
                    self._answer(400, {"message": "Problems parsing JSON"})
                    return
                if (
                    body.get("state") not in _STATES
                    or len(str(body.get("description", ""))) > 140
                    or not str(body.get("target_url", "")).startswith(("http://", "https://"))
                ):
                    standin.refused.append((422, self.path))
                    self._answer(422, {"message": "Validation Failed"})
                    return
                full_name = f"{found['owner']}/{found['repo']}"
                standin.statuses.append(ReceivedStatus(full_name, found["sha"], body, authorization))
                self._answer(201, {"id": len(standin.statuses), "state": body["state"], "context": body.get("context")})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
