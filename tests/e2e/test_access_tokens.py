"""Personal access tokens through the whole stack: created once, used like a login's token within their scopes and
the creator's current role, and ended within a second by a revocation, an expiry, a demotion or a removal."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from libs.common import access_tokens
from libs.devstack.stack import GATEWAY, GRPC_SERVICES, WORKER, Stack
from tests.e2e.analysis_repos import git_repository
from tests.e2e.people import Person, bearer, deactivate, error_code, expect, found, join, ready_for_analysis, register

EVERY_SCOPE = ["analysis:read", "analysis:run", "repositories:write", "settings:read"]


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as http:
        yield http


def _create(person: Person, scopes: list[str], *, days: int = 30, name: str = "ci") -> dict[str, Any]:
    return dict(
        expect(person.post("/api/v2/tokens", json={"name": name, "scopes": scopes, "expires_in_days": days}), 201)
    )


def _within(seconds: float, check: Callable[[], bool]) -> float:
    """How long `check` took to hold; fails past `seconds`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - start


def _repository(owner: Person, tmp_path: Path) -> dict[str, Any]:
    source = git_repository(tmp_path / "project", {"app.py": "def f(x):\n    return x + 1\n"})
    return dict(expect(owner.post("/api/v2/repositories", json={"name": "pat-repo", "url": str(source)}), 201))


def test_a_token_is_shown_once_listed_without_itself_and_well_formed(client: httpx.Client) -> None:
    person = register(client)
    created = _create(person, ["analysis:read"], days=7, name="nightly")
    token = created["token"]
    assert access_tokens.looks_like_token(token)
    assert token.startswith("rlp_")
    assert created["prefix"] == token[:8]
    assert created["scopes"] == ["analysis:read"]
    assert created["tenant_id"] == person.tenant_id
    assert created["last_used_at"] is None
    lifetime = dt.datetime.fromisoformat(created["expires_at"]) - dt.datetime.fromisoformat(created["created_at"])
    assert lifetime == dt.timedelta(days=7)

    listed = expect(person.get("/api/v2/tokens"), 200)
    assert [t["id"] for t in listed["items"]] == [created["id"]]
    assert listed["next_cursor"] is None
    assert "token" not in listed["items"][0]
    assert token not in str(listed)

    # Used once: `last_used_at` says so.
    expect(client.get("/api/v2/repositories", headers=bearer(token)), 200)
    assert expect(person.get("/api/v2/tokens"), 200)["items"][0]["last_used_at"] is not None


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "scopes": [], "expires_in_days": 30},
        {"name": "x", "scopes": ["admin"], "expires_in_days": 30},
        {"name": "x", "scopes": ["analysis:read", "analysis:read"], "expires_in_days": 30},
        {"name": "x", "scopes": ["analysis:read"]},
        {"name": "x", "scopes": ["analysis:read"], "expires_in_days": 0},
        {"name": "x", "scopes": ["analysis:read"], "expires_in_days": 367},
        {"name": "", "scopes": ["analysis:read"], "expires_in_days": 30},
        {"name": "a\x00b", "scopes": ["analysis:read"], "expires_in_days": 30},
    ],
)
def test_invalid_requests_are_refused_and_create_nothing(client: httpx.Client, body: dict[str, Any]) -> None:
    person = register(client)
    response = person.post("/api/v2/tokens", json=body)
    assert (response.status_code, error_code(response)) == (422, "ERR_VALIDATION_001"), response.text
    assert expect(person.get("/api/v2/tokens"), 200)["items"] == []


def test_scopes_decide_what_a_token_may_call(client: httpx.Client, tmp_path: Path) -> None:
    owner = ready_for_analysis(register(client))
    repository = _repository(owner, tmp_path)
    reader = bearer(_create(owner, ["analysis:read"])["token"])
    runner = bearer(_create(owner, ["analysis:read", "analysis:run"])["token"])

    assert expect(client.get("/api/v2/repositories", headers=reader), 200)["items"][0]["id"] == repository["id"]
    refused = client.post(f"/api/v2/repositories/{repository['id']}/analyses", json={}, headers=reader)
    assert refused.status_code == 403
    assert error_code(refused) == "ERR_AUTH_013"
    for method, path, body in (
        ("POST", "/api/v2/repositories", {"name": "nope", "url": "https://github.com/a/b"}),
        ("GET", "/api/v2/settings", None),
        ("GET", "/api/v2/tenants/current/members", None),
        ("PATCH", "/api/v2/tenants/current", {"name": "Renamed by a token"}),
        ("GET", "/api/v2/tokens", None),
        ("POST", "/api/v2/tokens", {"name": "more", "scopes": ["analysis:run"], "expires_in_days": 1}),
    ):
        response = client.request(method, path, json=body, headers=runner)
        assert (response.status_code, error_code(response)) == (403, "ERR_AUTH_013"), (method, path, response.text)

    queued = expect(client.post(f"/api/v2/repositories/{repository['id']}/analyses", json={}, headers=runner), 202)
    assert queued["repository_id"] == repository["id"]
    _within(
        60,
        lambda: (
            expect(client.get(f"/api/v2/analyses/{queued['id']}", headers=runner), 200)["status"]
            in {"succeeded", "failed"}
        ),
    )
    analysis = expect(client.get(f"/api/v2/analyses/{queued['id']}", headers=runner), 200)
    assert analysis["status"] == "succeeded", analysis
    assert expect(client.get(f"/api/v2/analyses/{queued['id']}/report", headers=reader), 200)["ref"] == "main"
    assert expect(client.get("/api/v2/settings", headers=bearer(_create(owner, ["settings:read"])["token"])), 200)


