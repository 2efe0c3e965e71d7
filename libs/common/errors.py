"""The error registry: every error code with its HTTP status, gRPC status and message.

`python -m libs.common.errors` prints API_ERRORS.md from this registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One entry of the registry."""

    code: str
    http_status: int
    grpc_status: grpc.StatusCode
    message: str
    description: str


REGISTRY: dict[str, ErrorSpec] = {}


def _define(code: str, http_status: int, grpc_status: grpc.StatusCode, message: str, description: str) -> ErrorSpec:
    if code in REGISTRY:
        raise ValueError(f"duplicate error code {code}")
    spec = ErrorSpec(code, http_status, grpc_status, message, description)
    REGISTRY[code] = spec
    return spec


_C = grpc.StatusCode

INTERNAL = _define("ERR_INTERNAL_000", 500, _C.INTERNAL, "Internal error", "Unexpected failure; the log has it.")

VALIDATION = _define(
    "ERR_VALIDATION_001",
    422,
    _C.INVALID_ARGUMENT,
    "Request validation failed",
    "A field is missing, unknown, of the wrong type or out of range; `details.fields` lists them.",
)
NOT_FOUND_ROUTE = _define("ERR_REQUEST_001", 404, _C.NOT_FOUND, "No such route", "The path does not exist.")
METHOD_NOT_ALLOWED = _define(
    "ERR_REQUEST_002", 405, _C.UNIMPLEMENTED, "Method not allowed", "The path exists but not with this method."
)
BODY_TOO_LARGE = _define(
    "ERR_REQUEST_003", 413, _C.RESOURCE_EXHAUSTED, "Request body too large", "The body exceeds the configured limit."
)
UNSUPPORTED_MEDIA_TYPE = _define(
    "ERR_REQUEST_004",
    415,
    _C.INVALID_ARGUMENT,
    "Request body must be JSON",
    "The body was sent with a Content-Type other than application/json.",
)
HOST_NOT_ALLOWED = _define(
    "ERR_REQUEST_005",
    400,
    _C.INVALID_ARGUMENT,
    "Host not allowed",
    "The Host header names no host this deployment serves (ALLOWED_HOSTS).",
)
URL_TOO_LONG = _define(
    "ERR_REQUEST_006", 414, _C.INVALID_ARGUMENT, "URL too long", "Path and query string exceed MAX_URL_BYTES."
)
HEADERS_TOO_LARGE = _define(
    "ERR_REQUEST_007",
    431,
    _C.INVALID_ARGUMENT,
    "Request headers too large",
    "More than MAX_HEADERS headers, or more than MAX_HEADER_BYTES of them.",
)

RATE_LIMITED = _define(
    "ERR_RATE_001",
    429,
    _C.RESOURCE_EXHAUSTED,
    "Too many requests",
    "A rate limit was reached; retry after the `Retry-After` header's seconds (also `details.retry_after_s`).",
)
LOGIN_LOCKED = _define(
    "ERR_RATE_002",
    429,
    _C.RESOURCE_EXHAUSTED,
    "Too many failed logins; try again later",
    "Too many failed logins for this username, whether it exists or not; the lock lifts after `Retry-After` "
    "seconds and grows with repeated failures.",
)

