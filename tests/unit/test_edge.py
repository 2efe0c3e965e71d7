"""The HTTP edge in-process (no services behind it): security headers, limits, hosts, CORS, proxies, /docs."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI, Request

from gateway.app import create_app
from gateway.edge import SWAGGER_UI
from gateway.middleware import API_CSP, host_allowed
from gateway.ratelimit import client_address
from libs.common.config import GatewaySettings

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}

AppFactory = Callable[..., FastAPI]


def _app(**settings: Any) -> FastAPI:
    app = create_app(GatewaySettings(**settings))

    @app.get("/test/crash")
    async def crash() -> None:
        raise RuntimeError("boom")

    @app.get("/test/client")
    async def client(request: Request) -> dict[str, str]:
        return {"address": client_address(request), "scheme": request.url.scheme}

    return app


@pytest.fixture
async def call() -> AsyncIterator[Callable[..., Any]]:
    """`await call(app_settings..., method, path, **httpx_kwargs)` through an in-process ASGI transport."""
    clients: list[httpx.AsyncClient] = []

    async def send(method: str, path: str, *, settings: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        transport = httpx.ASGITransport(app=_app(**(settings or {})), raise_app_exceptions=False)
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        clients.append(client)
        return await client.request(method, path, **kwargs)

    yield send
    for client in clients:
        await client.aclose()


def assert_secured(response: httpx.Response, *, request_id: bool = True) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.status_code, name, dict(response.headers))
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    if request_id:
        assert response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/health/live", {}, 200),
        ("GET", "/api/v2/nothing", {}, 404),
        ("GET", "/api/v2/auth/login", {}, 405),
        ("POST", "/api/v2/auth/login", {"content": b"x=1", "headers": {"Content-Type": "text/plain"}}, 415),
        ("GET", "/test/crash", {}, 500),
    ],
)
async def test_every_answer_carries_the_security_headers(
    call: Callable[..., Any], method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = await call(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert_secured(response)
    assert response.headers["content-security-policy"] == API_CSP
    assert "strict-transport-security" not in response.headers  # development: no HSTS


async def test_a_two_megabyte_body_gets_413_with_the_headers(call: Callable[..., Any]) -> None:
    body = b'{"username": "' + b"a" * 2_000_000 + b'", "password": "x"}'
    response = await call("POST", "/api/v2/auth/login", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "ERR_REQUEST_003"
    assert_secured(response)
    assert response.headers["cache-control"] == "no-store"


async def test_a_crash_answers_the_contract_without_detail(call: Callable[..., Any]) -> None:
    response = await call("GET", "/test/crash")
    assert response.json()["error"]["code"] == "ERR_INTERNAL_000"
    assert "boom" not in response.text
    assert response.json()["error"]["request_id"] == response.headers["x-request-id"]


async def test_api_answers_are_not_cached_but_public_keys_may_be(call: Callable[..., Any]) -> None:
    assert (await call("GET", "/api/v2/nothing")).headers["cache-control"] == "no-store"
    assert "cache-control" not in (await call("GET", "/health/live")).headers


async def test_docs_get_a_relaxed_policy_pinned_to_their_own_inline_script(call: Callable[..., Any]) -> None:
    response = await call("GET", "/docs")
    assert response.status_code == 200
    assert_secured(response)
    policy = response.headers["content-security-policy"]
    assert policy != API_CSP
    (script,) = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in policy
    assert "'unsafe-inline'" not in policy.split("script-src", 1)[1].split(";", 1)[0]
    # Only /docs is relaxed: the schema it loads keeps the strict one.
    assert (await call("GET", "/openapi.json")).headers["content-security-policy"] == API_CSP


async def test_docs_load_nothing_from_another_host(call: Callable[..., Any]) -> None:
    page = (await call("GET", "/docs")).text
    linked = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?["']([^"']+)["']""", page)
    urls = [url for pair in linked for url in pair if url]
    assert len(urls) >= 3  # the script, the style sheet, the icon (and the schema)
    assert all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    assert "http" not in (await call("GET", "/docs")).headers["content-security-policy"]
    for url in urls:
        if "/assets/" in url:
            asset = await call("GET", url)
            assert asset.status_code == 200
            assert asset.content == (SWAGGER_UI / url.rsplit("/", 1)[1]).read_bytes()
            assert "immutable" in asset.headers["cache-control"]
    assert "swagger-ui-bundle.js" in page


async def test_only_the_listed_docs_files_are_served(call: Callable[..., Any]) -> None:
    page = (await call("GET", "/docs")).text
    (script,) = re.findall(r"""src=["']([^"']*swagger-ui-bundle\.js)""", page)
    folder = script.rsplit("/", 1)[0]
    for name in ("index.html", "..%2F__init__.py", "swagger-ui.js.map"):
        answer = await call("GET", f"{folder}/{name}")
        assert answer.status_code == 404
        assert answer.json()["error"]["code"].startswith("ERR_")
    assert (await call("GET", folder.rsplit("/", 1)[0] + "/0.0.0/swagger-ui.css")).status_code == 404


async def test_hsts_only_in_production(call: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "ENVIRONMENT": "production",
        "DATABASE_URL": "postgresql://db/repolens",
        "NATS_URL": "nats://nats:4222",
        "REDIS_URL": "redis://redis:6379/0",
        "ALLOWED_HOSTS": '["testserver"]',
        "SERVICE_TOKEN": "g" * 40,
    }.items():
        monkeypatch.setenv(name, value)
    response = await call("GET", "/api/v2/nothing")
    assert response.headers["strict-transport-security"] == "max-age=63072000; includeSubDomains"