def test_a_revoked_token_stops_within_a_second(client: httpx.Client) -> None:
    person = ready_for_analysis(register(client))
    created = _create(person, ["analysis:read"])
    headers = bearer(created["token"])
    expect(client.get("/api/v2/repositories", headers=headers), 200)  # exchanged and cached by the gateway
    expect(person.delete(f"/api/v2/tokens/{created['id']}"), 204)
    took = _within(1.0, lambda: client.get("/api/v2/repositories", headers=headers).status_code == 401)
    assert took < 1.0
    assert expect(person.get("/api/v2/tokens"), 200)["items"] == []
    again = person.delete(f"/api/v2/tokens/{created['id']}")
    assert again.status_code == 404
    assert error_code(again) == "ERR_AUTH_014"


def test_an_expired_token_stops(client: httpx.Client, stack: Stack) -> None:
    person = ready_for_analysis(register(client))
    created = _create(person, ["analysis:read"])
    # Its expiry brought to two seconds from now, before its first use: the exchanged token must not outlive it.
    with psycopg.connect(stack.database_url) as conn:
        conn.execute(
            "UPDATE auth.access_tokens SET expires_at = now() + interval '2 seconds' WHERE id = %s", (created["id"],)
        )
    headers = bearer(created["token"])
    expect(client.get("/api/v2/repositories", headers=headers), 200)
    _within(4.0, lambda: client.get("/api/v2/repositories", headers=headers).status_code == 401)


def test_bad_tokens_are_refused_alike(client: httpx.Client) -> None:
    forged = access_tokens.new_token()  # well formed, never issued
    look_alike = forged[:-1] + ("A" if forged[-1] != "A" else "B")
    for token in (forged, look_alike, "rlp_short"):
        response = client.get("/api/v2/repositories", headers=bearer(token))
        assert (response.status_code, error_code(response)) == (401, "ERR_AUTH_002"), (token, response.text)


def test_the_creators_current_role_limits_the_token(client: httpx.Client, tmp_path: Path) -> None:
    owner = register(client)
    found(owner)
    ready_for_analysis(owner)
    member = join(owner, register(client), "member")
    repository = _repository(owner, tmp_path)
    token = _create(member, ["analysis:read", "analysis:run"])
    headers = bearer(token["token"])
    started = expect(client.post(f"/api/v2/repositories/{repository['id']}/analyses", json={}, headers=headers), 202)
    assert client.post(f"/api/v2/analyses/{started['id']}/cancel", headers=headers).status_code in (202, 409)

    # Demoted to viewer: running is over within a second, reading goes on.
    expect(owner.patch(f"/api/v2/tenants/current/members/{member.user_id}", json={"role": "viewer"}), 200)

    def refused() -> bool:
        response = client.post(f"/api/v2/repositories/{repository['id']}/analyses", json={}, headers=headers)
        return response.status_code == 403 and error_code(response) == "ERR_TENANT_002"

    assert _within(1.0, refused) < 1.0
    expect(client.get("/api/v2/repositories", headers=headers), 200)

    # Removed from the tenant: the token is over, and stays so.
    expect(owner.delete(f"/api/v2/tenants/current/members/{member.user_id}"), 204)
    _within(1.0, lambda: client.get("/api/v2/repositories", headers=headers).status_code == 401)


def test_a_deactivated_creators_tokens_stop(client: httpx.Client, stack: Stack) -> None:
    person = ready_for_analysis(register(client))
    headers = bearer(_create(person, ["analysis:read"])["token"])
    expect(client.get("/api/v2/repositories", headers=headers), 200)
    deactivate(stack, person.username)
    _within(1.0, lambda: client.get("/api/v2/repositories", headers=headers).status_code == 401)


def test_another_users_or_tenants_tokens_are_not_found(client: httpx.Client, tmp_path: Path) -> None:
    owner = register(client)
    found(owner)
    ready_for_analysis(owner)
    colleague = join(owner, register(client), "admin")
    mine = _create(owner, ["analysis:read"])
    # A colleague in the same tenant sees and revokes only their own tokens.
    assert expect(colleague.get("/api/v2/tokens"), 200)["items"] == []
    refused = colleague.delete(f"/api/v2/tokens/{mine['id']}")
    assert refused.status_code == 404
    assert error_code(refused) == "ERR_AUTH_014"
    # A token of another tenant reaches nothing of this one.
    repository = _repository(owner, tmp_path)
    stranger = ready_for_analysis(register(client))
    foreign = bearer(_create(stranger, ["analysis:read", "analysis:run"])["token"])
    response = client.get(f"/api/v2/repositories/{repository['id']}", headers=foreign)
    assert response.status_code == 404
    assert expect(client.get("/api/v2/repositories", headers=foreign), 200)["items"] == []
    # Still the owner's, still working.
    expect(client.get(f"/api/v2/repositories/{repository['id']}", headers=bearer(mine["token"])), 200)


def test_a_token_never_appears_in_logs(client: httpx.Client, stack: Stack) -> None:
    person = ready_for_analysis(register(client))
    created = _create(person, ["analysis:read"])
    token = created["token"]
    expect(client.get("/api/v2/repositories", headers=bearer(token)), 200)
    client.get("/api/v2/repositories/not-an-id", headers=bearer(token))
    expect(person.delete(f"/api/v2/tokens/{created['id']}"), 204)
    client.get("/api/v2/repositories", headers=bearer(token))
    for process in (*GRPC_SERVICES, WORKER, GATEWAY):
        assert token not in stack.logs(process), process
        assert token[len(access_tokens.PREFIX) :] not in stack.logs(process), process