INVALID_CREDENTIALS = _define(
    "ERR_AUTH_001",
    401,
    _C.UNAUTHENTICATED,
    "Invalid username or password",
    "Same answer for an unknown user and a wrong password.",
)
INVALID_TOKEN = _define(
    "ERR_AUTH_002",
    401,
    _C.UNAUTHENTICATED,
    "Missing or invalid access token",
    "No bearer token, or one that fails verification (signature, algorithm, key, claims).",
)
TOKEN_EXPIRED = _define("ERR_AUTH_003", 401, _C.UNAUTHENTICATED, "Access token expired", "Refresh the tokens.")
INVALID_REFRESH_TOKEN = _define(
    "ERR_AUTH_004", 401, _C.UNAUTHENTICATED, "Invalid refresh token", "Unknown or expired refresh token."
)
SESSION_REVOKED = _define(
    "ERR_AUTH_005",
    401,
    _C.UNAUTHENTICATED,
    "Session revoked",
    "The session was logged out (or all of the user's were), its refresh token was reused after the grace, it "
    "expired, the user was removed from its tenant, or the user was deactivated.",
)
USER_INACTIVE = _define(
    "ERR_AUTH_006", 403, _C.PERMISSION_DENIED, "Account is deactivated", "The user cannot log in until reactivated."
)
USERNAME_TAKEN = _define(
    "ERR_AUTH_007", 409, _C.ALREADY_EXISTS, "Username already taken", "Usernames are unique, ignoring case."
)
EMAIL_TAKEN = _define(
    "ERR_AUTH_008", 409, _C.ALREADY_EXISTS, "Email already registered", "Emails are unique, ignoring case."
)
USER_NOT_FOUND = _define("ERR_AUTH_009", 404, _C.NOT_FOUND, "User not found", "No user with this name.")
KEYS_UNAVAILABLE = _define(
    "ERR_AUTH_010", 503, _C.UNAVAILABLE, "Signing keys not loaded", "The service cannot sign or verify tokens yet."
)
NO_TENANT = _define(
    "ERR_AUTH_011",
    409,
    _C.FAILED_PRECONDITION,
    "No tenant to sign in to",
    "The user belongs to no tenant yet; try again in a moment.",
)
ALREADY_IN_TENANT = _define(
    "ERR_AUTH_012",
    409,
    _C.FAILED_PRECONDITION,
    "Already acting in this tenant",
    "`switch-tenant` to the tenant of the token itself: keep using the tokens you have.",
)
SCOPE_MISSING = _define(
    "ERR_AUTH_013",
    403,
    _C.PERMISSION_DENIED,
    "The access token's scopes do not allow this",
    "A personal access token calls only what its scopes name (docs/tokens.md); create one with the scope needed.",
)
ACCESS_TOKEN_NOT_FOUND = _define(
    "ERR_AUTH_014", 404, _C.NOT_FOUND, "Access token not found", "No live token of the caller's with this id."
)
TOO_MANY_ACCESS_TOKENS = _define(
    "ERR_AUTH_015",
    409,
    _C.FAILED_PRECONDITION,
    "Too many access tokens",
    "A user holds at most 100 live tokens per tenant; revoke one first.",
)

WEBHOOK_SIGNATURE = _define(
    "ERR_HOOK_001",
    401,
    _C.UNAUTHENTICATED,
    "Webhook not verified",
    "No repository with a webhook secret has this id, or `X-Hub-Signature-256` is not the HMAC-SHA256 of the body "
    "under its secret.",
)

TENANT_NOT_FOUND = _define(
    "ERR_TENANT_001", 404, _C.NOT_FOUND, "Tenant not found", "It does not exist or the caller is not a member."
)

