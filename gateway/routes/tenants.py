"""/api/v2/tenants: the tenants the caller belongs to."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, Request

from gateway.deps import BackendsDep, CurrentCaller
from gateway.schemas import ErrorOut, TenantOut, TenantPage
from repolens.tenants.v1 import tenants_pb2

router = APIRouter(prefix="/api/v2/tenants", tags=["tenants"])


@router.get(
    "",
    response_model=TenantPage,
    responses={401: {"model": ErrorOut, "description": "Missing, invalid, expired or revoked token"}},
    summary="Tenants the caller belongs to, with the caller's role in each",
)
async def list_tenants(
    caller: CurrentCaller,
    request: Request,
    backends: BackendsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> TenantPage:
    reply: tenants_pb2.ListMyTenantsResponse = await backends.call(
        backends.tenants.ListMyTenants,
        tenants_pb2.ListMyTenantsRequest(page_size=limit, page_token=cursor or ""),
        request=request,
        token=caller.token,
    )
    return TenantPage(
        items=[
            TenantOut(
                id=m.tenant.id,
                name=m.tenant.name,
                slug=m.tenant.slug,
                personal=m.tenant.personal,
                role=m.role,
                created_at=m.tenant.created_at.ToDatetime(tzinfo=dt.UTC),
            )
            for m in reply.memberships
        ],
        next_cursor=reply.next_page_token or None,
    )
