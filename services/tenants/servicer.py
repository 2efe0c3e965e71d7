"""gRPC controller of the tenants service: protobuf in, use case, protobuf out."""

from __future__ import annotations

from typing import Any

import grpc

from libs.common.events import timestamp
from libs.common.identity import CallerIdentity
from repolens.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from services.tenants import use_cases
from services.tenants.domain import TenantMembership
from services.tenants.use_cases import Tenants

Context = grpc.aio.ServicerContext[Any, Any]


def _membership(membership: TenantMembership) -> tenants_pb2.TenantMembership:
    tenant = membership.tenant
    return tenants_pb2.TenantMembership(
        tenant=tenants_pb2.Tenant(
            id=str(tenant.id),
            name=tenant.name,
            slug=tenant.slug,
            personal=tenant.personal,
            created_at=timestamp(tenant.created_at),
        ),
        role=membership.role,
    )


class TenantsServicer(tenants_pb2_grpc.TenantsServiceServicer):
    def __init__(self, *, tenants: Tenants, identity: CallerIdentity):
        self._tenants = tenants
        self._identity = identity

    async def ListMyTenants(
        self, request: tenants_pb2.ListMyTenantsRequest, context: Context
    ) -> tenants_pb2.ListMyTenantsResponse:
        claims = await self._identity(context)
        page = await use_cases.list_my_tenants(
            tenants=self._tenants, claims=claims, page_size=request.page_size, cursor=request.page_token
        )
        return tenants_pb2.ListMyTenantsResponse(
            memberships=[_membership(m) for m in page.items],
            next_page_token=use_cases.encode_cursor(page.next_cursor) if page.next_cursor else "",
        )

    async def GetTenant(self, request: tenants_pb2.GetTenantRequest, context: Context) -> tenants_pb2.GetTenantResponse:
        claims = await self._identity(context)
        membership = await use_cases.get_tenant(tenants=self._tenants, claims=claims, tenant_id=request.tenant_id)
        return tenants_pb2.GetTenantResponse(membership=_membership(membership))