async def test_unknown_hosts_are_refused_except_for_probes(call: Callable[..., Any]) -> None:
    settings = {"allowed_hosts": ["api.example.com", "*.example.org"]}
    refused = await call("GET", "/test/client", settings=settings, headers={"Host": "evil.example.net"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "ERR_REQUEST_005"
    assert_secured(refused)
    served = await call("GET", "/test/client", settings=settings, headers={"Host": "api.example.com:443"})
    assert served.status_code == 200
    sub = await call("GET", "/test/client", settings=settings, headers={"Host": "eu.example.org"})
    assert sub.status_code == 200
    probe = await call("GET", "/health/live", settings=settings, headers={"Host": "10.1.2.3:8000"})
    assert probe.status_code == 200


@pytest.mark.parametrize(
    ("host", "allowed", "expected"),
    [
        ("api.example.com", ["api.example.com"], True),
        ("API.example.com", ["api.example.com"], False),  # _host() lowercases before this
        ("example.org", ["*.example.org"], False),
        ("a.b.example.org", ["*.example.org"], True),
        ("badexample.org", ["*.example.org"], False),
        ("anything", ["*"], True),
    ],
)
def test_host_patterns(host: str, allowed: list[str], expected: bool) -> None:
    assert host_allowed(host, allowed) is expected


async def test_long_urls_and_oversized_headers_are_refused(call: Callable[..., Any]) -> None:
    long_url = await call("GET", "/api/v2/repositories?name=" + "a" * 9000)
    assert long_url.status_code == 414
    assert long_url.json()["error"]["code"] == "ERR_REQUEST_006"
    assert_secured(long_url)
    big_header = await call("GET", "/health/live", headers={"X-Padding": "a" * 20_000})
    assert big_header.status_code == 431
    assert big_header.json()["error"]["code"] == "ERR_REQUEST_007"
    many = await call("GET", "/health/live", headers={f"X-H{i}": "1" for i in range(120)})
    assert many.status_code == 431
    assert_secured(many)


async def test_cors_grants_listed_origins_only(call: Callable[..., Any]) -> None:
    settings = {"cors_origins": ["https://app.example.com"]}
    allowed = await call("GET", "/health/live", settings=settings, headers={"Origin": "https://app.example.com"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "access-control-allow-credentials" not in allowed.headers
    other = await call("GET", "/health/live", settings=settings, headers={"Origin": "https://evil.example.net"})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers
    preflight_headers = {"Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"}
    preflight = await call("OPTIONS", "/api/v2/auth/login", settings=settings, headers=preflight_headers)
    assert "access-control-allow-origin" not in preflight.headers
    assert_secured(preflight, request_id=False)  # answered by the CORS layer, before request ids are given
    good_preflight = await call(
        "OPTIONS",
        "/api/v2/auth/login",
        settings=settings,
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert good_preflight.status_code == 200
    assert good_preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    # Errors carry the grant too, or a browser would hide the 404 (or 429) from the page.
    missing = await call("GET", "/api/v2/nothing", settings=settings, headers={"Origin": "https://app.example.com"})
    assert missing.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "retry-after" in missing.headers["access-control-expose-headers"].lower()


async def test_without_cors_origins_nobody_is_granted(call: Callable[..., Any]) -> None:
    response = await call("GET", "/health/live", headers={"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in response.headers


async def test_forwarded_for_counts_only_from_trusted_proxies(call: Callable[..., Any]) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    ignored = await call("GET", "/test/client", headers=forwarded)
    assert ignored.json() == {"address": "127.0.0.1", "scheme": "http"}  # the connection's own address
    trusted = await call("GET", "/test/client", settings={"trusted_proxies": ["127.0.0.0/8"]}, headers=forwarded)
    assert trusted.json() == {"address": "203.0.113.9", "scheme": "https"}
    # A client cannot prepend a chosen address: the rightmost untrusted hop is the client.
    chained = await call(
        "GET",
        "/test/client",
        settings={"trusted_proxies": ["127.0.0.1"]},
        headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.9"},
    )
    assert chained.json()["address"] == "203.0.113.9"


async def test_the_access_log_keeps_every_error_and_slow_answer_and_samples_the_rest(
    call: Callable[..., Any],
) -> None:
    def logged(path: str) -> list[int]:
        return [line["status"] for line in lines if line["event"] == "http.request" and line["path"] == path]

    quiet = {"access_log_sample_rate": 0.0}
    with structlog.testing.capture_logs() as lines:
        assert (await call("GET", "/health/live", settings=quiet)).status_code == 200
        assert (await call("GET", "/api/v2/nothing", settings=quiet)).status_code == 404
        assert (await call("GET", "/test/crash", settings=quiet)).status_code == 500
        assert (await call("GET", "/health/live", settings={**quiet, "access_log_slow_ms": 0})).status_code == 200
        assert (await call("GET", "/test/client", settings={"access_log_sample_rate": 1.0})).status_code == 200
    assert logged("/health/live") == [200]  # the slow one only
    assert logged("/api/v2/nothing") == [404]
    assert logged("/test/crash") == [500]
    assert logged("/test/client") == [200]
