"""Analysis operations: tenant schemas, repositories, analyses (the worker's part is in worker.py)."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from alembic import command
from alembic.script import ScriptDirectory
from psycopg.errors import UndefinedTable
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.common import errors, metrics
from libs.common.db import FastReads, autocommit
from libs.common.errors import AppError, ErrorSpec
from libs.common.event_types import ANALYSIS_COMPLETED, ANALYSIS_FAILED
from libs.common.events import first_id_at, id_time, make_envelope, new_id, propagated, unpack
from libs.common.migrations import alembic_config
from libs.common.outbox import add_event, emit
from libs.common.pagination import Page, decode_cursor, page_limit, page_of
from libs.common.tokens import AccessClaims
from repolens.events.v1 import events_pb2
from repolens.tenants.v1 import tenants_pb2
from services.analysis import badges, github
from services.analysis import repository as repo
from services.analysis.domain import (
    ANALYSIS_REQUESTED,
    CANCELLED,
    FAILED,
    FINISHED,
    JOBS_SUBJECT,
    QUEUED,
    STATUSES,
    SUCCEEDED,
    Analysis,
    BadgeFacts,
    PullRequest,
    Repository,
    TenantConfig,
    invalid,
    tenant_schema,
    validate_name,
)
from services.analysis.engine.sarif import to_sarif
from services.analysis.urls import RepositoryUrlError, check_ref, check_repository_url

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
TENANT_MIGRATIONS = MIGRATIONS / "tenant"
SERVICE_MIGRATIONS = MIGRATIONS / "service"
ADMINS = ("owner", "admin")
WRITERS = (*ADMINS, "member")
HOUR = dt.timedelta(hours=1)

TenantConfigSource = Callable[[uuid.UUID], Awaitable[TenantConfig]]


@dataclass
class Analyses:
    """What the use cases need, built once in main."""

    engine: AsyncEngine
    tenant_config: TenantConfigSource
    reads: FastReads | None = None  # the API's hot reads; None in the worker, which serves none
    deployment_hosts: tuple[str, ...] = ("github.com",)
    allow_local: bool = False
    max_repositories: int = 1000
    max_queued_analyses: int = 100
    max_analyses_per_hour: int = 600
    webhook_key: bytes = field(default=b"", repr=False)  # WEBHOOK_KEY: every repository's webhook secret is derived


def tenant_head() -> str:
    head = ScriptDirectory(str(TENANT_MIGRATIONS)).get_current_head()
    assert head is not None
    return head


# Tenant schemas (consumers of tenant.created / tenant.deleted, and the migrate CLI)


def upgrade_tenant_schema(sync_conn: sa.Connection, schema: str, revision: str = "head") -> None:
    config = alembic_config(script_location=TENANT_MIGRATIONS, schema=schema, sqlalchemy_url="")
    # A migration's statements name their schema, so none is ever run again: kept in the engine's statement cache
    # (500 entries) they would push out the statements every request runs, and grow the process by tens of KiB
    # for each new tenant until the cache is full (bench/soak.py saw the analysis service grow 10.8% that way).
    config.attributes["connection"] = sync_conn.execution_options(compiled_cache=None)
    command.upgrade(config, revision)


async def provision_schema(conn: AsyncConnection, tenant_id: uuid.UUID) -> str:
    """Creates (or brings up to date) the tenant's schema inside the caller's transaction."""
    schema = tenant_schema(tenant_id)
    await conn.run_sync(upgrade_tenant_schema, schema)
    await repo.record_tenant_schema(conn, tenant_id=tenant_id, schema=schema, revision=tenant_head())
    return schema


async def on_tenant_created(conn: AsyncConnection, envelope: events_pb2.EventEnvelope) -> None:
    event = unpack(envelope, events_pb2.TenantCreated)
    schema = await provision_schema(conn, uuid.UUID(event.tenant_id))
    log.info("tenant_schema.provisioned", schema=schema)


async def on_tenant_deleted(conn: AsyncConnection, envelope: events_pb2.EventEnvelope) -> None:
    event = unpack(envelope, events_pb2.TenantDeleted)
    tenant_id = uuid.UUID(event.tenant_id)
    await repo.drop_tenant_schema(conn, tenant_id=tenant_id, schema=tenant_schema(tenant_id))
    await repo.forget_memberships(conn, tenant_id)
    await repo.forget_targets(conn, tenant_id=tenant_id)
    log.info("tenant_schema.dropped", tenant_id=str(tenant_id))


async def _scope(conn: AsyncConnection, tenant_id: uuid.UUID, user_id: uuid.UUID | None) -> tuple[str, str] | None:
    """The tenant's schema and (for a user) their current role, or None while either has not arrived yet; a removed
    member's role is ""."""
    if user_id is None:
        schema = await repo.schema_of(conn, tenant_id)
        return (schema, "") if schema is not None else None
    found = await repo.schema_and_role(conn, tenant_id=tenant_id, user_id=user_id)
    return None if found is None or found[1] is None else (found[0], found[1])


