"""The public JSON shapes of /api/v2, with the examples shown at /docs."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

# Text no field takes: NUL (PostgreSQL refuses it in text), whatever the field. In the schema too, so that clients and
# fuzzers know it; a lone surrogate is refused by the JSON parser itself.
TEXT = r"^[^\x00]*$"
# A key or token as the tenants service keeps it: no whitespace of any kind (nor NUL).
SECRET_VALUE = r"^[^\s\x00]*$"  # noqa: S105 # nosec B105 # a pattern, not a secret
# A host name as a tenant's `allowed_hosts` take it (any case): labels of letters, digits and '-', a dot between.
HOST = r"^\s*(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\s*$"
# An email address as the auth service checks it: one @, a dot after it, no spaces or control characters.
_EMAIL_CHAR = r"[^@\s\x00-\x1f\x7f-\x9f\uFEFF]"
EMAIL = rf"^{_EMAIL_CHAR}{{1,64}}@{_EMAIL_CHAR}+\.{_EMAIL_CHAR}+$"


def _integral(value: Any) -> Any:
    """JSON Schema's integers include 1.0: a float with nothing after the point is that integer. Anything else
    goes to the strict check, which refuses strings ("1"), booleans and 1.5."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# A whole number in a request body, with its bounds (the bounds first, so that the schema shows them).
GateLimit = Annotated[int, Field(ge=0, le=1_000_000), BeforeValidator(_integral)]
PositiveGateLimit = Annotated[int, Field(ge=1, le=1_000_000), BeforeValidator(_integral)]


class Request(BaseModel):
    """Request bodies refuse unknown fields (a typo must not be silently ignored) and values of the wrong type
    (`"1"` or `1.5` for a count: strict)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, strict=True)


def _not_null(schema: dict[str, Any]) -> None:
    """The JSON schema of a body whose optional fields may be left out but are never null."""
    for prop in schema.get("properties", {}).values():
        options = [option for option in prop.pop("anyOf", []) if option.get("type") != "null"]
        if options:
            prop.update(options[0])
        if prop.get("default", 0) is None:
            del prop["default"]


def _patch_schema(schema: dict[str, Any]) -> None:
    _not_null(schema)
    schema["minProperties"] = 1


class Patch(Request):
    """A change: at least one field, and none of them null (a field left out stays as it is)."""

    model_config = ConfigDict(json_schema_extra=_patch_schema)

    @model_validator(mode="after")
    def _something_and_no_nulls(self) -> Patch:
        if not self.model_fields_set:
            raise ValueError("name at least one field to change")
        nulls = sorted(name for name in self.model_fields_set if getattr(self, name) is None)
        if nulls:
            raise ValueError(f"not null: {', '.join(nulls)} (leave a field out to keep it)")
        return self


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
    email: Annotated[str, Field(min_length=3, max_length=254, pattern=EMAIL)]
    password: Annotated[str, Field(pattern=TEXT, min_length=8, max_length=128)]
    full_name: Annotated[str, Field(pattern=TEXT, max_length=200)] = ""


class LoginBody(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"username": "testuser", "password": "testpass123"}]})  # nosec B105 # docs example
    username: Annotated[str, Field(pattern=TEXT, min_length=1, max_length=254)]
    password: Annotated[str, Field(pattern=TEXT, min_length=1, max_length=128)]


class RefreshBody(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"refresh_token": "rt_Jx2...Q"}]})  # nosec B105 # docs example
    refresh_token: Annotated[str, Field(pattern=TEXT, min_length=1, max_length=512)]


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
    name: Annotated[str, Field(pattern=TEXT, min_length=1, max_length=100)]
    slug: Annotated[str, Field(pattern=_SLUG)]


class UpdateTenantBody(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "Acme Corporation"}]})
    name: Annotated[str | None, Field(pattern=TEXT, min_length=1, max_length=100)] = None
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


def _one_invitee_schema(schema: dict[str, Any]) -> None:
    _not_null(schema)
    schema["oneOf"] = [{"required": ["username"]}, {"required": ["email"]}]
    schema["examples"] = [{"username": "bob", "role": "member"}, {"email": "bob@example.com", "role": "viewer"}]


class InvitationBody(Request):
    """Name the invitee by `username` or by `email`, not both."""

    model_config = ConfigDict(json_schema_extra=_one_invitee_schema)
    username: Annotated[str | None, Field(pattern=TEXT, min_length=3, max_length=40)] = None
    email: Annotated[str | None, Field(min_length=3, max_length=254, pattern=EMAIL)] = None
    role: Role

    @model_validator(mode="after")
    def _one_invitee(self) -> InvitationBody:
        given = {name for name in ("username", "email") if name in self.model_fields_set}
        if len(given) != 1 or getattr(self, given.pop()) is None:
            raise ValueError("give either username or email")
        return self


class PendingInvitationOut(BaseModel):
    id: str
    tenant_id: str
    invitee: str
    role: str
    invited_by: str = Field(description="User id of whoever sent it")
    created_at: dt.datetime
    expires_at: dt.datetime


class InvitationOut(PendingInvitationOut):
    token: str = Field(
        description="Shown once, single use: hand it to the invitee, who accepts it with their own token "
        "(`POST /api/v2/invitations/accept`)"
    )


class InvitationPage(BaseModel):
    items: list[PendingInvitationOut]
    next_cursor: str | None


class AcceptInvitationBody(Request):
    """The token travels in the body, never in a path: paths end up in access logs and crash reports."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"token": "inv_3f0c...Q"}]})  # nosec B105 # example
    token: Annotated[str, Field(pattern=TEXT, min_length=1, max_length=128)]


