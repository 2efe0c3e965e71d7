"""The CLI's view of the RepoLens API: one httpx client, the error contract turned into exit codes, and where the
URL and the token come from."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# Documented in docs/ci.md; tests/e2e/test_cli.py produces each of them.
EXIT_PASSED = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_ANALYSIS_FAILED = 3
EXIT_TIMEOUT = 4
EXIT_UNREACHABLE = 5

DEFAULT_URL = "http://localhost:8000"
# Every request has a deadline: a hung server is an unreachable one, never a job stuck forever.
REQUEST_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# While waiting, a gateway that stops answering (a restart, a rolling update) is tried again for this long.
RETRY_FOR_S = 20.0


class CliError(Exception):
    """Ends the command with `exit_code` after printing `message`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def config_path() -> Path:
    """`$XDG_CONFIG_HOME/repolens/config.json` (or ~/.config): where `repolens login` keeps the URL and the token."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "repolens" / "config.json"


def load_config() -> dict[str, str]:
    path = config_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}", EXIT_USAGE) from None
    return (
        {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(data, dict) else {}
    )


def save_config(url: str, token: str) -> Path:
    """Written with 0600 from the start: the token is never readable by others, not even for an instant."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        json.dump({"url": url, "token": token}, out)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    return path


@dataclass(frozen=True)
class Target:
    url: str
    token: str


def resolve(url: str | None, token: str | None) -> Target:
    """Flags first, then REPOLENS_URL / REPOLENS_TOKEN, then what `repolens login` saved."""
    saved = load_config() if url is None or token is None else {}
    chosen_url = url or os.environ.get("REPOLENS_URL") or saved.get("url") or DEFAULT_URL
    chosen_token = token or os.environ.get("REPOLENS_TOKEN") or saved.get("token")
    if not chosen_token:
        raise CliError("no token: pass --token, set REPOLENS_TOKEN, or run `repolens login`", EXIT_USAGE)
    return Target(url=chosen_url.rstrip("/"), token=chosen_token)


def _message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        text = f"{error['code']}: {error['message']}"
        details = error.get("details")
        return f"{text} {json.dumps(details)}" if details else text
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


class Api:
    """Calls with the token; errors of the API become CliErrors with the documented exit code."""

    def __init__(self, target: Target, *, transport: httpx.BaseTransport | None = None):
        self.target = target
        self._http = httpx.Client(
            base_url=target.url,
            headers={"Authorization": f"Bearer {target.token}", "User-Agent": "repolens-cli"},
            timeout=REQUEST_TIMEOUT,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, retry: bool = False, **kwargs: Any) -> httpx.Response:
        """One call; with `retry`, a server that is away or answers 503 is tried again for RETRY_FOR_S (only for
        reads: a write is never sent twice)."""
        deadline = time.monotonic() + (RETRY_FOR_S if retry else 0.0)
        pause = 0.5
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if time.monotonic() + pause < deadline:
                    time.sleep(pause)
                    pause = min(pause * 2, 4.0)
                    continue
                raise CliError(f"cannot reach {self.target.url}: {exc.__class__.__name__}", EXIT_UNREACHABLE) from None
            if response.status_code in (502, 503, 504) and time.monotonic() + pause < deadline:
                time.sleep(pause)
                pause = min(pause * 2, 4.0)
                continue
            break
        if response.status_code < 400:
            return response
        if response.status_code in (401, 403):
            raise CliError(f"not allowed: {_message(response)}", EXIT_USAGE)
        if response.status_code >= 500:
            raise CliError(f"the server failed: {_message(response)}", EXIT_UNREACHABLE)
        raise CliError(_message(response), EXIT_USAGE)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def pages(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a list, page after page."""
        cursor: str | None = None
        while True:
            query = {**params, "limit": 100, **({"cursor": cursor} if cursor else {})}
            page = self.json("GET", path, params=query, retry=True)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return