@contextlib.asynccontextmanager
async def _in_tenant(
    engine: AsyncEngine, tenant_id: uuid.UUID, user_id: uuid.UUID | None
) -> AsyncIterator[tuple[AsyncConnection, str]]:
    """One transaction in the tenant's schema, with the user's current role. A tenant (or a membership) created a
    moment ago comes by event: then wait a little for it, holding no connection meanwhile (a transaction held
    open while waiting would take a pooled connection from every other call), before answering not found."""
    async with engine.begin() as conn:
        scope = await _scope(conn, tenant_id, user_id)
        if scope is not None:  # nearly always: one query, in the transaction that follows
            await repo.use_tenant_schema(conn, scope[0])
            yield conn, scope[1]
            return

    async def arrived() -> tuple[str, str] | None:
        async with autocommit(engine).connect() as probe:
            return await _scope(probe, tenant_id, user_id)

    scope = await propagated(arrived)
    if scope is None:
        raise AppError(errors.TENANT_NOT_FOUND)
    async with engine.begin() as conn:
        await repo.use_tenant_schema(conn, scope[0])
        yield conn, scope[1]


@contextlib.asynccontextmanager
async def tenant_transaction(engine: AsyncEngine, tenant_id: uuid.UUID) -> AsyncIterator[AsyncConnection]:
    """One transaction in the tenant's schema (for the workers, which act for no user)."""
    async with _in_tenant(engine, tenant_id, None) as (conn, _):
        yield conn


@contextlib.asynccontextmanager
async def acting(
    analyses: Analyses, claims: AccessClaims, *, writes: bool = False, admin: bool = False
) -> AsyncIterator[AsyncConnection]:
    """One transaction in the caller's tenant, as the caller: their current role decides (the membership
    projection, kept by `membership.changed`), never the role in their token, which may be 15 minutes old.
    `writes` takes a member or up, `admin` an owner or admin. A removed member gets not found."""
    async with _in_tenant(analyses.engine, claims.tenant_id, claims.user_id) as (conn, role):
        if not role:
            raise AppError(errors.TENANT_NOT_FOUND)
        if (writes and role not in WRITERS) or (admin and role not in ADMINS):
            raise AppError(errors.FORBIDDEN)
        yield conn


async def on_membership_changed(conn: AsyncConnection, envelope: events_pb2.EventEnvelope) -> None:
    """Consumer of `membership.changed`: the roles every call of this service is authorised by."""
    event = unpack(envelope, events_pb2.MembershipChanged)
    await repo.upsert_membership(
        conn,
        tenant_id=uuid.UUID(event.tenant_id),
        user_id=uuid.UUID(event.user_id),
        role=event.role or "viewer",
        removed=event.removed,
        version=event.version,
    )


async def fill_membership_projection(
    *, analyses: Analyses, pages: AsyncIterator[list[tenants_pb2.MembershipRecord]]
) -> int | None:
    """Fills an empty projection from the tenants service's memberships (a deployment that had tenants before the
    projection existed); the number of memberships read, or None when there was nothing to fill. Events that arrive
    meanwhile are not lost: every write keeps the newest version."""
    async with analyses.engine.connect() as conn:
        if await repo.has_memberships(conn) or not await repo.has_tenant_schemas(conn):
            return None
    count = 0
    async for page in pages:
        async with analyses.engine.begin() as conn:
            for record in page:
                await repo.upsert_membership(
                    conn,
                    tenant_id=uuid.UUID(record.tenant_id),
                    user_id=uuid.UUID(record.user_id),
                    role=record.role,
                    removed=False,
                    version=record.version,
                )
        count += len(page)
    log.info("memberships.projection_filled", memberships=count)
    return count


# Repositories


def _parse_id(value: str, not_found: errors.ErrorSpec) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise AppError(not_found) from None


def _checked_ref(ref: str, field: str) -> str:
    try:
        return check_ref(ref)
    except RepositoryUrlError as exc:
        raise AppError(errors.REF_REFUSED, details={"field": field, "reason": exc.reason}) from None


async def _checked_url(analyses: Analyses, tenant_id: uuid.UUID, url: str) -> str:
    """Refused before any network or disk access: scheme, host allow-lists, credentials, transports."""
    config = await analyses.tenant_config(tenant_id)
    hosts = set(config.allowed_hosts) & set(analyses.deployment_hosts)
    try:
        location = check_repository_url(url, allowed_hosts=hosts, allow_local=analyses.allow_local)
    except RepositoryUrlError as exc:
        raise AppError(errors.REPOSITORY_URL_REFUSED, details={"field": "url", "reason": exc.reason}) from None
    return location.url