class SwitchTenantBody(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"tenant_id": "01937a2e-7c41-7b51-9d8e-3f1c2b4a5d6f"}]})
    tenant_id: Annotated[str, Field(pattern=TEXT, min_length=1, max_length=64)]


class QualityGateBody(Request):
    """The overall conditions, then the conditions on new code (a branch's or pull request's findings that its base
    analysis does not have), and which of them decide for branches and pull requests (docs/branches.md)."""

    max_function_complexity: PositiveGateLimit
    max_high_findings: GateLimit
    max_secrets: GateLimit
    max_file_lines: PositiveGateLimit
    max_new_high_findings: GateLimit = 0
    max_new_complex_functions: GateLimit = 0
    max_new_secrets: GateLimit = 0
    branch_gate: Literal["new_code", "overall", "both"] = "new_code"


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
                        "max_new_high_findings": 0,
                        "max_new_complex_functions": 0,
                        "max_new_secrets": 0,
                        "branch_gate": "new_code",
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
    quality_gate: dict[str, int | str]
    allowed_hosts: list[str]
    updated_at: dt.datetime | None


class SettingsPatch(Request):
    """Only the fields present change. Secrets are write-only; `null` or `""` clears one. `null` puts any other
    setting back to its default (`llm_provider` none, no `llm_model`, the default `quality_gate`), except
    `allowed_hosts`, where `null` is the empty list: no host allowed."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"anthropic_api_key": "sk-ant-api03-...", "llm_provider": "anthropic"}],
            "minProperties": 1,
        }
    )
    github_token: Annotated[str | None, Field(pattern=SECRET_VALUE, max_length=512)] = None
    anthropic_api_key: Annotated[str | None, Field(pattern=SECRET_VALUE, max_length=512)] = None
    openai_api_key: Annotated[str | None, Field(pattern=SECRET_VALUE, max_length=512)] = None
    llm_provider: Literal["none", "anthropic", "openai"] | None = None
    llm_model: Annotated[str | None, Field(pattern=TEXT, max_length=100)] = None
    quality_gate: QualityGateBody | None = None
    allowed_hosts: Annotated[list[Annotated[str, Field(pattern=HOST, max_length=253)]] | None, Field(max_length=50)] = (
        None
    )

    @model_validator(mode="after")
    def _something(self) -> SettingsPatch:
        if not self.model_fields_set:
            raise ValueError("name at least one setting to change")
        return self


REPOSITORY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
URL_RULES = (
    "`https://<host>/<owner>/<name>` on a host both the deployment (`REPOSITORY_HOSTS`) and the tenant "
    "(`allowed_hosts`) allow, without credentials; a local path or `file://` URL only where the deployment allows "
    "them (development). Refused: `ERR_REPO_003`, `details.reason` saying why."
)
REF_RULES = (
    "A branch or tag name as git takes it (no spaces or control characters, no `..`, `~`, `^`, `:`, `?`, `*`, `[`, "
    "`\\`, `@{`, not starting with `-` or ending with `/`, `.` or `.lock`), or a commit sha. Refused: `ERR_REPO_004`."
)


class CreateRepositoryBody(Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "django", "url": "https://github.com/django/django", "default_branch": "main"}]
        }
    )
    name: Annotated[str, Field(pattern=REPOSITORY_NAME, min_length=1, max_length=100)]
    url: Annotated[str, Field(pattern=TEXT, min_length=1, max_length=2048, description=URL_RULES)]
    default_branch: Annotated[str, Field(pattern=TEXT, min_length=1, max_length=200, description=REF_RULES)] = "main"


class UpdateRepositoryBody(Patch):
    """Only the fields present change."""

    name: Annotated[str | None, Field(pattern=REPOSITORY_NAME, min_length=1, max_length=100)] = None
    url: Annotated[str | None, Field(pattern=TEXT, min_length=1, max_length=2048, description=URL_RULES)] = None
    default_branch: Annotated[str | None, Field(pattern=TEXT, min_length=1, max_length=200, description=REF_RULES)] = (
        None
    )


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


SHA = r"^[0-9a-f]{7,64}$"


class PullRequestBody(Request):
    number: Annotated[int, Field(ge=1, le=2**31 - 1), BeforeValidator(_integral)]
    head_sha: Annotated[str | None, Field(pattern=SHA, description="The commit under review")] = None
    base_sha: Annotated[
        str | None,
        Field(pattern=SHA, description="The base commit: the analysis of this commit, when there is one, is the base"),
    ] = None


class StartAnalysisBody(Request):
    """A branch other than the default one, or a pull request, is compared with its base: the newest succeeded
    analysis of `base_ref` (the default branch unless given), that of `pull_request.base_sha` when there is one.
    Its new findings are those the base does not have (docs/branches.md)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"ref": "main"},
                {},
                {"ref": "feature/login", "base_ref": "main"},
                {"ref": "feature/login", "pull_request": {"number": 42, "head_sha": "9fceb02", "base_sha": "e83c516"}},
            ]
        }
    )
    ref: Annotated[str | None, Field(pattern=TEXT, min_length=1, max_length=200, description=REF_RULES)] = None
    base_ref: Annotated[str | None, Field(pattern=TEXT, min_length=1, max_length=200, description=REF_RULES)] = None
    pull_request: PullRequestBody | None = None


