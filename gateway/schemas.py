"""The public JSON shapes of /api/v2, with the examples shown at /docs."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Request(BaseModel):
    """Request bodies refuse unknown fields: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RegisterBody(Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "username": "testuser",
                    "email": "test@example.com",
                    "password": "testpass123",  # nosec B105 # an example in the API docs
                    "full_name": "Test User",
                }
            ]
        }
    )
    username: Annotated[str, Field(min_length=3, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    email: Annotated[str, Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
    password: Annotated[str, Field(min_length=8, max_length=128)]
    full_name: Annotated[str, Field(max_length=200)] = ""


class LoginBody(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"username": "testuser", "password": "testpass123"}]})  # nosec B105 # docs example
    username: Annotated[str, Field(min_length=1, max_length=254)]
    password: Annotated[str, Field(min_length=1, max_length=128)]


class RefreshBody(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"refresh_token": "rt_Jx2...Q"}]})  # nosec B105 # docs example
    refresh_token: Annotated[str, Field(min_length=1, max_length=512)]


class UserOut(BaseModel):
    id: str
    username: str
    email: str
    full_name: str
    is_active: bool
    created_at: dt.datetime


class RegisteredOut(UserOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "01937a2e-7c41-7b51-9d8e-3f1c2b4a5d6e",
                    "username": "testuser",
                    "email": "test@example.com",
                    "full_name": "Test User",
                    "is_active": True,
                    "created_at": "2026-11-26T08:00:00Z",
                    "personal_tenant_id": "01937a2e-7c41-7b51-9d8e-3f1c2b4a5d6f",
                }
            ]
        }
    )
    personal_tenant_id: str


class TokensOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOiJFZERTQSIsImtpZCI6Ims...",  # nosec B105 # a truncated docs example
                    "refresh_token": "rt_Jx2...Q",  # nosec B105 # a truncated docs example
                    "token_type": "bearer",  # nosec B105 # the OAuth token type, not a secret
                    "expires_in": 900,
                    "tenant_id": "01937a2e-7c41-7b51-9d8e-3f1c2b4a5d6f",
                }
            ]
        }
    )
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int
    tenant_id: str


class MeOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user": RegisteredOut.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
                    "tenant_id": "01937a2e-7c41-7b51-9d8e-3f1c2b4a5d6f",
                    "role": "owner",
                }
            ]
        }
    )
    user: UserOut
    tenant_id: str
    role: str


class TenantOut(BaseModel):
    id: str
    name: str
    slug: str
    personal: bool
    role: str
    created_at: dt.datetime


class TenantPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "id": "01937a2e-7c41-7b51-9d8e-3f1c2b4a5d6f",
                            "name": "Test User",
                            "slug": "~testuser",
                            "personal": True,
                            "role": "owner",
                            "created_at": "2026-11-26T08:00:00Z",
                        }
                    ],
                    "next_cursor": None,
                }
            ]
        }
    )
    items: list[TenantOut]
    next_cursor: str | None


class ErrorBody(BaseModel):
    code: str = Field(examples=["ERR_AUTH_001"])
    message: str = Field(examples=["Invalid username or password"])
    request_id: str | None = Field(examples=["5f0b3c7e9a2d4e6f8a1b2c3d4e5f6a7b"])
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorOut(BaseModel):
    """Every error answer has this shape; API_ERRORS.md lists the codes."""

    error: ErrorBody


class HealthOut(BaseModel):
    status: str
    checks: dict[str, bool] = Field(default_factory=dict)


_SLUG = r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$"
Role = Literal["owner", "admin", "member", "viewer"]


class CreateTenantBody(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "Acme Corp", "slug": "acme"}]})
    name: Annotated[str, Field(min_length=1, max_length=100)]
    slug: Annotated[str, Field(pattern=_SLUG)]


class UpdateTenantBody(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "Acme Corporation"}]})
    name: Annotated[str | None, Field(min_length=1, max_length=100)] = None
    slug: Annotated[str | None, Field(pattern=_SLUG)] = None


class DeletedTenantOut(BaseModel):
    tenant_id: str
    status: str


class MemberOut(BaseModel):
    user_id: str
    username: str
    email: str
    full_name: str
    role: str
    joined_at: dt.datetime


class MemberPage(BaseModel):
    items: list[MemberOut]
    next_cursor: str | None


class UpdateMemberBody(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"role": "admin"}]})
    role: Role