async def create_repository(
    *, analyses: Analyses, claims: AccessClaims, name: str, url: str, default_branch: str
) -> Repository:
    """A new repository of the tenant, within its quota of repositories."""
    name = validate_name(name.strip())
    branch = _checked_ref(default_branch or "main", "default_branch")
    async with acting(analyses, claims, writes=True) as conn:
        checked_url = await _checked_url(analyses, claims.tenant_id, url)
        # Under the lock, the name check too: of two creations of one name, the second hears 409, not the index.
        await repo.lock_quota(conn, claims.tenant_id, "repositories")
        if await repo.name_taken(conn, name):
            raise AppError(errors.REPOSITORY_NAME_TAKEN)
        limit = analyses.max_repositories
        if await repo.repository_count(conn, at_most=limit) >= limit:
            raise AppError(
                errors.REPOSITORY_QUOTA,
                message=f"Repository limit reached: a tenant may have {limit} repositories",
                details={"limit": str(limit)},
            )
        now = dt.datetime.now(dt.UTC)
        return await repo.add_repository(
            conn,
            Repository(id=new_id(), name=name, url=checked_url, default_branch=branch, created_at=now, updated_at=now),
        )


async def list_repositories(
    *, analyses: Analyses, claims: AccessClaims, name: str, page_size: int, cursor: str
) -> Page[Repository]:
    limit = page_limit(page_size)
    if len(name) > 100:
        raise invalid("name", "at most 100 characters")
    async with acting(analyses, claims) as conn:
        rows = await repo.list_repositories(conn, name=name, after=decode_cursor(cursor), limit=limit + 1)
    return page_of(rows, limit, lambda r: r.id)


async def _repository(conn: AsyncConnection, repository_id: str) -> Repository:
    found = await repo.repository_by_id(conn, _parse_id(repository_id, errors.REPOSITORY_NOT_FOUND))
    if found is None:
        raise AppError(errors.REPOSITORY_NOT_FOUND)
    return found


async def get_repository(*, analyses: Analyses, claims: AccessClaims, repository_id: str) -> Repository:
    async with acting(analyses, claims) as conn:
        return await _repository(conn, repository_id)


async def update_repository(
    *, analyses: Analyses, claims: AccessClaims, repository_id: str, fields: list[str], values: dict[str, str]
) -> Repository:
    unknown = set(fields) - {"name", "url", "default_branch"}
    if unknown or not fields:
        raise invalid("fields", "one or more of name, url, default_branch")
    changes: dict[str, str] = {}
    if "name" in fields:
        changes["name"] = validate_name(values.get("name", "").strip())
    if "default_branch" in fields:
        changes["default_branch"] = _checked_ref(values.get("default_branch", ""), "default_branch")
    async with acting(analyses, claims, writes=True) as conn:
        if "url" in fields:
            changes["url"] = await _checked_url(analyses, claims.tenant_id, values.get("url", ""))
        current = await _repository(conn, repository_id)
        if "name" in changes and await repo.name_taken(conn, changes["name"], other_than=current.id):
            raise AppError(errors.REPOSITORY_NAME_TAKEN)
        return await repo.update_repository(conn, current.id, **changes)


async def delete_repository(*, analyses: Analyses, claims: AccessClaims, repository_id: str) -> None:
    """Removes the repository and its analyses (running ones see their row vanish and stop)."""
    async with acting(analyses, claims, writes=True) as conn:
        current = await _repository(conn, repository_id)
        await repo.delete_repository(conn, current.id)
        await repo.forget_targets(conn, tenant_id=claims.tenant_id, repository_id=current.id)


# Analyses


async def _check_analysis_quotas(conn: AsyncConnection, analyses: Analyses, tenant_id: uuid.UUID) -> None:
    """Refuses an analysis past the tenant's quotas. The lock is held until the caller's insert commits."""
    await repo.lock_quota(conn, tenant_id, "analyses")
    now = dt.datetime.now(dt.UTC)
    queued, hourly = analyses.max_queued_analyses, analyses.max_analyses_per_hour
    usage = await repo.analysis_usage(conn, since=first_id_at(now - HOUR), recent_at_most=hourly)
    if usage.active >= queued:
        raise AppError(
            errors.QUEUED_ANALYSES_QUOTA,
            message=f"Too many analyses queued or running: a tenant may have {queued} at once",
            details={"limit": str(queued)},
        )
    if usage.recent >= hourly and usage.oldest_recent is not None:
        # The earliest a place frees: when the oldest of the hour leaves the window (more, if the limit was lowered).
        wait = math.ceil((id_time(usage.oldest_recent) + HOUR - now).total_seconds())
        raise AppError(
            errors.HOURLY_ANALYSES_QUOTA,
            message=f"Too many analyses in the last hour: a tenant may queue {hourly} an hour",
            details={"limit": str(hourly), "retry_after_s": str(max(wait, 1))},
        )


