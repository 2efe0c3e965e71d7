"""Tenant settings: defaults, validation, write-only secrets that never leak, the internal secrets RPC."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import nats
import psycopg
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from libs.common.config import DEVELOPMENT_SERVICE_TOKEN
from libs.common.grpc_client import error_from_rpc
from libs.devstack.stack import Stack
from repolens.events.v1 import events_pb2
from repolens.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from tests.e2e.people import Person, error_code, expect, found, join, register


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as http:
        yield http


def _secrets() -> dict[str, str]:
    return {
        "github_token": "ghp_" + secrets.token_hex(18),
        "anthropic_api_key": "sk-ant-api03-" + secrets.token_urlsafe(30),
        "openai_api_key": "sk-proj-" + secrets.token_urlsafe(30),
    }


def _forms(value: str) -> list[str]:
    """The ways a clear secret could show up: as text, hex (bytea) or base64."""
    raw = value.encode()
    return [value, raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")]


def test_defaults_are_sensible(client: httpx.Client) -> None:
    owner = register(client)
    settings = expect(owner.get("/api/v2/settings"), 200)
    assert settings["llm_provider"] == "none"
    assert settings["allowed_hosts"] == ["github.com"]
    assert settings["quality_gate"] == {
        "max_function_complexity": 15,
        "max_high_findings": 0,
        "max_secrets": 0,
        "max_file_lines": 1000,
        "max_new_high_findings": 0,
        "max_new_complex_functions": 0,
        "max_new_secrets": 0,
        "branch_gate": "new_code",
    }
    assert settings["github_token"] == {"set": False, "masked": None}


def test_patch_changes_only_named_fields_and_validates(client: httpx.Client) -> None:
    owner = register(client)
    gate = {"max_function_complexity": 20, "max_high_findings": 2, "max_secrets": 0, "max_file_lines": 800}
    changed = expect(
        owner.patch(
            "/api/v2/settings",
            json={"llm_provider": "openai", "quality_gate": gate, "allowed_hosts": ["GitLab.com", "github.com"]},
        ),
        200,
    )
    # Fields of the gate left out take their defaults.
    assert changed["quality_gate"] == {
        **gate,
        "max_new_high_findings": 0,
        "max_new_complex_functions": 0,
        "max_new_secrets": 0,
        "branch_gate": "new_code",
    }
    full: dict[str, int | str] = {**gate, "max_new_high_findings": 1, "max_new_complex_functions": 2}
    full.update({"max_new_secrets": 0, "branch_gate": "both"})
    assert expect(owner.patch("/api/v2/settings", json={"quality_gate": full}), 200)["quality_gate"] == full
    assert changed["allowed_hosts"] == ["gitlab.com", "github.com"]
    model_only = expect(owner.patch("/api/v2/settings", json={"llm_model": "gpt-5"}), 200)
    assert (model_only["llm_provider"], model_only["llm_model"]) == ("openai", "gpt-5")
    for bad in (
        {"llm_provider": "mistral"},
        {"allowed_hosts": ["https://github.com"]},
        {"quality_gate": {"max_function_complexity": 0, "max_high_findings": 0, "max_secrets": 0, "max_file_lines": 1}},
        {"quality_gate": {**gate, "branch_gate": "sometimes"}},
        {"quality_gate": {**gate, "max_new_secrets": -1}},
        {"unknown": 1},
        {"github_token": "has spaces in it"},
    ):
        response = owner.patch("/api/v2/settings", json=bad)
        assert response.status_code == 422, (bad, response.text)
        assert error_code(response) == "ERR_VALIDATION_001"
        assert "has spaces" not in response.text


async def _all_events(nats_url: str) -> list[tuple[bytes, str]]:
    """Every message on the EVENTS stream: payload and headers."""
    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=5)
        subscription = await js.subscribe(
            "repolens.events.>",
            stream="EVENTS",
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            config=ConsumerConfig(),
        )
        messages: list[tuple[bytes, str]] = []
        while True:
            try:
                message = await subscription.next_msg(timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                return messages
            messages.append((message.data, repr(message.headers)))
    finally:
        await nc.close()


def _database_text(database_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'"
        ).fetchall()
        dumps: list[str] = []
        for schema, table in tables:
            rows = conn.execute(f'SELECT row_to_json(t)::text FROM "{schema}"."{table}" t').fetchall()  # noqa: S608
            dumps.extend(row[0] for row in rows)
    return "\n".join(dumps)


def test_secrets_are_write_only_and_never_leak(client: httpx.Client, stack: Stack) -> None:
    owner = register(client)
    tenant_id = found(owner)
    member = join(owner, register(client), "member")
    values = _secrets()
    responses: list[httpx.Response] = []
    patched = owner.patch("/api/v2/settings", json={**values, "llm_provider": "anthropic", "llm_model": "claude"})
    responses.append(patched)
    body = expect(patched, 200)
    assert body["github_token"] == {"set": True, "masked": "ghp_..." + values["github_token"][-4:]}
    assert body["anthropic_api_key"] == {"set": True, "masked": "sk-ant-..." + values["anthropic_api_key"][-4:]}
    assert body["openai_api_key"]["masked"].startswith("sk-proj-...")
    responses += [owner.get("/api/v2/settings"), member.get("/api/v2/settings")]
    assert expect(responses[-1], 200)["anthropic_api_key"]["set"] is True
    # A bad value is refused without being echoed.
    responses.append(owner.patch("/api/v2/settings", json={"github_token": values["github_token"] + " x"}))
    assert responses[-1].status_code == 422

    # The analysis service, and only it, gets the clear values.
    clear = asyncio.run(_internal_secrets(stack.grpc_target("tenants"), tenant_id, owner))
    assert clear == {**values, "llm_provider": "anthropic", "llm_model": "claude"}

    time.sleep(1.0)  # the settings.changed event and the log lines have landed
    events = asyncio.run(_all_events(stack.nats_url))
    envelopes = [events_pb2.EventEnvelope.FromString(data) for data, _ in events]
    assert any(e.type == "settings.changed" and e.tenant_id == tenant_id for e in envelopes)
    haystacks = {
        "responses": "\n".join(r.text for r in responses),
        "logs": "\n".join(stack.logs(name) for name in ("auth", "tenants", "gateway")),
        "events": "\n".join(data.decode("latin-1") + headers for data, headers in events),
        "database": _database_text(stack.database_url),
    }
    for name, value in values.items():
        for form in _forms(value):
            for where, text in haystacks.items():
                assert form not in text, f"{name} found in clear in the {where}"
    assert tenant_id in haystacks["database"]  # the dump did read the tenant's rows

    cleared = expect(owner.patch("/api/v2/settings", json={"github_token": None}), 200)
    assert cleared["github_token"] == {"set": False, "masked": None}
    assert cleared["anthropic_api_key"]["set"] is True


async def _internal_secrets(target: str, tenant_id: str, user: Person) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub: Any = tenants_pb2_grpc.TenantsInternalServiceStub(channel)
        request = tenants_pb2.GetTenantSecretsRequest(tenant_id=tenant_id)
        for metadata in (
            None,
            (("authorization", f"Bearer {user.access_token}"),),
            (("x-service-token", "not-the-token"),),
            (("x-service-token", ""),),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetTenantSecrets(request, metadata=metadata, timeout=5)
            assert error_from_rpc(caught.value).code == "ERR_SERVICE_001"
        reply = await stub.GetTenantSecrets(
            request, metadata=(("x-service-token", DEVELOPMENT_SERVICE_TOKEN),), timeout=5
        )
        return {
            "github_token": reply.github_token,
            "anthropic_api_key": reply.anthropic_api_key,
            "openai_api_key": reply.openai_api_key,
            "llm_provider": reply.llm_provider,
            "llm_model": reply.llm_model,
        }