class InvitationBody(Request):
    """Name the invitee by `username` or by `email`, not both."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"username": "bob", "role": "member"}, {"email": "bob@example.com", "role": "viewer"}]
        }
    )
    username: Annotated[str | None, Field(min_length=3, max_length=40)] = None
    email: Annotated[str | None, Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")] = None
    role: Role

    @model_validator(mode="after")
    def _one_invitee(self) -> InvitationBody:
        if (self.username is None) == (self.email is None):
            raise ValueError("give either username or email")
        return self


class InvitationOut(BaseModel):
    id: str
    tenant_id: str
    invitee: str
    role: str
    expires_at: dt.datetime
    token: str = Field(description="Single use; hand it to the invitee, who accepts it with their own token")


class SwitchTenantBody(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"tenant_id": "01937a2e-7c41-7b51-9d8e-3f1c2b4a5d6f"}]})
    tenant_id: Annotated[str, Field(min_length=1, max_length=64)]


class QualityGateBody(Request):
    max_function_complexity: Annotated[int, Field(ge=1, le=1_000_000)]
    max_high_findings: Annotated[int, Field(ge=0, le=1_000_000)]
    max_secrets: Annotated[int, Field(ge=0, le=1_000_000)]
    max_file_lines: Annotated[int, Field(ge=1, le=1_000_000)]


class SecretOut(BaseModel):
    set: bool
    masked: str | None


class SettingsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "github_token": {"set": True, "masked": "ghp_...a1b2"},
                    "anthropic_api_key": {"set": True, "masked": "sk-ant-...abcd"},
                    "openai_api_key": {"set": False, "masked": None},
                    "llm_provider": "anthropic",
                    "llm_model": "claude-sonnet-4-5",
                    "quality_gate": {
                        "max_function_complexity": 15,
                        "max_high_findings": 0,
                        "max_secrets": 0,
                        "max_file_lines": 1000,
                    },
                    "allowed_hosts": ["github.com"],
                    "updated_at": "2026-11-26T08:00:00Z",
                }
            ]
        }
    )
    github_token: SecretOut
    anthropic_api_key: SecretOut
    openai_api_key: SecretOut
    llm_provider: str
    llm_model: str
    quality_gate: dict[str, int]
    allowed_hosts: list[str]
    updated_at: dt.datetime | None


class SettingsPatch(Request):
    """Only the fields present change. Secrets are write-only; `null` or `""` clears one."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"anthropic_api_key": "sk-ant-api03-...", "llm_provider": "anthropic"}]}
    )
    github_token: Annotated[str | None, Field(max_length=512)] = None
    anthropic_api_key: Annotated[str | None, Field(max_length=512)] = None
    openai_api_key: Annotated[str | None, Field(max_length=512)] = None
    llm_provider: Literal["none", "anthropic", "openai"] | None = None
    llm_model: Annotated[str | None, Field(max_length=100)] = None
    quality_gate: QualityGateBody | None = None
    allowed_hosts: Annotated[list[Annotated[str, Field(max_length=253)]] | None, Field(max_length=50)] = None


class CreateRepositoryBody(Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "django", "url": "https://github.com/django/django", "default_branch": "main"}]
        }
    )
    name: Annotated[str, Field(min_length=1, max_length=100)]
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    default_branch: Annotated[str, Field(min_length=1, max_length=200)] = "main"


class UpdateRepositoryBody(Request):
    """Only the fields present change."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"default_branch": "develop"}]})
    name: Annotated[str | None, Field(min_length=1, max_length=100)] = None
    url: Annotated[str | None, Field(min_length=1, max_length=2048)] = None
    default_branch: Annotated[str | None, Field(min_length=1, max_length=200)] = None


class RepositoryOut(BaseModel):
    id: str
    name: str
    url: str
    default_branch: str
    created_at: dt.datetime
    updated_at: dt.datetime


class RepositoryPage(BaseModel):
    items: list[RepositoryOut]
    next_cursor: str | None


class StartAnalysisBody(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"ref": "main"}, {}]})
    ref: Annotated[str | None, Field(min_length=1, max_length=200)] = None


class AnalysisOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "01937a2e-7c41-7b51-9d8e-3f1c2b4a5d70",
                    "repository_id": "01937a2e-7c41-7b51-9d8e-3f1c2b4a5d71",
                    "ref": "main",
                    "status": "running",
                    "progress": 40,
                    "step": "inventory",
                    "timings": {"fetch": 1.2},
                    "attempts": 1,
                    "error": None,
                    "commit_sha": "",
                    "created_at": "2026-11-26T08:00:00Z",
                    "started_at": "2026-11-26T08:00:01Z",
                    "finished_at": None,
                }
            ]
        }
    )
    id: str
    repository_id: str
    ref: str
    status: str
    progress: int
    step: str
    timings: dict[str, float]
    attempts: int
    error: dict[str, str] | None
    commit_sha: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class AnalysisPage(BaseModel):
    items: list[AnalysisOut]
    next_cursor: str | None


class FindingOut(BaseModel):
    rule_id: str
    severity: str
    path: str
    line: int
    message: str
    fingerprint: str
    new: bool


class FindingPage(BaseModel):
    items: list[FindingOut]
    next_cursor: str | None


class DiffOut(BaseModel):
    new: list[FindingOut]
    fixed: list[FindingOut]
    unchanged: int