_SHA = re.compile(r"^[0-9a-f]{7,64}$")


def _checked_pull_request(pull_request: PullRequest | None) -> PullRequest | None:
    if pull_request is None:
        return None
    if not 1 <= pull_request.number <= 2**31 - 1:
        raise invalid("pull_request.number", "1-2147483647")
    for name in ("head_sha", "base_sha"):
        value = getattr(pull_request, name)
        if value and not _SHA.fullmatch(value):
            raise invalid(f"pull_request.{name}", "7-64 lower-case hexadecimal digits")
    return pull_request


async def start_analysis(
    *,
    analyses: Analyses,
    claims: AccessClaims,
    repository_id: str,
    ref: str,
    base_ref: str = "",
    pull_request: PullRequest | None = None,
) -> Analysis:
    """Queues an analysis and its job, within the tenant's quotas, in one transaction (the job leaves by the outbox).
    A branch other than the default one, or a pull request, is judged against `base_ref` (default: the default
    branch)."""
    checked_pull_request = _checked_pull_request(pull_request)
    async with acting(analyses, claims, writes=True) as conn:
        repository = await _repository(conn, repository_id)
        return await _queue(
            conn,
            analyses,
            tenant_id=claims.tenant_id,
            actor_id=str(claims.user_id),
            repository=repository,
            ref=_checked_ref(ref, "ref") if ref else repository.default_branch,
            base_ref=_checked_ref(base_ref, "base_ref") if base_ref else None,
            pull_request=checked_pull_request,
        )


async def _queue(
    conn: AsyncConnection,
    analyses: Analyses,
    *,
    tenant_id: uuid.UUID,
    actor_id: str,
    repository: Repository,
    ref: str,
    base_ref: str | None,
    pull_request: PullRequest | None,
    trigger: dict[str, str] | None = None,
) -> Analysis:
    await _check_analysis_quotas(conn, analyses, tenant_id)
    analysis = await repo.add_analysis(
        conn,
        analysis_id=new_id(),
        repository_id=repository.id,
        ref=ref,
        base_ref=base_ref,
        pull_request=pull_request,
        trigger=trigger,
    )
    job = make_envelope(
        event_type=ANALYSIS_REQUESTED,
        tenant_id=str(tenant_id),
        actor_id=actor_id,
        request_id=structlog.contextvars.get_contextvars().get("request_id") or "",
        payload=events_pb2.AnalysisRequested(
            tenant_id=str(tenant_id), analysis_id=str(analysis.id), repository_id=str(repository.id)
        ),
    )
    await add_event(conn, repo.outbox, subject=JOBS_SUBJECT, envelope=job)
    metrics.ANALYSES.labels(state="queued").inc()
    log.info("analysis.queued", analysis_id=str(analysis.id))
    return analysis


# GitHub webhooks


async def create_webhook_secret(
    *, analyses: Analyses, claims: AccessClaims, repository_id: str
) -> tuple[Repository, str]:
    """A new webhook secret for the repository (members and up); the one before stops verifying at once."""
    async with acting(analyses, claims, writes=True) as conn:
        repository = await _repository(conn, repository_id)
        generation = await repo.next_generation(
            conn, repo.hook_targets, repository_id=repository.id, tenant_id=claims.tenant_id
        )
    log.info("webhook_secret.issued", repository_id=str(repository.id), generation=generation)
    secret = github.webhook_secret(
        analyses.webhook_key, tenant_id=claims.tenant_id, repository_id=repository.id, generation=generation
    )
    return repository, secret


# GitHub redelivers a delivery for three days at most: a week later its id can go.
HOOK_DELIVERIES_KEPT = dt.timedelta(days=7)


async def purge_hook_deliveries(*, analyses: Analyses) -> int:
    """Forgets the ids of deliveries older than HOOK_DELIVERIES_KEPT; how many."""
    async with analyses.engine.begin() as conn:
        return await repo.purge_hook_deliveries(conn, older_than=HOOK_DELIVERIES_KEPT)


@dataclass(frozen=True)
class HookOutcome:
    analysis: Analysis | None  # queued; None when the delivery asked for nothing or was seen before
    duplicate: bool = False
    ignored: str = ""


