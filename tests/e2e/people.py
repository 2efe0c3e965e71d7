"""People and organisations for end-to-end tests: register, log in, found a tenant, invite, switch."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from libs.devstack.stack import Stack

PASSWORD = "testpass123"


def unique(prefix: str = "u") -> str:
    return prefix + uuid.uuid4().hex[:10]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "request_id", "details"}, body
    return str(body["error"]["code"])


def expect(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"
    return response.json() if response.content else None


def eventually(check: Callable[[], bool], *, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Person:
    """A registered user and its current tokens."""

    client: httpx.Client
    username: str
    user_id: str
    personal_tenant_id: str
    access_token: str = ""
    refresh_token: str = ""
    tenant_id: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.access_token)

    def take(self, tokens: dict[str, Any]) -> Person:
        self.access_token, self.refresh_token, self.tenant_id = (
            tokens["access_token"],
            tokens["refresh_token"],
            tokens["tenant_id"],
        )
        return self

    def login(self) -> Person:
        response = self.client.post("/api/v2/auth/login", json={"username": self.username, "password": PASSWORD})
        return self.take(expect(response, 200))

    def switch(self, tenant_id: str) -> Person:
        """Tokens for `tenant_id` (none asked for when the person already acts in it: that is refused)."""
        if tenant_id == self.tenant_id:
            return self
        response = self.client.post("/api/v2/auth/switch-tenant", json={"tenant_id": tenant_id}, headers=self.headers)
        return self.take(expect(response, 200))

    def refresh(self) -> Person:
        response = self.client.post("/api/v2/auth/refresh", json={"refresh_token": self.refresh_token})
        return self.take(expect(response, 200))

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, headers=self.headers, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.post(path, headers=self.headers, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.patch(path, headers=self.headers, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.delete(path, headers=self.headers, **kwargs)


def register(client: httpx.Client, username: str | None = None) -> Person:
    username = username or unique()
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD, "full_name": username}
    user = expect(client.post("/api/v2/auth/register", json=body), 201)
    return Person(client, username, user["id"], user["personal_tenant_id"]).login()


def finished(person: Person, analysis_id: str, timeout_s: float = 90) -> dict[str, Any]:
    """The analysis once it has ended (succeeded, failed or cancelled), polled every 0.2 s."""
    deadline = time.monotonic() + timeout_s
    while True:
        analysis = expect(person.get(f"/api/v2/analyses/{analysis_id}"), 200)
        if analysis["status"] in {"succeeded", "failed", "cancelled"}:
            return dict(analysis)
        assert time.monotonic() < deadline, analysis
        time.sleep(0.2)


def ready_for_analysis(person: Person, timeout_s: float = 30.0) -> Person:
    """Waits until the person's tenant exists in the analysis service: it is provisioned by events
    (user.registered, then tenant.created), which a loaded machine can take a few seconds to carry."""
    eventually(lambda: person.get("/api/v2/repositories").status_code == 200, timeout_s=timeout_s, what="schema")
    return person


def found(owner: Person, slug: str | None = None) -> str:
    """A new organisation owned by `owner`, who then acts in it."""
    slug = slug or unique("org-")
    tenant = expect(owner.post("/api/v2/tenants", json={"name": slug.title(), "slug": slug}), 201)
    owner.switch(tenant["id"])
    return str(tenant["id"])


def invitation(inviter: Person, invitee: Person, role: str) -> dict[str, Any]:
    """A new invitation of `invitee` into the inviter's current tenant, token included."""
    body = {"username": invitee.username, "role": role}
    return dict(expect(inviter.post("/api/v2/tenants/current/invitations", json=body), 201))


def invite(inviter: Person, invitee: Person, role: str) -> str:
    return str(invitation(inviter, invitee, role)["token"])


def join(inviter: Person, invitee: Person, role: str) -> Person:
    """`invitee` accepts an invitation from `inviter` and switches to that tenant."""
    token = invite(inviter, invitee, role)
    tenant = expect(invitee.post("/api/v2/invitations/accept", json={"token": token}), 200)
    assert tenant["role"] == role
    return invitee.switch(tenant["id"])


@dataclass
class Organisation:
    tenant_id: str
    people: dict[str, Person] = field(default_factory=dict)

    def __getitem__(self, role: str) -> Person:
        return self.people[role]


def organisation(client: httpx.Client, roles: tuple[str, ...] = ("owner", "admin", "member", "viewer")) -> Organisation:
    """An organisation with one person in each of `roles`, each holding a token for it."""
    owner = register(client)
    org = Organisation(found(owner), {"owner": owner})
    for role in roles:
        if role != "owner":
            org.people[role] = join(owner, register(client), role)
    return org


def deactivate(stack: Stack, username: str) -> None:
    """`python -m services.auth users deactivate USERNAME`, the operator's command, against the stack."""
    done = subprocess.run(
        [sys.executable, "-m", "services.auth", "users", "deactivate", username],
        env=stack.env("auth"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