class PullRequestOut(BaseModel):
    number: int
    head_sha: str
    base_sha: str


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
    base_ref: str | None = Field(default=None, description="What a branch is compared with; null: the default branch")
    pull_request: PullRequestOut | None = None


class AnalysisPage(BaseModel):
    items: list[AnalysisOut]
    next_cursor: str | None


class BranchOut(BaseModel):
    ref: str
    latest_analysis: AnalysisOut
    quality_gate: dict[str, Any] | None = Field(
        description="The gate of the branch's newest succeeded analysis (its id in `analysis_id`); null: none yet"
    )


class BranchPage(BaseModel):
    items: list[BranchOut]
    next_cursor: str | None


class WebhookSecretOut(BaseModel):
    secret: str = Field(description="Shown once: GitHub's webhook secret. Asking again issues a new one")
    url: str = Field(description="The payload URL's path, under the gateway's public address")
    content_type: str = Field(description="The content type to choose in GitHub: application/json")
    events: list[str] = Field(description="The events to send: push and pull_request")


class BadgeTokenOut(BaseModel):
    token: str = Field(description="Shown once: the repository's badge token (rlb_...). Asking again issues a new one")
    badges: dict[str, str] = Field(description="Each badge's path, the token in its query, by metric")


class HookOut(BaseModel):
    queued: bool
    analysis_id: str | None = None
    duplicate: bool = Field(default=False, description="This delivery was received before: nothing queued again")
    ignored: str | None = Field(default=None, description="Why the delivery queued nothing (ping, closed...)")


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


# Something to show, and no control characters (the auth service's rule).
_LABEL = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
Scope = Literal["analysis:read", "analysis:run", "repositories:write", "settings:read"]


class CreateAccessTokenBody(Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "ci: main pipeline", "scopes": ["analysis:read", "analysis:run"], "expires_in_days": 90}
            ]
        }
    )
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=_LABEL)]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=4, json_schema_extra={"uniqueItems": True})]
    expires_in_days: Annotated[
        int,
        Field(ge=1, le=366, description="Required; at most PAT_MAX_DAYS (366, which an operator may lower)"),
        BeforeValidator(_integral),
    ]

    @model_validator(mode="after")
    def _unique_scopes(self) -> CreateAccessTokenBody:
        if len(set(self.scopes)) != len(self.scopes):
            raise ValueError("each scope once")
        return self


class AccessTokenOut(BaseModel):
    id: str
    name: str
    scopes: list[str]
    prefix: str = Field(description="The token's first characters, to tell tokens apart")
    tenant_id: str
    created_at: dt.datetime
    expires_at: dt.datetime
    last_used_at: dt.datetime | None = Field(
        description="Last exchange of the token at the gateway (at most ACCESS_TOKEN_TTL_S stale); null if never used"
    )


class CreatedAccessTokenOut(AccessTokenOut):
    token: str = Field(description="Shown once: only its hash is stored. Send it as `Authorization: Bearer rlp_...`")


class AccessTokenPage(BaseModel):
    items: list[AccessTokenOut]
    next_cursor: str | None