async def receive_github_event(
    *, analyses: Analyses, repository_id: str, event: str, delivery_id: str, signature: str, body: bytes
) -> HookOutcome:
    """A webhook delivery from GitHub: verified with the repository's derived secret, seen once, then the analysis
    it asks for queued (a push to a branch, a pull request opened or updated). An unknown repository and a wrong
    signature get the same refusal: the endpoint is public, and tells a guesser nothing."""
    try:
        wanted = uuid.UUID(repository_id)
    except ValueError:
        raise AppError(errors.WEBHOOK_SIGNATURE) from None
    async with autocommit(analyses.engine).connect() as conn:
        target = await repo.target(conn, repo.hook_targets, wanted)
    if target is None:
        raise AppError(errors.WEBHOOK_SIGNATURE)
    tenant_id, generation = target
    secret = github.webhook_secret(
        analyses.webhook_key, tenant_id=tenant_id, repository_id=wanted, generation=generation
    )
    if not github.signature_matches(secret, body, signature):
        raise AppError(errors.WEBHOOK_SIGNATURE)
    if not delivery_id or len(delivery_id) > 100:
        raise invalid("X-GitHub-Delivery", "1-100 characters")
    asked = github.requested(event, body)
    async with tenant_transaction(analyses.engine, tenant_id) as conn:
        if not await repo.first_delivery(conn, delivery_id=delivery_id, repository_id=wanted):
            return HookOutcome(None, duplicate=True)
        if isinstance(asked, github.Ignored):
            return HookOutcome(None, ignored=asked.reason)
        repository = await repo.repository_by_id(conn, wanted)
        if repository is None:  # deleted since its secret was issued
            raise AppError(errors.WEBHOOK_SIGNATURE)
        try:
            ref = check_ref(asked.ref)
            base_ref = check_ref(asked.base_ref) if asked.base_ref else None
        except RepositoryUrlError:
            return HookOutcome(None, ignored="a ref RepoLens does not analyse")
        pull_request = asked.pull_request
        if pull_request is not None and not (_SHA.fullmatch(pull_request.head_sha) and pull_request.number > 0):
            return HookOutcome(None, ignored="not a pull request")
        analysis = await _queue(
            conn,
            analyses,
            tenant_id=tenant_id,
            actor_id="github",
            repository=repository,
            ref=ref,
            base_ref=base_ref,
            pull_request=pull_request,
            trigger={"kind": "github", "full_name": asked.full_name, "sha": asked.sha, "delivery": delivery_id},
        )
    return HookOutcome(analysis)


# README badges


async def create_badge_token(*, analyses: Analyses, claims: AccessClaims, repository_id: str) -> str:
    """A new badge token for the repository (owners and admins); the one before stops working at once."""
    async with acting(analyses, claims, admin=True) as conn:
        repository = await _repository(conn, repository_id)
        generation = await repo.next_generation(
            conn, repo.badge_targets, repository_id=repository.id, tenant_id=claims.tenant_id
        )
    log.info("badge_token.issued", repository_id=str(repository.id), generation=generation)
    return badges.badge_token(
        analyses.webhook_key, tenant_id=claims.tenant_id, repository_id=repository.id, generation=generation
    )


async def badge(*, analyses: Analyses, repository_id: str, token: str, branch: str) -> BadgeFacts | None:
    """What a badge shows, for the gateway (its credential only). None, whatever the reason (an unknown repository,
    no token issued, a wrong or rotated token, an unknown branch name): a badge URL is public, and a guesser
    learns nothing from it."""
    try:
        wanted = uuid.UUID(repository_id)
    except ValueError:
        return None
    if branch:
        try:
            branch = check_ref(branch)
        except RepositoryUrlError:
            return None
    async with autocommit(analyses.engine).connect() as conn:
        target = await repo.target(conn, repo.badge_targets, wanted)
    if target is None:
        return None
    tenant_id, generation = target
    expected = badges.badge_token(
        analyses.webhook_key, tenant_id=tenant_id, repository_id=wanted, generation=generation
    )
    if not badges.token_matches(expected, token):
        return None
    async with tenant_transaction(analyses.engine, tenant_id) as conn:
        return await repo.badge_facts(conn, wanted, branch or None)


async def list_analyses(
    *, analyses: Analyses, claims: AccessClaims, repository_id: str, status: str, page_size: int, cursor: str
) -> Page[Analysis]:
    limit = page_limit(page_size)
    if status and status not in STATUSES:
        raise invalid("status", ", ".join(STATUSES))
    wanted = _parse_id(repository_id, errors.REPOSITORY_NOT_FOUND) if repository_id else None
    async with acting(analyses, claims) as conn:
        rows = await repo.list_analyses(
            conn, repository_id=wanted, status=status, after=decode_cursor(cursor), limit=limit + 1
        )
    return page_of(rows, limit, lambda a: a.id)


