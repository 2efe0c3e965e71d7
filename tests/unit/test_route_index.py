"""The route index finds, for every route of the gateway and every method, the route a full scan finds, and the
routes put on the application's router directly describe the same API as included routers did."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import BaseRoute, Match

from gateway.app import ROUTERS, create_app
from gateway.route_index import RouteIndex
from libs.common.config import GatewaySettings

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(GatewaySettings())


def _scope(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "query_string": b""}


def _full_scan(routes: list[BaseRoute], scope: dict[str, Any]) -> BaseRoute | None:
    for route in routes:
        if route.matches(scope)[0] is Match.FULL:
            return route
    return None


def _indexed(index: RouteIndex, scope: dict[str, Any]) -> BaseRoute | None:
    for route in index.candidates(scope):
        if route.matches(scope)[0] is Match.FULL:
            return route
    return None


def _paths(app: FastAPI) -> list[str]:
    """A concrete path for every route, and near misses: a trailing slash, one segment more, one less."""
    templates = [getattr(route, "path", "/") for route in app.routes]
    concrete = [re.sub(r"\{[^}]+\}", "0a1b2c3d-0000-7000-8000-000000000000", path) for path in templates]
    misses = [f"{path}/" for path in concrete] + [f"{path}/extra" for path in concrete]
    misses += [path.rsplit("/", 1)[0] or "/" for path in concrete]
    return concrete + misses + ["/", "/api", "/api/v2", "/api/v2/nothing", "/docs/assets/0.0.0/swagger-ui.css"]


def test_every_request_finds_the_route_a_full_scan_finds(app: FastAPI) -> None:
    index = app.router.middleware_stack
    assert isinstance(index, RouteIndex)
    checked = 0
    for path in _paths(app):
        for method in METHODS:
            scope = _scope(method, path)
            assert _indexed(index, scope) is _full_scan(app.router.routes, scope), (method, path)
            checked += 1
    assert checked > 500


def test_the_hot_reads_try_one_route_or_a_few(app: FastAPI) -> None:
    index = app.router.middleware_stack
    assert isinstance(index, RouteIndex)
    assert len(index.candidates(_scope("GET", "/api/v2/auth/me"))) == 1
    assert len(index.candidates(_scope("GET", "/api/v2/analyses/0a1b2c3d"))) < len(app.routes) / 4


def test_the_api_is_the_one_included_routers_described(app: FastAPI) -> None:
    included = FastAPI(title=app.title, version=app.version, description=app.description)
    for router in ROUTERS:
        included.include_router(router)
    ours, theirs = app.openapi(), included.openapi()
    assert len(ours["paths"]) > 20
    assert ours["paths"] == theirs["paths"]
    assert ours["components"] == theirs["components"]


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def test_what_no_route_takes_is_answered_as_before(client: httpx.AsyncClient) -> None:
    wrong_method = await client.get("/api/v2/auth/login")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"]["code"].startswith("ERR_")
    unknown = await client.get("/api/v2/nothing")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "ERR_REQUEST_001"
    assert (await client.get("/health/live")).status_code == 200
