"""gRPC controllers of the tenants service: protobuf in, use case, protobuf out."""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc

from libs.common.events import timestamp
from libs.common.identity import caller
from libs.common.pagination import encode_cursor
from repolens.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from services.tenants import use_cases
from services.tenants.domain import GATE_LIMITS, Invitation, Member, QualityGate, Settings, TenantMembership
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


def _member(member: Member) -> tenants_pb2.Member:
    return tenants_pb2.Member(
        user_id=str(member.user_id),
        username=member.username,
        email=member.email,
        full_name=member.full_name,
        role=member.role,
        joined_at=timestamp(member.joined_at),
    )


def _invitation(invitation: Invitation, *, token: str = "") -> tenants_pb2.Invitation:
    message = tenants_pb2.Invitation(
        id=str(invitation.id),
        tenant_id=str(invitation.tenant_id),
        invitee=invitation.invitee,
        role=invitation.role,
        expires_at=timestamp(invitation.expires_at),
        token=token,
        invited_by=str(invitation.invited_by),
    )
    if invitation.created_at is not None:
        message.created_at.CopyFrom(timestamp(invitation.created_at))
    return message


def _gate(gate: QualityGate) -> tenants_pb2.QualityGate:
    return tenants_pb2.QualityGate(**dataclasses.asdict(gate))


def _secret_view(settings: Settings, name: str) -> tenants_pb2.SecretView:
    secret = settings.secrets.get(name)
    return tenants_pb2.SecretView(set=True, masked=secret.masked) if secret else tenants_pb2.SecretView(set=False)


def _settings(settings: Settings) -> tenants_pb2.Settings:
    message = tenants_pb2.Settings(
        github_token=_secret_view(settings, "github_token"),
        anthropic_api_key=_secret_view(settings, "anthropic_api_key"),
        openai_api_key=_secret_view(settings, "openai_api_key"),
        llm_provider=settings.llm_provider,
        llm_model=settings.llm_model,
        quality_gate=_gate(settings.quality_gate),
        allowed_hosts=list(settings.allowed_hosts),
    )
    if settings.updated_at is not None:
        message.updated_at.CopyFrom(timestamp(settings.updated_at))
    return message