async def list_branches(
    *, analyses: Analyses, claims: AccessClaims, repository_id: str, page_size: int, cursor: str
) -> tuple[list[tuple[Analysis, dict[str, Any] | None]], str]:
    """The repository's analysed branches by name, each with its newest analysis and the gate of its newest succeeded
    one (offset cursors, as branches come and go between pages rarely)."""
    limit = page_limit(page_size)
    if cursor and not cursor.isdigit():
        raise invalid("cursor", "not a cursor from this API")
    offset = int(cursor) if cursor else 0
    async with acting(analyses, claims) as conn:
        repository = await _repository(conn, repository_id)
        rows = await repo.branches(conn, repository.id, offset=offset, limit=limit + 1)
    return rows[:limit], str(offset + limit) if len(rows) > limit else ""


async def _analysis(conn: AsyncConnection, analysis_id: str, *, for_update: bool = False) -> Analysis:
    found = await repo.analysis_by_id(conn, _parse_id(analysis_id, errors.ANALYSIS_NOT_FOUND), for_update=for_update)
    if found is None:
        raise AppError(errors.ANALYSIS_NOT_FOUND)
    return found


async def get_analysis(*, analyses: Analyses, claims: AccessClaims, analysis_id: str) -> Analysis:
    """The hottest read of the product (CI jobs poll it): one prepared statement with its authorisation, on the
    fast reads' pool. Only a tenant or a membership that has not arrived yet takes the way of `acting`, which
    waits for them."""
    assert analyses.reads is not None, "the API process reads through FastReads"
    wanted = _parse_id(analysis_id, errors.ANALYSIS_NOT_FOUND)
    schema = tenant_schema(claims.tenant_id)
    params = {"tenant_id": claims.tenant_id, "user_id": claims.user_id, "analysis_id": wanted}
    try:
        row = await analyses.reads.one(repo.ANALYSIS_AS_MEMBER, params, schema=schema)
    except UndefinedTable:  # the schema's row is there a moment before its tables
        row = None
    if row is None or row.role is None or row.schema_name != schema:
        async with acting(analyses, claims) as conn:
            return await _analysis(conn, analysis_id)
    if row.removed:
        raise AppError(errors.TENANT_NOT_FOUND)
    found = repo.analysis_of_row(row)
    if found is None:
        raise AppError(errors.ANALYSIS_NOT_FOUND)
    return found


async def cancel_analysis(*, analyses: Analyses, claims: AccessClaims, analysis_id: str) -> Analysis:
    """A queued analysis ends at once; a running one is flagged and its worker stops within seconds."""
    async with acting(analyses, claims, writes=True) as conn:
        current = await _analysis(conn, analysis_id, for_update=True)
        if current.status in FINISHED:
            raise AppError(errors.ANALYSIS_FINISHED)
        await repo.request_cancel(conn, current.id)
        ended = current.status == QUEUED and await repo.finish(
            conn, current.id, status=CANCELLED, timings=current.timings
        )
        cancelled = await _analysis(conn, analysis_id)
    if ended:
        metrics.analysis_ended(CANCELLED, current.timings)
    return cancelled


async def get_report(*, analyses: Analyses, claims: AccessClaims, analysis_id: str) -> dict[str, Any]:
    async with acting(analyses, claims) as conn:
        _, report = await _succeeded_report(conn, analysis_id)
    return report


# The life of an analysis on the workers: queued -> running -> succeeded | failed | cancelled. Each step is one
# transaction that changes the state and records its event; metrics count only what committed.


@dataclass(frozen=True, slots=True)
class Claim:
    """An analysis a worker now runs (its attempt counted), and its repository."""

    tenant_id: uuid.UUID
    analysis: Analysis
    repository: Repository


def _lease_keys(tenant_id: uuid.UUID, place: int, repository_id: uuid.UUID) -> tuple[str, str]:
    return f"tenant:{tenant_id}:{place}", f"repository:{repository_id}"


async def take_turn(
    *, analyses: Analyses, tenant_id: uuid.UUID, repository_id: uuid.UUID, holder: str, places: int, lease_s: float
) -> bool:
    """Leases `holder` a place of the tenant's share of the workers and the repository, both or neither: at most
    `places` analyses of one tenant run at once, and one of each repository (docs/architecture.md)."""
    async with analyses.engine.begin() as conn:
        for place in range(places):
            tenant_key, repository_key = _lease_keys(tenant_id, place, repository_id)
            if await repo.take_lease(conn, key=tenant_key, holder=holder, lease_s=lease_s):
                break
        else:
            return False
        if await repo.take_lease(conn, key=repository_key, holder=holder, lease_s=lease_s):
            return True
        await repo.release_leases(conn, holder=holder)  # the place goes back with the repository busy
        return False


