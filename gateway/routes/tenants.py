"""/api/v2/tenants and /api/v2/invitations: organisations, members, invitations."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request, Response, status

from gateway.deps import BackendsDep, CurrentCaller
from gateway.params import Cursor, Id, Limit
from gateway.ratelimit import client_address, rate_limits
from gateway.schemas import (
    AcceptInvitationBody,
    CreateTenantBody,
    DeletedTenantOut,
    ErrorOut,
    InvitationBody,
    InvitationOut,
    InvitationPage,
    MemberOut,
    MemberPage,
    PendingInvitationOut,
    TenantOut,
    TenantPage,
    UpdateMemberBody,
    UpdateTenantBody,
)
from repolens.tenants.v1 import tenants_pb2

router = APIRouter(tags=["tenants"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing, invalid, expired or revoked token"},
    403: {"model": ErrorOut, "description": "Your role does not allow this (`ERR_TENANT_002`)"},
    404: {"model": ErrorOut, "description": "Not found, or not yours"},
    422: {"model": ErrorOut, "description": "Validation failed"},
}
UserId = Id


def _utc(stamp: Any) -> dt.datetime:
    value: dt.datetime = stamp.ToDatetime(tzinfo=dt.UTC)
    return value


def _tenant(membership: tenants_pb2.TenantMembership) -> TenantOut:
    tenant = membership.tenant
    return TenantOut(
        id=tenant.id,
        name=tenant.name,
        slug=tenant.slug,
        personal=tenant.personal,
        role=membership.role,
        created_at=_utc(tenant.created_at),
    )


def _member(member: tenants_pb2.Member) -> MemberOut:
    return MemberOut(
        user_id=member.user_id,
        username=member.username,
        email=member.email,
        full_name=member.full_name,
        role=member.role,
        joined_at=_utc(member.joined_at),
    )


@router.get(
    "/api/v2/tenants",
    response_model=TenantPage,
    responses=_ERRORS,
    summary="Tenants the caller belongs to, with the caller's role in each",
)
async def list_tenants(
    caller: CurrentCaller, request: Request, backends: BackendsDep, limit: Limit = 50, cursor: Cursor = None
) -> TenantPage:
    reply: tenants_pb2.ListMyTenantsResponse = await backends.call(
        backends.tenants.ListMyTenants,
        tenants_pb2.ListMyTenantsRequest(page_size=limit, page_token=cursor or ""),
        request=request,
        token=caller.token,
    )
    return TenantPage(items=[_tenant(m) for m in reply.memberships], next_cursor=reply.next_page_token or None)


@router.post(
    "/api/v2/tenants",
    status_code=status.HTTP_201_CREATED,
    response_model=TenantOut,
    responses={
        **_ERRORS,
        403: {"model": ErrorOut, "description": "The caller owns as many organisations as allowed (`ERR_QUOTA_004`)"},
        409: {"model": ErrorOut, "description": "Slug taken"},
    },
    summary="A new organisation, with the caller as owner",
)
async def create_tenant(
    body: CreateTenantBody, caller: CurrentCaller, request: Request, backends: BackendsDep
) -> TenantOut:
    reply: tenants_pb2.CreateTenantResponse = await backends.call(
        backends.tenants.CreateTenant,
        tenants_pb2.CreateTenantRequest(name=body.name, slug=body.slug),
        request=request,
        token=caller.token,
    )
    return _tenant(reply.membership)


@router.get("/api/v2/tenants/current", response_model=TenantOut, responses=_ERRORS, summary="The token's tenant")
async def current_tenant(caller: CurrentCaller, request: Request, backends: BackendsDep) -> TenantOut:
    reply: tenants_pb2.GetTenantResponse = await backends.call(
        backends.tenants.GetTenant,
        tenants_pb2.GetTenantRequest(tenant_id=str(caller.claims.tenant_id)),
        request=request,
        token=caller.token,
    )
    return _tenant(reply.membership)


@router.patch(
    "/api/v2/tenants/current",
    response_model=TenantOut,
    responses={**_ERRORS, 409: {"model": ErrorOut, "description": "Slug taken, or a personal tenant's slug"}},
    summary="Rename the token's tenant (owner, admin)",
)
async def update_current_tenant(
    body: UpdateTenantBody, caller: CurrentCaller, request: Request, backends: BackendsDep
) -> TenantOut:
    reply: tenants_pb2.UpdateCurrentTenantResponse = await backends.call(
        backends.tenants.UpdateCurrentTenant,
        tenants_pb2.UpdateCurrentTenantRequest(name=body.name or "", slug=body.slug or ""),
        request=request,
        token=caller.token,
    )
    return _tenant(reply.membership)


@router.delete(
    "/api/v2/tenants/current",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeletedTenantOut,
    responses={**_ERRORS, 409: {"model": ErrorOut, "description": "A personal tenant"}},
    summary="Delete the token's tenant (owner); its data is removed asynchronously",
)
async def delete_current_tenant(caller: CurrentCaller, request: Request, backends: BackendsDep) -> DeletedTenantOut:
    reply: tenants_pb2.DeleteCurrentTenantResponse = await backends.call(
        backends.tenants.DeleteCurrentTenant,
        tenants_pb2.DeleteCurrentTenantRequest(),
        request=request,
        token=caller.token,
    )
    return DeletedTenantOut(tenant_id=reply.tenant_id, status=reply.status)


@router.get(
    "/api/v2/tenants/current/members", response_model=MemberPage, responses=_ERRORS, summary="Members and roles"
)
async def list_members(
    caller: CurrentCaller, request: Request, backends: BackendsDep, limit: Limit = 50, cursor: Cursor = None
) -> MemberPage:
    reply: tenants_pb2.ListMembersResponse = await backends.call(
        backends.tenants.ListMembers,
        tenants_pb2.ListMembersRequest(page_size=limit, page_token=cursor or ""),
        request=request,
        token=caller.token,
    )
    return MemberPage(items=[_member(m) for m in reply.members], next_cursor=reply.next_page_token or None)


@router.patch(
    "/api/v2/tenants/current/members/{user_id}",
    response_model=MemberOut,
    responses={**_ERRORS, 409: {"model": ErrorOut, "description": "The last owner"}},
    summary="Change a member's role (in force on their next token)",
)
async def update_member(
    user_id: UserId, body: UpdateMemberBody, caller: CurrentCaller, request: Request, backends: BackendsDep
) -> MemberOut:
    reply: tenants_pb2.UpdateMemberResponse = await backends.call(
        backends.tenants.UpdateMember,
        tenants_pb2.UpdateMemberRequest(user_id=user_id, role=body.role),
        request=request,
        token=caller.token,
    )
    return _member(reply.member)


@router.delete(
    "/api/v2/tenants/current/members/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_ERRORS, 409: {"model": ErrorOut, "description": "The last owner"}},
    summary="Remove a member, or leave; their tokens for this tenant stop working within a second",
)
async def remove_member(user_id: UserId, caller: CurrentCaller, request: Request, backends: BackendsDep) -> Response:
    await backends.call(
        backends.tenants.RemoveMember,
        tenants_pb2.RemoveMemberRequest(user_id=user_id),
        request=request,
        token=caller.token,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/api/v2/tenants/current/invitations",
    status_code=status.HTTP_201_CREATED,
    response_model=InvitationOut,
    responses={**_ERRORS, 409: {"model": ErrorOut, "description": "Already a member, or a personal tenant"}},
    summary="Invite a user by username or email (owner, admin)",
)
async def create_invitation(
    body: InvitationBody, caller: CurrentCaller, request: Request, backends: BackendsDep
) -> InvitationOut:
    reply: tenants_pb2.CreateInvitationResponse = await backends.call(
        backends.tenants.CreateInvitation,
        tenants_pb2.CreateInvitationRequest(invitee=body.username or body.email or "", role=body.role),
        request=request,
        token=caller.token,
    )
    return InvitationOut(**_pending(reply.invitation).model_dump(), token=reply.invitation.token)


def _pending(invitation: tenants_pb2.Invitation) -> PendingInvitationOut:
    return PendingInvitationOut(
        id=invitation.id,
        tenant_id=invitation.tenant_id,
        invitee=invitation.invitee,
        role=invitation.role,
        invited_by=invitation.invited_by,
        created_at=_utc(invitation.created_at),
        expires_at=_utc(invitation.expires_at),
    )


@router.get(
    "/api/v2/tenants/current/invitations",
    response_model=InvitationPage,
    responses=_ERRORS,
    summary="Pending invitations: neither accepted nor revoked, expired ones included (owner, admin)",
)
async def list_invitations(
    caller: CurrentCaller,
    request: Request,
    backends: BackendsDep,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> InvitationPage:
    reply: tenants_pb2.ListInvitationsResponse = await backends.call(
        backends.tenants.ListInvitations,
        tenants_pb2.ListInvitationsRequest(page_size=limit, page_token=cursor or ""),
        request=request,
        token=caller.token,
    )
    return InvitationPage(items=[_pending(i) for i in reply.invitations], next_cursor=reply.next_page_token or None)


@router.delete(
    "/api/v2/tenants/current/invitations/{invitation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_ERRORS, 409: {"model": ErrorOut, "description": "Already accepted (`ERR_TENANT_010`)"}},
    summary="Revoke a pending invitation: its token joins nobody (owner, admin; an owner's only by an owner)",
)
async def revoke_invitation(
    invitation_id: Id, caller: CurrentCaller, request: Request, backends: BackendsDep
) -> Response:
    await backends.call(
        backends.tenants.RevokeInvitation,
        tenants_pb2.RevokeInvitationRequest(invitation_id=invitation_id),
        request=request,
        token=caller.token,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/api/v2/invitations/accept",
    response_model=TenantOut,
    responses={
        **_ERRORS,
        409: {"model": ErrorOut, "description": "Used, or already a member"},
        410: {"model": ErrorOut, "description": "Expired (`ERR_TENANT_009`) or withdrawn (`ERR_TENANT_011`)"},
        429: {"model": ErrorOut, "description": "Rate limited (`ERR_RATE_001`); see `Retry-After`"},
    },
    summary="Join the tenant of an invitation addressed to the caller (the token in the body, never in a URL)",
)
async def accept_invitation(
    body: AcceptInvitationBody, caller: CurrentCaller, request: Request, backends: BackendsDep
) -> TenantOut:
    limits = rate_limits(request)
    await limits.acquire(limits.invitations, str(caller.claims.user_id), client_address(request))
    reply: tenants_pb2.AcceptInvitationResponse = await backends.call(
        backends.tenants.AcceptInvitation,
        tenants_pb2.AcceptInvitationRequest(token=body.token),
        request=request,
        token=caller.token,
    )
    return _tenant(reply.membership)
