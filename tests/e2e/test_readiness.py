"""Readiness follows the downstream services while the gateway keeps running."""

from __future__ import annotations

import time

import httpx

from libs.devstack.stack import Stack


def _ready(client: httpx.Client) -> httpx.Response:
    return client.get("/health/ready")


def _wait_for(client: httpx.Client, status: int, timeout_s: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        response = _ready(client)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_ready_answers_503_while_auth_is_down_and_200_after_it_restarts(stack: Stack) -> None:
    with httpx.Client(base_url=stack.gateway_url, timeout=10) as client:
        assert _ready(client).status_code == 200
        stack.stop_service("auth")
        try:
            down = _wait_for(client, 503)
            assert down.status_code == 503
            assert down.json()["checks"]["auth"] is False
            assert down.json()["checks"]["tenants"] is True
            assert client.get("/health/live").status_code == 200
            login = client.post("/api/v2/auth/login", json={"username": "anyone", "password": "whatever1"})
            assert login.status_code == 503
            assert login.json()["error"]["code"] == "ERR_UPSTREAM_001"
        finally:
            stack.start_service("auth")
        up = _wait_for(client, 200)
        assert up.status_code == 200
        assert up.json()["checks"] == {"auth": True, "tenants": True, "analysis": True, "keys": True}
        assert stack.is_running("gateway")