async def keep_turn(*, analyses: Analyses, holder: str, lease_s: float) -> bool:
    """Renews the holder's leases; False once they lapsed and another took one (the run must stop)."""
    async with analyses.engine.begin() as conn:
        return await repo.renew_leases(conn, holder=holder, lease_s=lease_s) == 2


async def end_turn(*, analyses: Analyses, holder: str) -> None:
    async with analyses.engine.begin() as conn:
        await repo.release_leases(conn, holder=holder)


async def claim(*, analyses: Analyses, tenant_id: uuid.UUID, analysis_id: uuid.UUID, max_attempts: int) -> Claim | None:
    """Marks the analysis running (one more attempt), or None when there is nothing (left) to do: it is gone or
    finished (a duplicate delivery), was cancelled while queued, or ran out of attempts (then it fails)."""
    ended: tuple[str, dict[str, float]] | None = None
    claimed: Claim | None = None
    async with tenant_transaction(analyses.engine, tenant_id) as conn:
        analysis = await repo.analysis_by_id(conn, analysis_id, for_update=True)
        if analysis is None or analysis.status in FINISHED:
            return None
        if analysis.cancel_requested:
            if await repo.finish(conn, analysis_id, status=CANCELLED, timings=analysis.timings):
                ended = (CANCELLED, analysis.timings)
        elif analysis.attempts >= max_attempts:
            if await _failed(conn, tenant_id, analysis, errors.ANALYSIS_ATTEMPTS_EXHAUSTED, analysis.timings):
                ended = (FAILED, analysis.timings)
        else:
            analysis = await repo.start_attempt(conn, analysis_id)
            repository = await repo.repository_by_id(conn, analysis.repository_id)
            if repository is not None:
                claimed = Claim(tenant_id=tenant_id, analysis=analysis, repository=repository)
    if ended is not None:
        metrics.analysis_ended(*ended)
    if claimed is not None:
        metrics.ANALYSES.labels(state="running").inc()
    return claimed


async def record_progress(
    *, analyses: Analyses, claimed: Claim, progress: int, step: str, timings: dict[str, float]
) -> bool:
    """False when the analysis was cancelled or removed meanwhile: its worker must stop."""
    async with tenant_transaction(analyses.engine, claimed.tenant_id) as conn:
        return await repo.record_progress(conn, claimed.analysis.id, progress=progress, step=step, timings=timings)


async def base_report(*, analyses: Analyses, claimed: Claim) -> dict[str, Any] | None:
    """The report this analysis is compared with (new and fixed findings, the gate on new code), with how it was
    chosen in `compared_with` (repository.base_report); None for the first of its kind."""
    async with tenant_transaction(analyses.engine, claimed.tenant_id) as conn:
        how, found = await repo.base_report(conn, claimed.analysis, default_branch=claimed.repository.default_branch)
    return {**found, "compared_with": how} if found is not None else None


async def succeed(
    *, analyses: Analyses, claimed: Claim, report: dict[str, Any], commit_sha: str, timings: dict[str, float]
) -> str:
    """Stores the report and publishes `analysis.completed`; an analysis cancelled while its last step was
    finishing ends cancelled instead (the user's word wins). Returns the final status."""
    analysis = claimed.analysis
    async with tenant_transaction(analyses.engine, claimed.tenant_id) as conn:
        current = await repo.analysis_by_id(conn, analysis.id, for_update=True)
        if current is not None and current.cancel_requested:
            status = CANCELLED
            ended = await repo.finish(conn, analysis.id, status=CANCELLED, timings=timings)
        else:
            status = SUCCEEDED
            ended = await repo.finish(
                conn, analysis.id, status=SUCCEEDED, timings=timings, report=report, commit_sha=commit_sha
            )
            if ended:
                await emit(
                    conn,
                    repo.outbox,
                    event=ANALYSIS_COMPLETED,
                    tenant_id=str(claimed.tenant_id),
                    payload=events_pb2.AnalysisFinished(
                        tenant_id=str(claimed.tenant_id),
                        analysis_id=str(analysis.id),
                        repository_id=str(analysis.repository_id),
                        status=SUCCEEDED,
                        code_lines=int(report.get("inventory", {}).get("totals", {}).get("code", 0)),
                    ),
                )
    if ended:
        metrics.analysis_ended(status, timings)
    return status


async def cancelled(*, analyses: Analyses, claimed: Claim, timings: dict[str, float]) -> None:
    """A running analysis stopped because it was cancelled."""
    async with tenant_transaction(analyses.engine, claimed.tenant_id) as conn:
        ended = await repo.finish(conn, claimed.analysis.id, status=CANCELLED, timings=timings)
    if ended:
        metrics.analysis_ended(CANCELLED, timings)