class TenantsServicer(tenants_pb2_grpc.TenantsServiceServicer):
    def __init__(self, *, tenants: Tenants):
        self._tenants = tenants

    async def ListMyTenants(
        self, request: tenants_pb2.ListMyTenantsRequest, context: Context
    ) -> tenants_pb2.ListMyTenantsResponse:
        claims = caller()
        page = await use_cases.list_my_tenants(
            tenants=self._tenants, claims=claims, page_size=request.page_size, cursor=request.page_token
        )
        return tenants_pb2.ListMyTenantsResponse(
            memberships=[_membership(m) for m in page.items],
            next_page_token=encode_cursor(page.next_cursor) if page.next_cursor else "",
        )

    async def GetTenant(self, request: tenants_pb2.GetTenantRequest, context: Context) -> tenants_pb2.GetTenantResponse:
        claims = caller()
        membership = await use_cases.get_tenant(tenants=self._tenants, claims=claims, tenant_id=request.tenant_id)
        return tenants_pb2.GetTenantResponse(membership=_membership(membership))

    async def CreateTenant(
        self, request: tenants_pb2.CreateTenantRequest, context: Context
    ) -> tenants_pb2.CreateTenantResponse:
        claims = caller()
        membership = await use_cases.create_tenant(
            tenants=self._tenants, claims=claims, name=request.name, slug=request.slug
        )
        return tenants_pb2.CreateTenantResponse(membership=_membership(membership))

    async def UpdateCurrentTenant(
        self, request: tenants_pb2.UpdateCurrentTenantRequest, context: Context
    ) -> tenants_pb2.UpdateCurrentTenantResponse:
        claims = caller()
        membership = await use_cases.update_current_tenant(
            tenants=self._tenants, claims=claims, name=request.name, slug=request.slug
        )
        return tenants_pb2.UpdateCurrentTenantResponse(membership=_membership(membership))

    async def DeleteCurrentTenant(
        self, request: tenants_pb2.DeleteCurrentTenantRequest, context: Context
    ) -> tenants_pb2.DeleteCurrentTenantResponse:
        claims = caller()
        tenant_id = await use_cases.delete_current_tenant(tenants=self._tenants, claims=claims)
        return tenants_pb2.DeleteCurrentTenantResponse(tenant_id=str(tenant_id), status="deleting")

    async def ListMembers(
        self, request: tenants_pb2.ListMembersRequest, context: Context
    ) -> tenants_pb2.ListMembersResponse:
        claims = caller()
        page = await use_cases.list_members(
            tenants=self._tenants, claims=claims, page_size=request.page_size, cursor=request.page_token
        )
        return tenants_pb2.ListMembersResponse(
            members=[_member(m) for m in page.items],
            next_page_token=encode_cursor(page.next_cursor) if page.next_cursor else "",
        )

    async def UpdateMember(
        self, request: tenants_pb2.UpdateMemberRequest, context: Context
    ) -> tenants_pb2.UpdateMemberResponse:
        claims = caller()
        member = await use_cases.update_member(
            tenants=self._tenants, claims=claims, user_id=request.user_id, role=request.role
        )
        return tenants_pb2.UpdateMemberResponse(member=_member(member))

    async def RemoveMember(
        self, request: tenants_pb2.RemoveMemberRequest, context: Context
    ) -> tenants_pb2.RemoveMemberResponse:
        claims = caller()
        await use_cases.remove_member(tenants=self._tenants, claims=claims, user_id=request.user_id)
        return tenants_pb2.RemoveMemberResponse()

    async def CreateInvitation(
        self, request: tenants_pb2.CreateInvitationRequest, context: Context
    ) -> tenants_pb2.CreateInvitationResponse:
        claims = caller()
        invitation, token = await use_cases.create_invitation(
            tenants=self._tenants, claims=claims, invitee=request.invitee, role=request.role
        )
        return tenants_pb2.CreateInvitationResponse(invitation=_invitation(invitation, token=token))

    async def AcceptInvitation(
        self, request: tenants_pb2.AcceptInvitationRequest, context: Context
    ) -> tenants_pb2.AcceptInvitationResponse:
        claims = caller()
        membership = await use_cases.accept_invitation(tenants=self._tenants, claims=claims, token=request.token)
        return tenants_pb2.AcceptInvitationResponse(membership=_membership(membership))

    async def ListInvitations(
        self, request: tenants_pb2.ListInvitationsRequest, context: Context
    ) -> tenants_pb2.ListInvitationsResponse:
        page = await use_cases.list_invitations(
            tenants=self._tenants, claims=caller(), page_size=request.page_size, cursor=request.page_token
        )
        return tenants_pb2.ListInvitationsResponse(
            invitations=[_invitation(i) for i in page.items],
            next_page_token=encode_cursor(page.next_cursor) if page.next_cursor else "",
        )

    async def RevokeInvitation(
        self, request: tenants_pb2.RevokeInvitationRequest, context: Context
    ) -> tenants_pb2.RevokeInvitationResponse:
        await use_cases.revoke_invitation(tenants=self._tenants, claims=caller(), invitation_id=request.invitation_id)
        return tenants_pb2.RevokeInvitationResponse()

    async def GetSettings(
        self, request: tenants_pb2.GetSettingsRequest, context: Context
    ) -> tenants_pb2.GetSettingsResponse:
        claims = caller()
        settings = await use_cases.get_settings(tenants=self._tenants, claims=claims)
        return tenants_pb2.GetSettingsResponse(settings=_settings(settings))

    async def UpdateSettings(
        self, request: tenants_pb2.UpdateSettingsRequest, context: Context
    ) -> tenants_pb2.UpdateSettingsResponse:
        claims = caller()
        gate = request.quality_gate
        values: dict[str, Any] = {name: getattr(request, name) for name in use_cases.SETTINGS_FIELDS}
        values["allowed_hosts"] = list(request.allowed_hosts)
        # A gate named in `fields` but not sent goes back to the defaults.
        values["quality_gate"] = (
            QualityGate(
                **{name: getattr(gate, name) for name in GATE_LIMITS}, branch_gate=gate.branch_gate or "new_code"
            )
            if request.HasField("quality_gate")
            else None
        )
        settings = await use_cases.update_settings(
            tenants=self._tenants, claims=claims, fields=list(request.fields), values=values
        )
        return tenants_pb2.UpdateSettingsResponse(settings=_settings(settings))


class TenantsInternalServicer(tenants_pb2_grpc.TenantsInternalServiceServicer):
    """Service-to-service calls: a service credential, never a user token (see ACCESS in __main__)."""

    def __init__(self, *, tenants: Tenants):
        self._tenants = tenants

    async def GetTenantSecrets(
        self, request: tenants_pb2.GetTenantSecretsRequest, context: Context
    ) -> tenants_pb2.GetTenantSecretsResponse:
        clear, settings = await use_cases.tenant_secrets(tenants=self._tenants, tenant_id=request.tenant_id)
        return tenants_pb2.GetTenantSecretsResponse(
            llm_provider=settings.llm_provider,
            llm_model=settings.llm_model,
            allowed_hosts=list(settings.allowed_hosts),
            quality_gate=_gate(settings.quality_gate),
            **clear,
        )

    async def ListMemberships(
        self, request: tenants_pb2.ListMembershipsRequest, context: Context
    ) -> tenants_pb2.ListMembershipsResponse:
        page, token = await use_cases.all_memberships(
            tenants=self._tenants, page_size=request.page_size, cursor=request.page_token
        )
        return tenants_pb2.ListMembershipsResponse(
            memberships=[
                tenants_pb2.MembershipRecord(tenant_id=str(t), user_id=str(u), role=role, version=version)
                for t, u, role, version in page
            ],
            next_page_token=token,
        )
