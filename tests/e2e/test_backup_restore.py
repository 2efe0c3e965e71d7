"""Backup, lose the database, restore, start again: users log in, organisations and members are there, secrets
still decrypt (the worker gets the tenant's API key through the internal RPC and the review is written with it),
and the tenant's analyses and reports are as they were. The backup and the restore run through the CLI that
`make backup` / `make restore` call."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from libs.devstack.servers import EmbeddedNats, create_database, drop_database
from libs.ops.backup import Manifest
from tests.conftest import StackFactory
from tests.e2e.analysis_repos import git_repository
from tests.e2e.people import Person, expect, found, join, ready_for_analysis, register
from tests.llm_standin import LlmStandIn

ROOT = Path(__file__).resolve().parents[2]
COMPLEX = "def route(a, b):\n" + "".join(f"    if a == {i}:\n        return b + {i}\n" for i in range(12))


def ops(command: list[str], database_url: str) -> str:
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-m", "libs.ops", *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def analyse(person: Person, repository_id: str) -> dict[str, Any]:
    started = expect(person.post(f"/api/v2/repositories/{repository_id}/analyses", json={}), 202)
    deadline = time.monotonic() + 90
    while True:
        analysis: dict[str, Any] = expect(person.get(f"/api/v2/analyses/{started['id']}"), 200)
        if analysis["status"] in ("succeeded", "failed", "cancelled"):
            return analysis
        assert time.monotonic() < deadline, analysis
        time.sleep(0.2)


def what_the_tenant_sees(person: Person, analysis_id: str) -> dict[str, Any]:
    return {
        "tenants": expect(person.get("/api/v2/tenants"), 200),
        "members": expect(person.get("/api/v2/tenants/current/members"), 200),
        "settings": expect(person.get("/api/v2/settings"), 200),
        "repositories": expect(person.get("/api/v2/repositories"), 200),
        "analyses": expect(person.get("/api/v2/analyses"), 200),
        "analysis": expect(person.get(f"/api/v2/analyses/{analysis_id}"), 200),
        "report": expect(person.get(f"/api/v2/analyses/{analysis_id}/report"), 200),
    }


@pytest.mark.timeout(420)
def test_backup_drop_restore_brings_users_tenants_secrets_and_analyses_back(
    make_stack: StackFactory, own_nats: EmbeddedNats, postgres_server_url: str, tmp_path: Path
) -> None:
    # Master keys of this deployment: the restored secrets open only with the same ones.
    keys = {name: base64.b64encode(os.urandom(32)).decode() for name in ("AUTH_MASTER_KEY", "TENANTS_MASTER_KEY")}
    api_key = "sk-ant-api03-" + secrets.token_hex(24)
    github_token = "ghp_" + secrets.token_hex(18)
    source = git_repository(tmp_path / "project", {"app/route.py": COMPLEX})
    with LlmStandIn() as standin:
        env = {**keys, "ANTHROPIC_BASE_URL": standin.anthropic_url, "LLM_TIMEOUT_S": "20"}
        first = make_stack(fresh_database=True, nats_url=own_nats.url, extra_env=env)
        with httpx.Client(base_url=first.gateway_url, timeout=15) as client:
            alice, bob = register(client), register(client)
            org = found(alice)
            join(alice, bob, "member")
            ready_for_analysis(alice)
            settings = {"anthropic_api_key": api_key, "github_token": github_token, "llm_provider": "anthropic"}
            expect(alice.patch("/api/v2/settings", json=settings), 200)
            body = {"name": "project", "url": str(source)}
            repository = expect(alice.post("/api/v2/repositories", json=body), 201)
            analysis = analyse(alice, repository["id"])
            assert analysis["status"] == "succeeded", analysis
            assert len(standin.received(api_key)) == 1
            before = what_the_tenant_sees(alice, analysis["id"])
            assert before["report"]["review"]["state"] == "written"
            unspent_refresh_token = alice.refresh_token

        out = tmp_path / "backup"
        ops(["backup", "--out", str(out)], first.database_url)  # online: the stack is still running
        manifest = Manifest.read(out)
        schemas = {entry.name for entry in manifest.schemas}
        tenant_schemas = {
            "t_" + tenant.replace("-", "") for tenant in (org, alice.personal_tenant_id, bob.personal_tenant_id)
        }
        assert {"auth", "tenants", "analysis"} | tenant_schemas <= schemas

        first.close()
        name = unquote(urlsplit(first.database_url).path.lstrip("/"))
        drop_database(postgres_server_url, name)  # everything is lost...
        create_database(postgres_server_url, name)  # ...and an empty database takes its place
        restored = ops(["restore", "--from", str(out)], first.database_url)
        assert f"restored {len(manifest.schemas)} schemas" in restored

        second = make_stack(database_url=first.database_url, nats_url=own_nats.url, extra_env=env)
        with httpx.Client(base_url=second.gateway_url, timeout=15) as client:
            # The same people log in with the same passwords; a session from before the backup still refreshes.
            alice_again = Person(client, alice.username, alice.user_id, alice.personal_tenant_id)
            alice_again.refresh_token = unspent_refresh_token
            alice_again.refresh()
            alice_again.login().switch(org)
            bob_again = Person(client, bob.username, bob.user_id, bob.personal_tenant_id).login().switch(org)
            assert bob_again.tenant_id == org

            after = what_the_tenant_sees(alice_again, analysis["id"])
            assert after == before  # tenants, members and roles, masked secrets, repositories, analyses, report
            assert after["settings"]["anthropic_api_key"]["masked"] == "sk-ant-..." + api_key[-4:]
            assert after["settings"]["github_token"]["masked"] == "ghp_..." + github_token[-4:]

            # The worker reads the tenant's key through the internal RPC: it decrypts, and reaches the provider.
            again = analyse(bob_again, repository["id"])
            assert again["status"] == "succeeded", again
            assert len(standin.received(api_key)) == 2
            report = expect(bob_again.get(f"/api/v2/analyses/{again['id']}/report"), 200)
            assert report["review"]["state"] == "written"
            assert report["review"]["provider"] == "anthropic"
