"""/api/v2/settings: the token's tenant's settings; secrets are write-only."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request

from gateway.deps import BackendsDep, CurrentCaller
from gateway.schemas import ErrorOut, SecretOut, SettingsOut, SettingsPatch
from repolens.tenants.v1 import tenants_pb2

router = APIRouter(prefix="/api/v2/settings", tags=["settings"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing, invalid, expired or revoked token"},
    403: {"model": ErrorOut, "description": "Only owners and admins change settings"},
    404: {"model": ErrorOut, "description": "The token's tenant is gone"},
    422: {"model": ErrorOut, "description": "Validation failed"},
}


def _settings(settings: tenants_pb2.Settings) -> SettingsOut:
    def secret(view: tenants_pb2.SecretView) -> SecretOut:
        return SecretOut(set=view.set, masked=view.masked if view.set else None)

    gate = settings.quality_gate
    return SettingsOut(
        github_token=secret(settings.github_token),
        anthropic_api_key=secret(settings.anthropic_api_key),
        openai_api_key=secret(settings.openai_api_key),
        llm_provider=settings.llm_provider,
        llm_model=settings.llm_model,
        quality_gate={
            "max_function_complexity": gate.max_function_complexity,
            "max_high_findings": gate.max_high_findings,
            "max_secrets": gate.max_secrets,
            "max_file_lines": gate.max_file_lines,
            "max_new_high_findings": gate.max_new_high_findings,
            "max_new_complex_functions": gate.max_new_complex_functions,
            "max_new_secrets": gate.max_new_secrets,
            "branch_gate": gate.branch_gate or "new_code",
        },
        allowed_hosts=list(settings.allowed_hosts),
        updated_at=settings.updated_at.ToDatetime(tzinfo=dt.UTC) if settings.HasField("updated_at") else None,
    )


@router.get("", response_model=SettingsOut, responses=_ERRORS, summary="Settings of the token's tenant")
async def get_settings(caller: CurrentCaller, request: Request, backends: BackendsDep) -> SettingsOut:
    reply: tenants_pb2.GetSettingsResponse = await backends.call(
        backends.tenants.GetSettings, tenants_pb2.GetSettingsRequest(), request=request, token=caller.token
    )
    return _settings(reply.settings)


@router.patch("", response_model=SettingsOut, responses=_ERRORS, summary="Change settings (owner, admin)")
async def update_settings(
    body: SettingsPatch, caller: CurrentCaller, request: Request, backends: BackendsDep
) -> SettingsOut:
    fields = sorted(body.model_fields_set)
    message = tenants_pb2.UpdateSettingsRequest(
        fields=fields,
        github_token=body.github_token or "",
        anthropic_api_key=body.anthropic_api_key or "",
        openai_api_key=body.openai_api_key or "",
        llm_provider=body.llm_provider or "none",
        llm_model=body.llm_model or "",
        allowed_hosts=body.allowed_hosts or [],
    )
    if body.quality_gate is not None:
        message.quality_gate.CopyFrom(tenants_pb2.QualityGate(**body.quality_gate.model_dump()))
    reply: tenants_pb2.UpdateSettingsResponse = await backends.call(
        backends.tenants.UpdateSettings, message, request=request, token=caller.token
    )
    return _settings(reply.settings)