async def fail(*, analyses: Analyses, claimed: Claim, spec: ErrorSpec, timings: dict[str, float]) -> None:
    """A running analysis ended with the error `spec` (a clone refused or timed out...)."""
    async with tenant_transaction(analyses.engine, claimed.tenant_id) as conn:
        ended = await _failed(conn, claimed.tenant_id, claimed.analysis, spec, timings)
    if ended:
        metrics.analysis_ended(FAILED, timings)


async def fail_job(*, analyses: Analyses, tenant_id: uuid.UUID, analysis_id: uuid.UUID, spec: ErrorSpec) -> None:
    """An analysis whose job the workers gave up on (dead-lettered) ends failed, unless it already ended."""
    async with tenant_transaction(analyses.engine, tenant_id) as conn:
        analysis = await repo.analysis_by_id(conn, analysis_id, for_update=True)
        ended = analysis is not None and await _failed(conn, tenant_id, analysis, spec, analysis.timings)
    if ended:
        assert analysis is not None
        metrics.analysis_ended(FAILED, analysis.timings)


async def _failed(
    conn: AsyncConnection, tenant_id: uuid.UUID, analysis: Analysis, spec: ErrorSpec, timings: dict[str, float]
) -> bool:
    """Ends the analysis failed with `spec` and records `analysis.failed`; False when it had ended already."""
    if not await repo.finish(
        conn, analysis.id, status=FAILED, timings=timings, error_code=spec.code, error_message=spec.message
    ):
        return False
    await emit(
        conn,
        repo.outbox,
        event=ANALYSIS_FAILED,
        tenant_id=str(tenant_id),
        payload=events_pb2.AnalysisFinished(
            tenant_id=str(tenant_id),
            analysis_id=str(analysis.id),
            repository_id=str(analysis.repository_id),
            status=FAILED,
            error_code=spec.code,
        ),
    )
    log.info("analysis.failed", code=spec.code)
    return True


# Findings


async def _succeeded_report(conn: AsyncConnection, analysis_id: str) -> tuple[Analysis, dict[str, Any]]:
    current = await _analysis(conn, analysis_id)
    report = await repo.report_of(conn, current.id) if current.status == SUCCEEDED else None
    if report is None:
        raise AppError(errors.REPORT_NOT_READY)
    return current, report


async def list_findings(
    *,
    analyses: Analyses,
    claims: AccessClaims,
    analysis_id: str,
    severity: str,
    rule_id: str,
    only_new: bool,
    page_size: int,
    cursor: str,
) -> tuple[list[dict[str, Any]], str]:
    """A page of the report's findings (offset cursors: a report never changes once stored)."""
    limit = page_limit(page_size)
    try:
        offset = int(cursor) if cursor else 0
    except ValueError:
        raise invalid("cursor", "not a cursor from this API") from None
    if offset < 0:
        raise invalid("cursor", "not a cursor from this API")
    async with acting(analyses, claims) as conn:
        _, report = await _succeeded_report(conn, analysis_id)
    new = {f["fingerprint"] for f in report.get("changes", {}).get("new", [])}
    selected = [
        {**f, "new": f["fingerprint"] in new}
        for f in report.get("findings", [])
        if (not severity or f["severity"] == severity)
        and (not rule_id or f["rule_id"] == rule_id)
        and (not only_new or f["fingerprint"] in new)
    ]
    page = selected[offset : offset + limit]
    more = offset + limit < len(selected)
    return page, str(offset + limit) if more else ""


async def diff_analyses(
    *, analyses: Analyses, claims: AccessClaims, analysis_id: str, base_analysis_id: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """New and fixed findings between any two succeeded analyses of one repository, by fingerprint."""
    async with acting(analyses, claims) as conn:
        current, report = await _succeeded_report(conn, analysis_id)
        base, base_report = await _succeeded_report(conn, base_analysis_id)
    if base.repository_id != current.repository_id:
        raise invalid("base", "an analysis of the same repository")
    now = {f["fingerprint"]: f for f in report.get("findings", [])}
    before = {f["fingerprint"]: f for f in base_report.get("findings", [])}
    return (
        [now[k] for k in sorted(now.keys() - before.keys())],
        [before[k] for k in sorted(before.keys() - now.keys())],
        len(now.keys() & before.keys()),
    )


async def get_sarif(*, analyses: Analyses, claims: AccessClaims, analysis_id: str) -> dict[str, Any]:
    """Every finding of a succeeded analysis as a SARIF log, built from the stored report so the two always agree."""
    async with acting(analyses, claims) as conn:
        current, report = await _succeeded_report(conn, analysis_id)
    return to_sarif(report, analysis_id=str(current.id), started_at=current.started_at, finished_at=current.finished_at)
