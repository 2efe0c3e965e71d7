"""The cross-tenant fixture: two tenants with data, and every tenant-data route of the API classified.

Later issues extend ROUTES with their own routes (repositories, analyses, ...): a route that reaches
the gateway without being listed here fails `test_every_route_is_classified`.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.analysis_repos import git_repository
from tests.e2e.people import Organisation, Person, expect, invitation, organisation, ready_for_analysis, register

# Routes anyone may call, or that are about the caller's identity rather than a tenant's data.
PUBLIC = {
    ("POST", "/api/v2/auth/register"),
    ("POST", "/api/v2/auth/login"),
    ("POST", "/api/v2/auth/refresh"),
    ("POST", "/api/v2/auth/logout"),
    ("POST", "/api/v2/auth/logout-all"),
    ("GET", "/api/v2/auth/me"),
    ("GET", "/api/v2/tenants"),
    ("POST", "/api/v2/tenants"),
    # No token: GitHub signs the delivery with the repository's secret (tests/e2e/test_github.py).
    ("POST", "/api/v2/hooks/github/{repository_id}"),
    # No token: the repository's badge token in the query; another tenant's repository answers the same grey badge
    # as an unknown one (tests/e2e/test_badges.py).
    ("GET", "/api/v2/badges/{repository_id}/{metric}.svg"),
}


@dataclass(frozen=True)
class Route:
    """A tenant-data route, called with the other tenant's token.

    `addressed` routes name tenant A's resources in the path or body and must answer 404;
    routes scoped to the token's tenant act on B and must not show or change anything of A.
    `destructive` ones run with a throw-away tenant's token.
    """

    method: str
    path: str
    body: dict[str, Any] | None = None
    addressed: bool = False
    destructive: bool = False

    def call(self, person: Person, values: dict[str, str]) -> httpx.Response:
        body = {k: v.format(**values) if isinstance(v, str) else v for k, v in (self.body or {}).items()}
        return person.client.request(
            self.method,
            self.path.format(**values),
            json=body if self.body is not None else None,
            headers=person.headers,
        )


ROUTES = [
    Route("GET", "/api/v2/tenants/current"),
    Route("PATCH", "/api/v2/tenants/current", {"name": "Renamed by B"}),
    Route("GET", "/api/v2/tenants/current/members"),
    Route("PATCH", "/api/v2/tenants/current/members/{a_member_id}", {"role": "viewer"}, addressed=True),
    Route("DELETE", "/api/v2/tenants/current/members/{a_member_id}", addressed=True),
    Route("POST", "/api/v2/tenants/current/invitations", {"email": "someone@example.com", "role": "member"}),
    Route("POST", "/api/v2/invitations/accept", {"token": "{a_invitation_token}"}, addressed=True),
    Route("GET", "/api/v2/tenants/current/invitations"),
    Route("DELETE", "/api/v2/tenants/current/invitations/{a_invitation_id}", addressed=True),
    Route("POST", "/api/v2/auth/switch-tenant", {"tenant_id": "{a_tenant_id}"}, addressed=True),
    Route("POST", "/api/v2/tokens", {"name": "b-token", "scopes": ["analysis:read"], "expires_in_days": 1}),
    Route("GET", "/api/v2/tokens"),
    Route("DELETE", "/api/v2/tokens/{a_token_id}", addressed=True),
    Route("GET", "/api/v2/settings"),
    Route("PATCH", "/api/v2/settings", {"llm_model": "changed-by-b"}),
    Route("POST", "/api/v2/repositories", {"name": "b-repo", "url": "https://github.com/b/repo"}),
    Route("GET", "/api/v2/repositories"),
    Route("GET", "/api/v2/repositories/{a_repository_id}", addressed=True),
    Route("PATCH", "/api/v2/repositories/{a_repository_id}", {"name": "taken-by-b"}, addressed=True),
    Route("DELETE", "/api/v2/repositories/{a_repository_id}", addressed=True),
    Route("POST", "/api/v2/repositories/{a_repository_id}/analyses", {}, addressed=True),
    Route("GET", "/api/v2/repositories/{a_repository_id}/branches", addressed=True),
    Route("POST", "/api/v2/repositories/{a_repository_id}/webhook-secret", addressed=True),
    Route("POST", "/api/v2/repositories/{a_repository_id}/badge-token", addressed=True),
    Route("GET", "/api/v2/analyses"),
    Route("GET", "/api/v2/analyses/{a_analysis_id}", addressed=True),
    Route("POST", "/api/v2/analyses/{a_analysis_id}/cancel", addressed=True),
    Route("GET", "/api/v2/analyses/{a_analysis_id}/report", addressed=True),
    Route("GET", "/api/v2/analyses/{a_analysis_id}/findings", addressed=True),
    Route("GET", "/api/v2/analyses/{a_analysis_id}/sarif", addressed=True),
    Route("GET", "/api/v2/analyses/{a_analysis_id}/diff?base={a_analysis_id}", addressed=True),
    Route("DELETE", "/api/v2/tenants/current", destructive=True),
]


@dataclass
class TwoTenants:
    a: Organisation
    b: Organisation
    values: dict[str, str] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """Tenant A as its owner sees it: what a leak or a cross-tenant write would change."""
        owner = self.a["owner"]
        return {
            "tenant": expect(owner.get("/api/v2/tenants/current"), 200),
            "members": expect(owner.get("/api/v2/tenants/current/members"), 200),
            "settings": expect(owner.get("/api/v2/settings"), 200),
            "repositories": expect(owner.get("/api/v2/repositories"), 200),
            "analyses": expect(owner.get("/api/v2/analyses"), 200),
            "invitations": expect(owner.get("/api/v2/tenants/current/invitations"), 200),
            "tokens": expect(owner.get("/api/v2/tokens"), 200),
        }

    def a_markers(self) -> list[str]:
        """Strings that identify tenant A's data; none may appear in an answer to B."""
        snapshot = self.snapshot()
        markers = [self.a.tenant_id, snapshot["tenant"]["slug"], snapshot["settings"]["llm_model"]]
        markers += [m["user_id"] for m in snapshot["members"]["items"] if m["user_id"] != self.b["owner"].user_id]
        markers += [m["username"] for m in snapshot["members"]["items"]]
        markers.append(snapshot["settings"]["anthropic_api_key"]["masked"])
        markers += [r["id"] for r in snapshot["repositories"]["items"]] + [
            r["name"] for r in snapshot["repositories"]["items"]
        ]
        markers += [a["id"] for a in snapshot["analyses"]["items"]]
        markers += [t["id"] for t in snapshot["tokens"]["items"]]
        return markers