FORBIDDEN = _define(
    "ERR_TENANT_002",
    403,
    _C.PERMISSION_DENIED,
    "Your role in this tenant does not allow this",
    "See docs/permissions.md for what each role may do.",
)
SLUG_TAKEN = _define("ERR_TENANT_003", 409, _C.ALREADY_EXISTS, "Slug already taken", "Tenant slugs are unique.")
LAST_OWNER = _define(
    "ERR_TENANT_004",
    409,
    _C.FAILED_PRECONDITION,
    "A tenant keeps at least one owner",
    "Make someone else owner first.",
)
PERSONAL_TENANT = _define(
    "ERR_TENANT_005",
    409,
    _C.FAILED_PRECONDITION,
    "Not possible on a personal tenant",
    "A personal tenant has only its owner and is deleted only with its user.",
)
MEMBER_NOT_FOUND = _define(
    "ERR_TENANT_006", 404, _C.NOT_FOUND, "Member not found", "No such user among this tenant's members."
)
ALREADY_MEMBER = _define(
    "ERR_TENANT_007", 409, _C.ALREADY_EXISTS, "Already a member", "The user already belongs to this tenant."
)
INVITATION_NOT_FOUND = _define(
    "ERR_TENANT_008",
    404,
    _C.NOT_FOUND,
    "Invitation not found",
    "Unknown token, or an invitation addressed to someone else.",
)
INVITATION_EXPIRED = _define(
    "ERR_TENANT_009", 410, _C.FAILED_PRECONDITION, "Invitation expired", "Ask for a new invitation."
)
INVITATION_USED = _define(
    "ERR_TENANT_010", 409, _C.FAILED_PRECONDITION, "Invitation already used", "An invitation works once."
)
INVITATION_WITHDRAWN = _define(
    "ERR_TENANT_011",
    410,
    _C.FAILED_PRECONDITION,
    "Invitation withdrawn",
    "It was revoked, or whoever sent it is no longer a member allowed to grant its role; ask for a new one.",
)
SERVICE_IDENTITY_REQUIRED = _define(
    "ERR_SERVICE_001",
    403,
    _C.PERMISSION_DENIED,
    "Service identity required",
    "Internal calls need a known service's credential; user tokens are refused.",
)

REPOSITORY_NOT_FOUND = _define(
    "ERR_REPO_001", 404, _C.NOT_FOUND, "Repository not found", "No such repository in the token's tenant."
)
REPOSITORY_NAME_TAKEN = _define(
    "ERR_REPO_002",
    409,
    _C.ALREADY_EXISTS,
    "Repository name already used",
    "Names are unique per tenant, ignoring case.",
)
REPOSITORY_URL_REFUSED = _define(
    "ERR_REPO_003",
    422,
    _C.INVALID_ARGUMENT,
    "Repository URL refused",
    "Only https:// on the allowed hosts (local paths in development); `details.reason` says why.",
)
REF_REFUSED = _define("ERR_REPO_004", 422, _C.INVALID_ARGUMENT, "Git ref refused", "Not a valid branch or tag name.")
ANALYSIS_NOT_FOUND = _define(
    "ERR_ANALYSIS_001", 404, _C.NOT_FOUND, "Analysis not found", "No such analysis in the token's tenant."
)
ANALYSIS_FINISHED = _define(
    "ERR_ANALYSIS_002", 409, _C.FAILED_PRECONDITION, "Analysis already finished", "Only queued or running ones stop."
)
REPORT_NOT_READY = _define(
    "ERR_ANALYSIS_003", 409, _C.FAILED_PRECONDITION, "No report", "Reports exist for succeeded analyses only."
)
ANALYSIS_ATTEMPTS_EXHAUSTED = _define(
    "ERR_ANALYSIS_004",
    500,
    _C.INTERNAL,
    "Analysis failed after its last attempt",
    "Workers stopped or crashed on it too many times (stored on the analysis, not an HTTP answer).",
)
JOB_UNDELIVERABLE = _define(
    "ERR_ANALYSIS_005",
    500,
    _C.INTERNAL,
    "The workers gave up on this analysis's job",
    "Handed back or failed JOB_MAX_DELIVERIES times before it could run; its job is in the dead-letter stream "
    "(stored on the analysis, not an HTTP answer).",
)
FETCH_TIMEOUT = _define(
    "ERR_FETCH_001", 504, _C.DEADLINE_EXCEEDED, "Clone timed out", "The repository took too long to fetch."
)
FETCH_TOO_LARGE = _define(
    "ERR_FETCH_002", 413, _C.RESOURCE_EXHAUSTED, "Repository too large", "The clone exceeded the size limit."
)
FETCH_NOT_FOUND = _define(
    "ERR_FETCH_003", 404, _C.NOT_FOUND, "Repository or ref not found", "The URL or the branch/tag does not exist."
)
FETCH_AUTH = _define(
    "ERR_FETCH_004",
    403,
    _C.PERMISSION_DENIED,
    "Repository access denied",
    "Set a GitHub token for private repositories.",
)
FETCH_FAILED = _define("ERR_FETCH_005", 502, _C.UNAVAILABLE, "Clone failed", "git could not fetch the repository.")

