"""Repositories and analyses, the schema of each tenant, and the rules on their values."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from libs.common import errors
from libs.common.errors import AppError
from libs.common.migrations import checked_schema
from repolens.tenants.v1 import tenants_pb2

SERVICE_SCHEMA = "analysis"
TENANT_SCHEMA = re.compile(r"^t_[0-9a-f]{32}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)

# The job this service queues for its workers (its events are in libs/common/event_types.py).
ANALYSIS_REQUESTED = "analysis.requested"
JOBS_STREAM = "JOBS"
JOBS_SUBJECT = "repolens.jobs.analysis"


def tenant_schema(tenant_id: uuid.UUID) -> str:
    """`t_<tenant id without dashes>`, checked against the strict pattern before it reaches SQL."""
    name = "t_" + tenant_id.hex
    if not TENANT_SCHEMA.fullmatch(name):
        raise ValueError(f"invalid tenant schema {name!r}")
    return checked_schema(name)


def invalid(field_name: str, reason: str) -> AppError:
    return AppError(errors.VALIDATION, details={"field": field_name, "reason": reason})


def validate_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise invalid("name", "1-100 letters, digits, '_', '.', '-', starting with a letter or digit")
    return name


@dataclass(frozen=True, slots=True)
class Repository:
    id: uuid.UUID
    name: str
    url: str
    default_branch: str
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class PullRequest:
    """The pull (or merge) request an analysis is for: its head is the analysed ref, its base the comparison's."""

    number: int
    head_sha: str = ""
    base_sha: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "head_sha": self.head_sha, "base_sha": self.base_sha}


@dataclass(frozen=True, slots=True)
class Analysis:
    id: uuid.UUID
    repository_id: uuid.UUID
    ref: str
    status: str
    progress: int
    step: str
    timings: dict[str, float]
    attempts: int
    cancel_requested: bool
    error_code: str
    error_message: str
    commit_sha: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    # A branch or pull request is judged against `base_ref` (None: the repository's default branch).
    base_ref: str | None = None
    pull_request: PullRequest | None = None
    # What queued it when not a user: {"kind": "github", "full_name": "owner/name", "sha": ..., "delivery": ...}.
    trigger: dict[str, str] | None = None

    def compares_with_base(self, default_branch: str) -> bool:
        """A branch other than the default one, or a pull request: new code is what its base does not have."""
        return self.pull_request is not None or self.base_ref is not None or self.ref != default_branch


@dataclass(frozen=True, slots=True)
class AnalysisUsage:
    """What the analysis quotas count in a tenant's schema."""

    active: int  # queued or running
    recent: int  # queued since the hour's window opened, counted up to the hourly limit
    oldest_recent: uuid.UUID | None  # the first of those to leave the window


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """What the engine needs from the tenant's settings (read through the internal RPC)."""

    allowed_hosts: tuple[str, ...] = ("github.com",)
    github_token: str = field(default="", repr=False)
    anthropic_api_key: str = field(default="", repr=False)
    openai_api_key: str = field(default="", repr=False)
    llm_provider: str = "none"  # none, anthropic or openai
    llm_model: str = ""  # empty: the deployment's default model for the provider
    # The tenant's gate, as the tenants service keeps it (its defaults live there, with its rules).
    quality_gate: tenants_pb2.QualityGate = field(default_factory=tenants_pb2.QualityGate)

    @property
    def llm_api_key(self) -> str:
        """The chosen provider's key: a tenant may keep keys for both and switch with `llm_provider` alone."""
        return {"anthropic": self.anthropic_api_key, "openai": self.openai_api_key}.get(self.llm_provider, "")


@dataclass(frozen=True)
class BadgeFacts:
    """What a README badge shows: the newest succeeded analysis of a branch (pull requests apart)."""

    ref: str
    analysed: bool  # False: the branch has no succeeded analysis yet
    gate: str = ""
    code_lines: int = 0
    findings: int = 0
    complexity: float = 0.0  # mean cyclomatic complexity of the functions measured
    finished_at: dt.datetime | None = None
