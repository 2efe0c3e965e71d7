"""Analysis operations: tenant schemas, repositories, analyses (the worker's part is in worker.py)."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.common import errors, metrics
from libs.common.errors import AppError
from libs.common.events import make_envelope, new_id, propagated, unpack
from libs.common.migrations import alembic_config
from libs.common.outbox import add_event, emit
from libs.common.pagination import Page, decode_cursor, page_limit, page_of
from libs.common.tokens import AccessClaims
from repolens.events.v1 import events_pb2
from services.analysis import repository as repo
from services.analysis.domain import (
    ANALYSIS_REQUESTED,
    CANCELLED,
    FINISHED,
    JOBS_SUBJECT,
    QUEUED,
    STATUSES,
    SUCCEEDED,
    Analysis,
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
WRITERS = ("owner", "admin", "member")

TenantConfigSource = Callable[[uuid.UUID], Awaitable[TenantConfig]]


@dataclass
class Analyses:
    """What the use cases need, built once in main."""

    engine: AsyncEngine
    tenant_config: TenantConfigSource
    deployment_hosts: tuple[str, ...] = ("github.com",)
    allow_local: bool = False
    on_events: Callable[[], None] | None = None

    def events_written(self) -> None:
        if self.on_events is not None:
            self.on_events()


def tenant_head() -> str:
    head = ScriptDirectory(str(TENANT_MIGRATIONS)).get_current_head()
    assert head is not None
    return head


# Tenant schemas (consumers of tenant.created / tenant.deleted, and the migrate CLI)


def upgrade_tenant_schema(sync_conn: sa.Connection, schema: str, revision: str = "head") -> None:
    config = alembic_config(script_location=TENANT_MIGRATIONS, schema=schema, sqlalchemy_url="")
    config.attributes["connection"] = sync_conn
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
    log.info("tenant_schema.dropped", tenant_id=str(tenant_id))


@contextlib.asynccontextmanager
async def tenant_transaction(engine: AsyncEngine, tenant_id: uuid.UUID) -> AsyncIterator[AsyncConnection]:
    """One transaction in the tenant's schema. A tenant created a moment ago may not have its
    schema yet (it comes by event), so wait a little before answering not found."""
    async with engine.begin() as conn:
        schema = await propagated(lambda: repo.schema_of(conn, tenant_id))  # read committed: each try sees new rows
        if schema is None:
            raise AppError(errors.TENANT_NOT_FOUND)
        await repo.use_tenant_schema(conn, schema)
        yield conn


# Repositories


def _ensure_writer(claims: AccessClaims) -> None:
    if claims.role not in WRITERS:
        raise AppError(errors.FORBIDDEN)


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
    _ensure_writer(claims)
    name = validate_name(name.strip())
    branch = _checked_ref(default_branch or "main", "default_branch")
    checked_url = await _checked_url(analyses, claims.tenant_id, url)
    async with tenant_transaction(analyses.engine, claims.tenant_id) as conn:
        if await repo.name_taken(conn, name):
            raise AppError(errors.REPOSITORY_NAME_TAKEN)
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
    async with tenant_transaction(analyses.engine, claims.tenant_id) as conn:
        rows = await repo.list_repositories(conn, name=name, after=decode_cursor(cursor), limit=limit + 1)
    return page_of(rows, limit, lambda r: r.id)


async def _repository(conn: AsyncConnection, repository_id: str) -> Repository:
    found = await repo.repository_by_id(conn, _parse_id(repository_id, errors.REPOSITORY_NOT_FOUND))
    if found is None:
        raise AppError(errors.REPOSITORY_NOT_FOUND)
    return found


async def get_repository(*, analyses: Analyses, claims: AccessClaims, repository_id: str) -> Repository:
    async with tenant_transaction(analyses.engine, claims.tenant_id) as conn:
        return await _repository(conn, repository_id)


async def update_repository(
    *, analyses: Analyses, claims: AccessClaims, repository_id: str, fields: list[str], values: dict[str, str]
) -> Repository:
    _ensure_writer(claims)
    unknown = set(fields) - {"name", "url", "default_branch"}
    if unknown or not fields:
        raise invalid("fields", "one or more of name, url, default_branch")
    changes: dict[str, str] = {}
    if "name" in fields:
        changes["name"] = validate_name(values.get("name", "").strip())
    if "default_branch" in fields:
        changes["default_branch"] = _checked_ref(values.get("default_branch", ""), "default_branch")
    if "url" in fields:
        changes["url"] = await _checked_url(analyses, claims.tenant_id, values.get("url", ""))
    async with tenant_transaction(analyses.engine, claims.tenant_id) as conn:
        current = await _repository(conn, repository_id)
        if "name" in changes and await repo.name_taken(conn, changes["name"], other_than=current.id):
            raise AppError(errors.REPOSITORY_NAME_TAKEN)
        return await repo.update_repository(conn, current.id, **changes)


async def delete_repository(*, analyses: Analyses, claims: AccessClaims, repository_id: str) -> None:
    """Removes the repository and its analyses (running ones see their row vanish and stop)."""
    _ensure_writer(claims)
    async with tenant_transaction(analyses.engine, claims.tenant_id) as conn:
        current = await _repository(conn, repository_id)
        await repo.delete_repository(conn, current.id)


# Analyses


async def start_analysis(*, analyses: Analyses, claims: AccessClaims, repository_id: str, ref: str) -> Analysis:
    """Queues an analysis and its job, in one transaction (the job leaves through the outbox)."""
    _ensure_writer(claims)
    async with tenant_transaction(analyses.engine, claims.tenant_id) as conn:
        repository = await _repository(conn, repository_id)
        checked = _checked_ref(ref, "ref") if ref else repository.default_branch
        analysis = await repo.add_analysis(conn, analysis_id=new_id(), repository_id=repository.id, ref=checked)
        job = make_envelope(
            event_type=ANALYSIS_REQUESTED,
            tenant_id=str(claims.tenant_id),
            actor_id=str(claims.user_id),
            request_id=structlog.contextvars.get_contextvars().get("request_id") or "",
            payload=events_pb2.AnalysisRequested(
                tenant_id=str(claims.tenant_id), analysis_id=str(analysis.id), repository_id=str(repository.id)
            ),
        )
        await add_event(conn, repo.outbox, subject=JOBS_SUBJECT, envelope=job)
    analyses.events_written()
    metrics.ANALYSES.labels(state="queued").inc()
    log.info("analysis.queued", analysis_id=str(analysis.id))
    return analysis


async def list_analyses(
    *, analyses: Analyses, claims: AccessClaims, repository_id: str, status: str, page_size: int, cursor: str
) -> Page[Analysis]:
    limit = page_limit(page_size)
    if status and status not in STATUSES:
        raise invalid("status", ", ".join(STATUSES))
    wanted = _parse_id(repository_id, errors.REPOSITORY_NOT_FOUND) if repository_id else None
    async with tenant_transaction(analyses.engine, claims.tenant_id) as conn:
        rows = await repo.list_analyses(
            conn, repository_id=wanted, status=status, after=decode_cursor(cursor), limit=limit + 1
        )
    return page_of(rows, limit, lambda a: a.id)


async def _analysis(conn: AsyncConnection, analysis_id: str, *, for_update: bool = False) -> Analysis:
    found = await repo.analysis_by_id(conn, _parse_id(analysis_id, errors.ANALYSIS_NOT_FOUND), for_update=for_update)
    if found is None:
        raise AppError(errors.ANALYSIS_NOT_FOUND)
    return found


async def get_analysis(*, analyses: Analyses, claims: AccessClaims, analysis_id: str) -> Analysis:
    async with tenant_transaction(analyses.engine, claims.tenant_id) as conn:
        return await _analysis(conn, analysis_id)


async def cancel_analysis(*, analyses: Analyses, claims: AccessClaims, analysis_id: str) -> Analysis:
    """A queued analysis ends at once; a running one is flagged and its worker stops within seconds."""
    _ensure_writer(claims)
    async with tenant_transaction(analyses.engine, claims.tenant_id) as conn:
        current = await _analysis(conn, analysis_id, for_update=True)
        if current.status in FINISHED:
            raise AppError(errors.ANALYSIS_FINISHED)
        await repo.request_cancel(conn, current.id)
        if current.status == QUEUED:
            await repo.finish(conn, current.id, status=CANCELLED, timings=current.timings)
        return await _analysis(conn, analysis_id)


async def get_report(*, analyses: Analyses, claims: AccessClaims, analysis_id: str) -> dict[str, Any]:
    async with tenant_transaction(analyses.engine, claims.tenant_id) as conn:
        current = await _analysis(conn, analysis_id)
        report = await repo.report_of(conn, current.id) if current.status == SUCCEEDED else None
    if report is None:
        raise AppError(errors.REPORT_NOT_READY)
    return report


async def emit_finished(conn: AsyncConnection, *, event_type: str, payload: events_pb2.AnalysisFinished) -> None:
    await emit(
        conn,
        repo.outbox,
        service="analysis",
        event_type=event_type,
        payload=payload,
        tenant_id=payload.tenant_id,
    )


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
    async with tenant_transaction(analyses.engine, claims.tenant_id) as conn:
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
    async with tenant_transaction(analyses.engine, claims.tenant_id) as conn:
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
    async with tenant_transaction(analyses.engine, claims.tenant_id) as conn:
        current, report = await _succeeded_report(conn, analysis_id)
    return to_sarif(report, analysis_id=str(current.id), started_at=current.started_at, finished_at=current.finished_at)
