"""The tenant's settings the engine needs, read from the tenants service with this service's identity."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc

from libs.common import tracing
from libs.common.deadlines import outgoing_timeout
from libs.common.grpc_client import error_from_rpc
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
        metadata = [*self._metadata]
        try:
            with tracing.outgoing_rpc(self._stub.GetTenantSecrets, metadata):
                reply = await self._stub.GetTenantSecrets(
                    tenants_pb2.GetTenantSecretsRequest(tenant_id=str(tenant_id)),
                    metadata=metadata,
                    # What is left of our caller's deadline (none for a worker's job), at most our own.
                    timeout=outgoing_timeout(self._deadline_s),
                )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        gate = reply.quality_gate
        config = TenantConfig(
            allowed_hosts=tuple(reply.allowed_hosts),
            github_token=reply.github_token,
            anthropic_api_key=reply.anthropic_api_key,
            openai_api_key=reply.openai_api_key,
            llm_provider=reply.llm_provider or "none",
            llm_model=reply.llm_model,
            quality_gate={
                "max_function_complexity": gate.max_function_complexity,
                "max_high_findings": gate.max_high_findings,
                "max_secrets": gate.max_secrets,
                "max_file_lines": gate.max_file_lines,
            },
        )
        self._cache[tenant_id] = (time.monotonic(), config)
        return config
