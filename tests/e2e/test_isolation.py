"""Tenant isolation: tenant B's tokens get nothing of tenant A over every route that exists."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from gateway.app import create_app
from libs.common.config import GatewaySettings
from libs.devstack.stack import Stack
from tests.e2e.isolation import PUBLIC, ROUTES, Route, TwoTenants, two_tenants
from tests.e2e.people import error_code, organisation


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as http:
        yield http


@pytest.fixture(scope="module")
def world(client: httpx.Client) -> TwoTenants:
    return two_tenants(client)


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def test_every_route_is_classified() -> None:
    paths = create_app(GatewaySettings()).openapi()["paths"]
    api = {
        (method.upper(), _shape(path)) for path, item in paths.items() if path.startswith("/api/") for method in item
    }
    classified = {(method, _shape(path)) for method, path in PUBLIC} | {
        (r.method, _shape(r.path.split("?")[0])) for r in ROUTES
    }
    assert api - classified == set(), "classify new routes in tests/e2e/isolation.py"
    assert classified - api == set(), "tests/e2e/isolation.py lists routes that no longer exist"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_other_tenants_token_gets_nothing(route: Route, world: TwoTenants, client: httpx.Client) -> None:
    before = world.snapshot()
    markers = world.a_markers()
    caller = organisation(client, roles=("owner",))["owner"] if route.destructive else world.b["owner"]
    response = route.call(caller, world.values)
    if route.addressed:
        assert response.status_code == 404, response.text
        assert error_code(response).startswith(("ERR_TENANT_", "ERR_REPO_", "ERR_ANALYSIS_", "ERR_AUTH_014"))
    else:
        assert response.status_code < 400 or response.status_code == 409, response.text
    for marker in markers:
        assert marker not in response.text, f"tenant A's {marker!r} leaked"
    assert world.snapshot() == before, "tenant A changed"