def two_tenants(client: httpx.Client) -> TwoTenants:
    """Tenant A (owner, admin, member, viewer, settings with a secret, a pending invitation) and tenant B."""
    a = organisation(client)
    b = organisation(client, roles=("owner",))
    outsider = register(client)
    a_owner = a["owner"]
    expect(
        a_owner.patch(
            "/api/v2/settings",
            json={"anthropic_api_key": "sk-ant-api03-tenant-a-secret-0000", "llm_model": "model-of-a"},
        ),
        200,
    )
    expect(b["owner"].patch("/api/v2/settings", json={"llm_model": "model-of-b"}), 200)
    # A repository and a finished (cancelled) analysis of A's: data that B must never see or touch.
    ready_for_analysis(a_owner)
    ready_for_analysis(b["owner"])
    source = git_repository(Path(tempfile.mkdtemp(prefix="repolens-a-")), {"secret_of_a.py": "A = 1\n"})
    repository = expect(a_owner.post("/api/v2/repositories", json={"name": "a-secret-repo", "url": str(source)}), 201)
    analysis = expect(a_owner.post(f"/api/v2/repositories/{repository['id']}/analyses", json={}), 202)
    deadline = time.monotonic() + 60
    while expect(a_owner.get(f"/api/v2/analyses/{analysis['id']}"), 200)["status"] != "succeeded":
        assert time.monotonic() < deadline, "tenant A's analysis never succeeded"
        time.sleep(0.2)
    pending = invitation(a_owner, outsider, "viewer")
    token = expect(
        a_owner.post("/api/v2/tokens", json={"name": "a-ci", "scopes": ["analysis:read"], "expires_in_days": 1}), 201
    )
    values = {
        "a_tenant_id": a.tenant_id,
        "a_member_id": a["member"].user_id,
        "a_invitation_token": pending["token"],
        "a_invitation_id": pending["id"],
        "a_repository_id": repository["id"],
        "a_analysis_id": analysis["id"],
        "a_token_id": token["id"],
    }
    return TwoTenants(a=a, b=b, values=values)
