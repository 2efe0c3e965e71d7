"""Organisations through the gateway: the role matrix, owners, invitations, switching, removal, deletion."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from libs.devstack.stack import Stack
from services.tenants.domain import ROLES, allowed
from tests.e2e.analysis_repos import git_repository
from tests.e2e.people import (
    Organisation,
    Person,
    error_code,
    eventually,
    expect,
    found,
    invitation,
    invite,
    join,
    organisation,
    ready_for_analysis,
    register,
    unique,
)


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as http:
        yield http


@pytest.fixture(scope="module")
def org(client: httpx.Client) -> Organisation:
    return organisation(client)


@dataclass(frozen=True)
class Case:
    """One route of the matrix: what it needs, which permission decides it, and its success status."""

    name: str
    action: str
    success: int
    call: Callable[[Person, Organisation, httpx.Client], httpx.Response]


def _fresh_viewer(org: Organisation, client: httpx.Client) -> Person:
    return join(org["owner"], register(client), "viewer")


CASES = [
    Case("read tenant", "tenant.read", 200, lambda p, o, c: p.get("/api/v2/tenants/current")),
    Case("rename tenant", "tenant.rename", 200, lambda p, o, c: p.patch("/api/v2/tenants/current", json={"name": "X"})),
    Case("list members", "members.read", 200, lambda p, o, c: p.get("/api/v2/tenants/current/members")),
    Case(
        "invite a member",
        "members.invite",
        201,
        lambda p, o, c: p.post("/api/v2/tenants/current/invitations", json={"username": unique(), "role": "member"}),
    ),
    Case(
        "invite an owner",
        "members.grant_owner",
        201,
        lambda p, o, c: p.post("/api/v2/tenants/current/invitations", json={"email": "x@example.com", "role": "owner"}),
    ),
    Case(
        "change a role",
        "members.change_role",
        200,
        lambda p, o, c: p.patch(
            f"/api/v2/tenants/current/members/{_fresh_viewer(o, c).user_id}", json={"role": "member"}
        ),
    ),
    Case(
        "make an owner",
        "members.grant_owner",
        200,
        lambda p, o, c: p.patch(
            f"/api/v2/tenants/current/members/{_fresh_viewer(o, c).user_id}", json={"role": "owner"}
        ),
    ),
    Case(
        "remove a member",
        "members.remove",
        204,
        lambda p, o, c: p.delete(f"/api/v2/tenants/current/members/{_fresh_viewer(o, c).user_id}"),
    ),
    Case("read settings", "settings.read", 200, lambda p, o, c: p.get("/api/v2/settings")),
    Case(
        "write settings", "settings.write", 200, lambda p, o, c: p.patch("/api/v2/settings", json={"llm_model": "m1"})
    ),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_role_matrix(role: str, case: Case, org: Organisation, client: httpx.Client) -> None:
    response = case.call(org[role], org, client)
    if allowed(role, case.action):
        assert response.status_code == case.success, response.text
    else:
        assert response.status_code == 403, response.text
        assert error_code(response) == "ERR_TENANT_002"


@pytest.mark.parametrize("role", ["admin", "member", "viewer"])
def test_only_the_owner_deletes(role: str, org: Organisation) -> None:
    response = org[role].delete("/api/v2/tenants/current")
    assert response.status_code == 403
    assert error_code(response) == "ERR_TENANT_002"


def test_admins_cannot_touch_owners(org: Organisation) -> None:
    owner_id = org["owner"].user_id
    for response in (
        org["admin"].patch(f"/api/v2/tenants/current/members/{owner_id}", json={"role": "viewer"}),
        org["admin"].delete(f"/api/v2/tenants/current/members/{owner_id}"),
    ):
        assert response.status_code == 403
        assert error_code(response) == "ERR_TENANT_002"


def test_a_tenant_keeps_at_least_one_owner(client: httpx.Client) -> None:
    owner = register(client)
    found(owner)
    demote = owner.patch(f"/api/v2/tenants/current/members/{owner.user_id}", json={"role": "admin"})
    assert demote.status_code == 409
    assert error_code(demote) == "ERR_TENANT_004"
    leave = owner.delete(f"/api/v2/tenants/current/members/{owner.user_id}")
    assert error_code(leave) == "ERR_TENANT_004"
    second = join(owner, register(client), "owner")
    expect(second.delete(f"/api/v2/tenants/current/members/{owner.user_id}"), 204)
    members = expect(second.get("/api/v2/tenants/current/members"), 200)["items"]
    assert [(m["user_id"], m["role"]) for m in members] == [(second.user_id, "owner")]


def test_members_may_leave(org: Organisation, client: httpx.Client) -> None:
    leaver = join(org["owner"], register(client), "viewer")
    expect(leaver.delete(f"/api/v2/tenants/current/members/{leaver.user_id}"), 204)


def test_personal_tenants_stay_personal(client: httpx.Client) -> None:
    alice, bob = register(client), register(client)
    invitation = alice.post("/api/v2/tenants/current/invitations", json={"username": bob.username, "role": "member"})
    assert invitation.status_code == 409
    assert error_code(invitation) == "ERR_TENANT_005"
    assert error_code(alice.delete("/api/v2/tenants/current")) == "ERR_TENANT_005"
    assert error_code(alice.patch("/api/v2/tenants/current", json={"slug": "new-slug"})) == "ERR_TENANT_005"
    renamed = expect(alice.patch("/api/v2/tenants/current", json={"name": "Alice's corner"}), 200)
    assert renamed["name"] == "Alice's corner"
    assert renamed["slug"] == "~" + alice.username.lower()


def test_slugs_are_unique_and_validated(client: httpx.Client) -> None:
    owner = register(client)
    slug = unique("org-")
    expect(owner.post("/api/v2/tenants", json={"name": "A", "slug": slug}), 201)
    taken = owner.post("/api/v2/tenants", json={"name": "B", "slug": slug})
    assert taken.status_code == 409
    assert error_code(taken) == "ERR_TENANT_003"
    for bad in ("AB", "-x-", "x" * 41, "has space"):
        assert owner.post("/api/v2/tenants", json={"name": "C", "slug": bad}).status_code == 422


def test_invite_accept_switch_and_act(client: httpx.Client) -> None:
    owner, bob = register(client), register(client)
    tenant_id = found(owner)
    token = invite(owner, bob, "admin")
    joined = expect(bob.post("/api/v2/invitations/accept", json={"token": token}), 200)
    assert joined["id"] == tenant_id
    listed = {t["id"]: t["role"] for t in expect(bob.get("/api/v2/tenants"), 200)["items"]}
    assert listed == {bob.personal_tenant_id: "owner", tenant_id: "admin"}
    bob.switch(tenant_id)
    assert jwt.decode(bob.access_token, options={"verify_signature": False})["role"] == "admin"
    me = expect(bob.get("/api/v2/auth/me"), 200)
    assert (me["tenant_id"], me["role"]) == (tenant_id, "admin")
    renamed = expect(bob.patch("/api/v2/tenants/current", json={"name": "Renamed by Bob"}), 200)
    assert renamed["id"] == tenant_id
    # Login now returns the tenant used last.
    assert bob.login().tenant_id == tenant_id


def test_invitations_are_single_use_addressed_and_expiring(client: httpx.Client, stack: Stack) -> None:
    owner, bob, eve = register(client), register(client), register(client)
    found(owner)
    token = invite(owner, bob, "member")
    stolen = eve.post("/api/v2/invitations/accept", json={"token": token})
    assert stolen.status_code == 404
    assert error_code(stolen) == "ERR_TENANT_008"
    expect(bob.post("/api/v2/invitations/accept", json={"token": token}), 200)
    reused = bob.post("/api/v2/invitations/accept", json={"token": token})
    assert reused.status_code == 409
    assert error_code(reused) == "ERR_TENANT_010"
    late = invite(owner, eve, "viewer")
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE tenants.invitations SET expires_at = now() - interval '1 second' WHERE invitee = %s",
            [eve.username.lower()],
        )
    expired = eve.post("/api/v2/invitations/accept", json={"token": late})
    assert expired.status_code == 410
    assert error_code(expired) == "ERR_TENANT_009"
    assert error_code(eve.post("/api/v2/invitations/accept", json={"token": "inv_nonsense"})) == "ERR_TENANT_008"
    already = owner.post("/api/v2/tenants/current/invitations", json={"username": bob.username, "role": "viewer"})
    assert error_code(already) == "ERR_TENANT_007"


def test_pending_invitations_are_listed_and_revoked_and_their_token_is_never_logged(
    client: httpx.Client, stack: Stack
) -> None:
    owner, bob, carol, mallory = register(client), register(client), register(client), register(client)
    found(owner)
    admin = join(owner, register(client), "admin")
    member = join(owner, register(client), "member")
    to_bob = invitation(owner, bob, "member")
    to_carol = invitation(admin, carol, "viewer")
    to_owner = invitation(owner, mallory, "owner")
    listed = expect(owner.get("/api/v2/tenants/current/invitations"), 200)
    assert [i["id"] for i in listed["items"]] == [to_bob["id"], to_carol["id"], to_owner["id"]]
    assert all("token" not in i for i in listed["items"])
    assert listed["items"][1]["invited_by"] == admin.user_id
    assert len(expect(admin.get("/api/v2/tenants/current/invitations", params={"limit": 2}), 200)["items"]) == 2
    assert error_code(member.get("/api/v2/tenants/current/invitations")) == "ERR_TENANT_002"
    assert error_code(member.delete(f"/api/v2/tenants/current/invitations/{to_bob['id']}")) == "ERR_TENANT_002"
    # An admin cannot withdraw what only an owner may grant.
    assert error_code(admin.delete(f"/api/v2/tenants/current/invitations/{to_owner['id']}")) == "ERR_TENANT_002"

    assert admin.delete(f"/api/v2/tenants/current/invitations/{to_bob['id']}").status_code == 204
    withdrawn = bob.post("/api/v2/invitations/accept", json={"token": to_bob["token"]})
    assert withdrawn.status_code == 410
    assert error_code(withdrawn) == "ERR_TENANT_011"
    assert error_code(owner.delete(f"/api/v2/tenants/current/invitations/{to_bob['id']}")) == "ERR_TENANT_008"
    listed = expect(owner.get("/api/v2/tenants/current/invitations"), 200)
    assert [i["id"] for i in listed["items"]] == [to_carol["id"], to_owner["id"]]

    expect(carol.post("/api/v2/invitations/accept", json={"token": to_carol["token"]}), 200)
    assert error_code(owner.delete(f"/api/v2/tenants/current/invitations/{to_carol['id']}")) == "ERR_TENANT_010"
    for name in ("gateway", "auth", "tenants", "analysis"):
        logs = stack.logs(name)
        for token in (to_bob["token"], to_carol["token"], to_owner["token"]):
            assert token not in logs, f"an invitation token in the log of {name}"


def test_an_invitation_stands_only_while_its_inviter_may_grant_it(client: httpx.Client) -> None:
    owner = register(client)
    found(owner)
    admin = join(owner, register(client), "admin")
    dave, erin = register(client), register(client)
    to_dave = invite(admin, dave, "member")
    to_erin = invite(owner, erin, "owner")
    expect(owner.patch(f"/api/v2/tenants/current/members/{admin.user_id}", json={"role": "member"}), 200)
    refused = dave.post("/api/v2/invitations/accept", json={"token": to_dave})
    assert refused.status_code == 410
    assert error_code(refused) == "ERR_TENANT_011"
    # The owner who invited erin as owner is made admin by another owner: an admin cannot make owners.
    other_owner = join(owner, register(client), "owner")
    expect(other_owner.patch(f"/api/v2/tenants/current/members/{owner.user_id}", json={"role": "admin"}), 200)
    assert error_code(erin.post("/api/v2/invitations/accept", json={"token": to_erin})) == "ERR_TENANT_011"
    members = expect(other_owner.get("/api/v2/tenants/current/members"), 200)["items"]
    assert {m["user_id"] for m in members} == {owner.user_id, admin.user_id, other_owner.user_id}


def test_accepting_into_a_deleted_tenant_commits_nothing(client: httpx.Client, stack: Stack) -> None:
    owner, bob = register(client), register(client)
    tenant_id = found(owner)
    token = invite(owner, bob, "member")
    assert owner.delete("/api/v2/tenants/current").status_code == 202
    refused = bob.post("/api/v2/invitations/accept", json={"token": token})
    assert refused.status_code == 404
    assert error_code(refused) == "ERR_TENANT_008"
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM tenants.memberships WHERE tenant_id = %s AND user_id = %s", (tenant_id, bob.user_id)
        ).fetchone()
        accepted = conn.execute(
            "SELECT accepted_at FROM tenants.invitations WHERE tenant_id = %s", (tenant_id,)
        ).fetchone()
    assert rows == (0,)
    assert accepted == (None,)


def test_switching_to_a_foreign_tenant_is_not_found(client: httpx.Client) -> None:
    owner, stranger = register(client), register(client)
    tenant_id = found(owner)
    response = stranger.post("/api/v2/auth/switch-tenant", json={"tenant_id": tenant_id})
    assert response.status_code == 404
    assert error_code(response) == "ERR_TENANT_001"


def test_removed_members_token_fails_within_a_second(client: httpx.Client) -> None:
    owner, bob = register(client), register(client)
    found(owner)
    join(owner, bob, "member")
    expect(bob.get("/api/v2/tenants/current"), 200)
    personal = register(client)  # an unrelated token keeps working
    expect(owner.delete(f"/api/v2/tenants/current/members/{bob.user_id}"), 204)
    time.sleep(1.0)
    for path in ("/api/v2/tenants/current", "/api/v2/auth/me", "/api/v2/settings"):
        response = bob.get(path)
        assert response.status_code == 401, (path, response.text)
        assert error_code(response) == "ERR_AUTH_005"
    refused = bob.client.post("/api/v2/auth/refresh", json={"refresh_token": bob.refresh_token})
    assert error_code(refused) == "ERR_AUTH_005"
    expect(personal.get("/api/v2/tenants/current"), 200)
    # Bob's own tenant is untouched: a new login lands there.
    assert bob.login().tenant_id == bob.personal_tenant_id


def test_a_changed_role_is_in_force_on_the_next_token(client: httpx.Client) -> None:
    owner, bob = register(client), register(client)
    found(owner)
    join(owner, bob, "viewer")
    expect(owner.patch(f"/api/v2/tenants/current/members/{bob.user_id}", json={"role": "admin"}), 200)
    # The service reads roles from its database: the promotion works even before a new token.
    expect(bob.patch("/api/v2/settings", json={"llm_model": "x"}), 200)

    def promoted() -> bool:
        return bool(jwt.decode(bob.refresh().access_token, options={"verify_signature": False})["role"] == "admin")

    eventually(promoted, what="the admin role in a refreshed token")
    assert expect(bob.get("/api/v2/auth/me"), 200)["role"] == "admin"


def test_a_demoted_member_cannot_write_a_second_later_with_the_old_token_or_a_new_one(
    client: httpx.Client, tmp_path: Path
) -> None:
    owner, bob = register(client), register(client)
    found(owner)
    join(owner, bob, "member")
    ready_for_analysis(bob)
    source = git_repository(tmp_path / "src", {"main.py": "print(1)\n"})
    repository = expect(bob.post("/api/v2/repositories", json={"name": unique("r"), "url": str(source)}), 201)
    old_token = bob.access_token
    expect(owner.patch(f"/api/v2/tenants/current/members/{bob.user_id}", json={"role": "viewer"}), 200)
    time.sleep(1.0)
    refreshed = bob.refresh().access_token
    assert jwt.decode(refreshed, options={"verify_signature": False})["role"] == "viewer"
    for token in (old_token, refreshed):
        headers = {"Authorization": f"Bearer {token}"}
        created = client.post("/api/v2/repositories", json={"name": unique("r"), "url": str(source)}, headers=headers)
        assert created.status_code == 403, created.text
        assert error_code(created) == "ERR_TENANT_002"
        queued = client.post(f"/api/v2/repositories/{repository['id']}/analyses", json={}, headers=headers)
        assert queued.status_code == 403, queued.text
        # Reading is still a viewer's right, and every service says the current role.
        expect(client.get(f"/api/v2/repositories/{repository['id']}", headers=headers), 200)
        assert expect(client.get("/api/v2/auth/me", headers=headers), 200)["role"] == "viewer"
    assert expect(owner.get("/api/v2/analyses", params={"repository_id": repository["id"]}), 200)["items"] == []


def test_the_analysis_service_fills_its_roles_when_it_starts_without_them(client: httpx.Client, stack: Stack) -> None:
    """A deployment upgraded from before the projection: the roles come from the tenants service at start."""
    owner, bob = register(client), register(client)
    found(owner)
    join(owner, bob, "viewer")
    ready_for_analysis(bob)
    stack.stop_service("analysis")
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM analysis.memberships")
    stack.start_service("analysis")

    def bob_is_known() -> bool:
        with psycopg.connect(stack.database_url) as conn:
            row = conn.execute(
                "SELECT role FROM analysis.memberships WHERE user_id = %s AND tenant_id = %s",
                (bob.user_id, bob.tenant_id),
            ).fetchone()
        return row is not None and row[0] == "viewer"

    eventually(bob_is_known, timeout_s=20, what="the projection filled from the tenants service")
    expect(bob.get("/api/v2/repositories"), 200)
    created = bob.post("/api/v2/repositories", json={"name": unique("r"), "url": "https://github.com/a/b"})
    assert error_code(created) == "ERR_TENANT_002"


def test_deleting_a_tenant(client: httpx.Client) -> None:
    owner = register(client)
    tenant_id = found(owner)
    member = join(owner, register(client), "member")
    deleted = expect(owner.delete("/api/v2/tenants/current"), 202)
    assert deleted == {"tenant_id": tenant_id, "status": "deleting"}
    time.sleep(1.0)
    for person in (owner, member):
        response = person.get("/api/v2/tenants/current")
        assert response.status_code == 401
        assert error_code(response) == "ERR_AUTH_005"
        fresh = person.login()
        assert fresh.tenant_id == person.personal_tenant_id
        tenants: list[dict[str, Any]] = expect(person.get("/api/v2/tenants"), 200)["items"]
        assert [t["id"] for t in tenants] == [person.personal_tenant_id]
        again = person.client.post("/api/v2/auth/switch-tenant", json={"tenant_id": tenant_id}, headers=person.headers)
        assert again.status_code == 404
    expect(owner.get("/api/v2/tenants/current"), 200)


def test_members_list_paginates(client: httpx.Client) -> None:
    org = organisation(client, roles=("owner", "admin", "member"))
    first = expect(org["owner"].get("/api/v2/tenants/current/members", params={"limit": 2}), 200)
    assert len(first["items"]) == 2
    assert first["next_cursor"]
    rest = expect(
        org["owner"].get("/api/v2/tenants/current/members", params={"limit": 2, "cursor": first["next_cursor"]}), 200
    )
    assert rest["next_cursor"] is None
    seen = {m["user_id"] for m in first["items"] + rest["items"]}
    assert seen == {p.user_id for p in org.people.values()}