# Quotas (the limits are settings; the message names the limit, `details.limit` holds it). A count of things held
# at once answers 403 (retrying will not help until something is deleted), a count over time 429.
REPOSITORY_QUOTA = _define(
    "ERR_QUOTA_001",
    403,
    _C.RESOURCE_EXHAUSTED,
    "Repository limit reached",
    "The tenant has TENANT_MAX_REPOSITORIES repositories; delete one first. `details.limit` is the limit.",
)
QUEUED_ANALYSES_QUOTA = _define(
    "ERR_QUOTA_002",
    429,
    _C.RESOURCE_EXHAUSTED,
    "Too many analyses queued or running",
    "The tenant has TENANT_MAX_QUEUED_ANALYSES analyses queued or running; retry when some have finished. "
    "`details.limit` is the limit.",
)
HOURLY_ANALYSES_QUOTA = _define(
    "ERR_QUOTA_003",
    429,
    _C.RESOURCE_EXHAUSTED,
    "Too many analyses in the last hour",
    "The tenant queued TENANT_MAX_ANALYSES_PER_HOUR analyses in the last hour; retry after the `Retry-After` "
    "header's seconds (also `details.retry_after_s`). `details.limit` is the limit.",
)
TENANT_QUOTA = _define(
    "ERR_QUOTA_004",
    403,
    _C.RESOURCE_EXHAUSTED,
    "Organisation limit reached",
    "The user owns USER_MAX_TENANTS organisations (the personal tenant is not counted); delete one first. "
    "`details.limit` is the limit.",
)

# Every 503 answer carries `Retry-After` (gateway/errors.py, docs/faults.md).
UPSTREAM_UNAVAILABLE = _define(
    "ERR_UPSTREAM_001",
    503,
    _C.UNAVAILABLE,
    "Service unavailable",
    "A backend service did not answer, or refused the call while overloaded; retry after the `Retry-After` "
    "header's seconds.",
)
UPSTREAM_TIMEOUT = _define(
    "ERR_UPSTREAM_002", 504, _C.DEADLINE_EXCEEDED, "Service timed out", "A backend service missed its deadline."
)
DATABASE_UNAVAILABLE = _define(
    "ERR_UPSTREAM_003",
    503,
    _C.UNAVAILABLE,
    "Database unavailable",
    "A service lost its database or could not get a connection to it (a restart, a failover, every connection "
    "busy); retry after the `Retry-After` header's seconds. A write may have been made all the same if the "
    "database went away during its commit.",
)


class AppError(Exception):
    """A typed error that crosses layers: services raise it, the edges translate it."""

    def __init__(self, spec: ErrorSpec, *, message: str | None = None, details: Mapping[str, str] | None = None):
        self.spec = spec
        self.message = message or spec.message
        self.details: dict[str, str] = dict(details or {})
        super().__init__(f"{spec.code}: {self.message}")

    @property
    def code(self) -> str:
        return self.spec.code


def lookup(code: str) -> ErrorSpec:
    """The spec for a code; unknown codes become the internal error, never a leak."""
    return REGISTRY.get(code, INTERNAL)


def render_markdown() -> str:
    """API_ERRORS.md: the contract clients code against."""
    lines = [
        "# API errors",
        "",
        "Generated by `make errors-doc` from `libs/common/errors.py`; a test fails when this file is stale.",
        "",
        "Every error answer has one shape:",
        "",
        "```json",
        '{"error": {"code": "ERR_AUTH_001", "message": "Invalid username or password",',
        '           "request_id": "3f0c...", "details": {}}}',
        "```",
        "",
        "| code | HTTP | gRPC | message | when |",
        "|---|---|---|---|---|",
    ]
    for spec in sorted(REGISTRY.values(), key=lambda s: s.code):
        lines.append(
            f"| `{spec.code}` | {spec.http_status} | {spec.grpc_status.name} | {spec.message} | {spec.description} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
