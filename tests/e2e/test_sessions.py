"""Sessions through the gateway: a login is one family of sessions, whatever tenants it switches to, and ends whole.

The attack of the security review: a stolen access token (15 minutes) switched to a tenant of its victim used to
become an independent 30-day session that the victim's logout did not end.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest

from libs.devstack.stack import Stack
from tests.e2e.people import Person, bearer, error_code, expect, register, unique

# What one access token may reach: auth (GetMe checks the session row), tenants and analysis (the deny-list).
PROBES = ("/api/v2/auth/me", "/api/v2/tenants/current", "/api/v2/repositories")


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as http:
        yield http


def _organisation_of(person: Person) -> str:
    """A new organisation of `person`, who stays in the tenant they are in."""
    slug = unique("org-")
    return str(expect(person.post("/api/v2/tenants", json={"name": slug, "slug": slug}), 201)["id"])


def _refused_everywhere(client: httpx.Client, access_token: str) -> bool:
    return all(client.get(path, headers=bearer(access_token)).status_code == 401 for path in PROBES)


def _within(seconds: float, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.05)


def _session_expiries(stack: Stack, user_id: str) -> list[tuple[str, object]]:
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute(
            "SELECT family_id::text, expires_at FROM auth.sessions WHERE user_id = %s ORDER BY created_at", (user_id,)
        ).fetchall()
    return [(family, expires) for family, expires in rows]


def test_a_stolen_access_token_cannot_outlive_its_login(client: httpx.Client, stack: Stack) -> None:
    victim = register(client)
    organisation = _organisation_of(victim)
    stolen = victim.access_token

    # Switching to the tenant the token is already in gives nothing new.
    same = client.post(
        "/api/v2/auth/switch-tenant", json={"tenant_id": victim.personal_tenant_id}, headers=bearer(stolen)
    )
    assert same.status_code == 409
    assert error_code(same) == "ERR_AUTH_012"

    # Another tenant of the victim's: a session of the victim's login, ending no later than it.
    switched = expect(
        client.post("/api/v2/auth/switch-tenant", json={"tenant_id": organisation}, headers=bearer(stolen)), 200
    )
    sessions = _session_expiries(stack, victim.user_id)
    assert len(sessions) == 2
    assert len({family for family, _ in sessions}) == 1, "one login, one family"
    assert sessions[1][1] == sessions[0][1], "the switched session expires with the login"
    renewed = expect(client.post("/api/v2/auth/refresh", json={"refresh_token": switched["refresh_token"]}), 200)

    # The victim logs out: everything that came from that login ends.
    assert client.post("/api/v2/auth/logout", json={"refresh_token": victim.refresh_token}).status_code == 204
    refused = client.post("/api/v2/auth/refresh", json={"refresh_token": renewed["refresh_token"]})
    assert refused.status_code == 401
    assert error_code(refused) == "ERR_AUTH_005"
    _within(1.0, lambda: _refused_everywhere(client, renewed["access_token"]))
    assert _refused_everywhere(client, switched["access_token"])


def test_logout_all_ends_every_session_of_the_user_within_a_second(client: httpx.Client) -> None:
    laptop = register(client)
    phone = Person(client, laptop.username, laptop.user_id, laptop.personal_tenant_id).login()
    phone.switch(_organisation_of(phone))
    other = register(client)  # someone else's sessions go on
    for person in (laptop, phone):
        for path in PROBES:
            expect(person.get(path), 200)

    assert laptop.post("/api/v2/auth/logout-all").status_code == 204
    _within(1.0, lambda: all(_refused_everywhere(client, p.access_token) for p in (laptop, phone)))
    for person in (laptop, phone):
        refused = client.post("/api/v2/auth/refresh", json={"refresh_token": person.refresh_token})
        assert error_code(refused) == "ERR_AUTH_005"
    expect(other.get("/api/v2/auth/me"), 200)
    other.refresh()
    # A new login works at once.
    expect(laptop.login().get("/api/v2/auth/me"), 200)


def test_two_concurrent_refreshes_of_one_token_both_succeed(client: httpx.Client) -> None:
    person = register(client)

    def refresh() -> httpx.Response:
        return client.post("/api/v2/auth/refresh", json={"refresh_token": person.refresh_token})

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda _: refresh(), range(2)))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    for answer in answers:
        tokens = answer.json()
        expect(client.get("/api/v2/auth/me", headers=bearer(tokens["access_token"])), 200)
        expect(client.post("/api/v2/auth/refresh", json={"refresh_token": tokens["refresh_token"]}), 200)


def test_a_reuse_after_the_grace_ends_the_whole_login(client: httpx.Client) -> None:
    person = register(client)
    spent = person.refresh_token
    person.refresh()
    in_organisation = Person(client, person.username, person.user_id, person.personal_tenant_id)
    in_organisation.access_token, in_organisation.refresh_token = person.access_token, person.refresh_token
    in_organisation.switch(_organisation_of(person))
    time.sleep(1.2)  # past REFRESH_REUSE_GRACE_S, 1 s in the tests
    reused = client.post("/api/v2/auth/refresh", json={"refresh_token": spent})
    assert error_code(reused) == "ERR_AUTH_005"
    for holder in (person, in_organisation):
        assert error_code(client.post("/api/v2/auth/refresh", json={"refresh_token": holder.refresh_token})) == (
            "ERR_AUTH_005"
        )
    _within(1.0, lambda: all(_refused_everywhere(client, p.access_token) for p in (person, in_organisation)))
