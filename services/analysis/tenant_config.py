"""What this service reads from the tenants service with its own identity: the tenant's settings the engine needs,
and every membership (to fill the projection of roles when the service starts without one)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from libs.common.deadlines import outgoing_timeout
from libs.common.grpc_client import call
from libs.common.identity import SERVICE_TOKEN_KEY
from repolens.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from services.analysis.domain import TenantConfig


class TenantConfigClient:
    """A short cache in front of TenantsInternalService; `settings.changed` empties a tenant's entry."""

    def __init__(self, channel: grpc.aio.Channel, *, service_token: str, deadline_s: float, ttl_s: float = 30.0):
        self._stub: Any = tenants_pb2_grpc.TenantsInternalServiceStub(channel)
        self._metadata = ((SERVICE_TOKEN_KEY, service_token),)
        self._deadline_s = deadline_s
        self._ttl_s = ttl_s
        self._cache: dict[uuid.UUID, tuple[float, TenantConfig]] = {}

    def forget(self, tenant_id: uuid.UUID) -> None:
        self._cache.pop(tenant_id, None)

    async def __call__(self, tenant_id: uuid.UUID) -> TenantConfig:
        cached = self._cache.get(tenant_id)
        if cached is not None and time.monotonic() - cached[0] < self._ttl_s:
            return cached[1]
        reply = await call(
            self._stub.GetTenantSecrets,
            tenants_pb2.GetTenantSecretsRequest(tenant_id=str(tenant_id)),
            metadata=self._metadata,
            # What is left of our caller's deadline (none for a worker's job), at most our own.
            deadline_s=outgoing_timeout(self._deadline_s),
        )
        config = TenantConfig(
            allowed_hosts=tuple(reply.allowed_hosts),
            github_token=reply.github_token,
            anthropic_api_key=reply.anthropic_api_key,
            openai_api_key=reply.openai_api_key,
            llm_provider=reply.llm_provider or "none",
            llm_model=reply.llm_model,
            quality_gate=reply.quality_gate,
        )
        self._cache[tenant_id] = (time.monotonic(), config)
        return config


async def all_memberships(
    channel: grpc.aio.Channel, *, service_token: str, deadline_s: float
) -> AsyncIterator[list[tenants_pb2.MembershipRecord]]:
    """Every membership of every active tenant, a page at a time."""
    stub: Any = tenants_pb2_grpc.TenantsInternalServiceStub(channel)
    cursor = ""
    while True:
        reply = await call(
            stub.ListMemberships,
            tenants_pb2.ListMembershipsRequest(page_size=1000, page_token=cursor),
            metadata=[(SERVICE_TOKEN_KEY, service_token)],
            deadline_s=deadline_s,
        )
        yield list(reply.memberships)
        cursor = reply.next_page_token
        if not cursor:
            return
