"""All SQL of the analysis service. Tenant tables carry no schema: the unit of work sets search_path."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.consumer import inbox_table
from libs.common.migrations import checked_schema
from libs.common.outbox import outbox_table
from services.analysis.domain import (
    FINISHED,
    QUEUED,
    RUNNING,
    SERVICE_SCHEMA,
    SUCCEEDED,
    TENANT_SCHEMA,
    Analysis,
    AnalysisUsage,
    BadgeFacts,
    PullRequest,
    Repository,
)

service_metadata = sa.MetaData()
tenant_schemas = sa.Table(
    "tenant_schemas",
    service_metadata,
    sa.Column("tenant_id", sa.Uuid, primary_key=True),
    sa.Column("schema_name", sa.Text),
    sa.Column("revision", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("migrated_at", sa.DateTime(timezone=True)),
    schema=SERVICE_SCHEMA,
)
memberships = sa.Table(
    "memberships",
    service_metadata,
    sa.Column("tenant_id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.Uuid, primary_key=True),
    sa.Column("role", sa.Text),
    sa.Column("removed", sa.Boolean),
    sa.Column("version", sa.BigInteger),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
    schema=SERVICE_SCHEMA,
)
leases = sa.Table(
    "leases",
    service_metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("holder", sa.Text),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    schema=SERVICE_SCHEMA,
)


def _targets(name: str) -> sa.Table:
    """Whose a repository is, and the generation in force of one secret derived for it (migrations s0005, s0006)."""
    return sa.Table(
        name,
        service_metadata,
        sa.Column("repository_id", sa.Uuid, primary_key=True),
        sa.Column("tenant_id", sa.Uuid),
        sa.Column("generation", sa.Integer),
        sa.Column("created_at", sa.DateTime(timezone=True)),
        schema=SERVICE_SCHEMA,
    )


hook_targets = _targets("hook_targets")  # GitHub webhook secrets
badge_targets = _targets("badge_targets")  # README badge tokens
hook_deliveries = sa.Table(
    "hook_deliveries",
    service_metadata,
    sa.Column("delivery_id", sa.Text, primary_key=True),
    sa.Column("repository_id", sa.Uuid),
    sa.Column("received_at", sa.DateTime(timezone=True)),
    schema=SERVICE_SCHEMA,
)
outbox = outbox_table(service_metadata, SERVICE_SCHEMA)
inbox = inbox_table(service_metadata, SERVICE_SCHEMA)

# Tenant scope: resolved through search_path, never a named schema.
tenant_metadata = sa.MetaData()
repositories = sa.Table(
    "repositories",
    tenant_metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.Text),
    sa.Column("url", sa.Text),
    sa.Column("default_branch", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)
analyses = sa.Table(
    "analyses",
    tenant_metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("repository_id", sa.Uuid),
    sa.Column("ref", sa.Text),
    sa.Column("status", sa.Text),
    sa.Column("progress", sa.Integer),
    sa.Column("step", sa.Text),
    sa.Column("timings", postgresql.JSONB),
    sa.Column("attempts", sa.Integer),
    sa.Column("cancel_requested", sa.Boolean),
    sa.Column("error_code", sa.Text),
    sa.Column("error_message", sa.Text),
    sa.Column("commit_sha", sa.Text),
    sa.Column("report", postgresql.JSONB),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("base_ref", sa.Text),
    sa.Column("pull_request", postgresql.JSONB(none_as_null=True)),  # None is SQL NULL, not JSON null
    sa.Column("trigger", postgresql.JSONB(none_as_null=True)),
)


# Tenant schemas


async def use_tenant_schema(conn: AsyncConnection, schema: str) -> None:
    """Scopes the current transaction to one tenant; SET LOCAL ends with the transaction, even on rollback."""
    if not TENANT_SCHEMA.fullmatch(schema):
        raise ValueError(f"invalid tenant schema {schema!r}")
    await conn.execute(sa.text(f'SET LOCAL search_path TO "{checked_schema(schema)}"'))


async def schema_of(conn: AsyncConnection, tenant_id: uuid.UUID) -> str | None:
    query = sa.select(tenant_schemas.c.schema_name).where(tenant_schemas.c.tenant_id == tenant_id)
    return (await conn.execute(query)).scalar_one_or_none()


async def schema_and_role(
    conn: AsyncConnection, *, tenant_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[str, str | None] | None:
    """The tenant's schema and the user's current role in it, in one round trip: None without a schema; a role
    of None while the membership has not arrived, "" once it was removed."""
    query = (
        sa.select(tenant_schemas.c.schema_name, memberships.c.role, memberships.c.removed)
        .select_from(
            tenant_schemas.outerjoin(
                memberships,
                sa.and_(memberships.c.tenant_id == tenant_schemas.c.tenant_id, memberships.c.user_id == user_id),
            )
        )
        .where(tenant_schemas.c.tenant_id == tenant_id)
    )
    row = (await conn.execute(query)).first()
    if row is None:
        return None
    if row.role is None:
        return row.schema_name, None
    return row.schema_name, "" if row.removed else row.role


# The membership projection (of the tenants service's data, kept by membership.changed)


async def upsert_membership(
    conn: AsyncConnection, *, tenant_id: uuid.UUID, user_id: uuid.UUID, role: str, removed: bool, version: int
) -> None:
    """Keeps the newest version only: events may arrive out of order, and a sync may overlap them."""
    statement = insert(memberships).values(
        tenant_id=tenant_id, user_id=user_id, role=role, removed=removed, version=version
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[memberships.c.tenant_id, memberships.c.user_id],
            set_={
                "role": statement.excluded.role,
                "removed": statement.excluded.removed,
                "version": statement.excluded.version,
                "updated_at": sa.func.now(),
            },
            where=memberships.c.version < statement.excluded.version,
        )
    )


async def forget_memberships(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    await conn.execute(memberships.delete().where(memberships.c.tenant_id == tenant_id))


async def has_memberships(conn: AsyncConnection) -> bool:
    return bool((await conn.execute(sa.select(sa.exists(sa.select(memberships.c.tenant_id))))).scalar())


async def has_tenant_schemas(conn: AsyncConnection) -> bool:
    return bool((await conn.execute(sa.select(sa.exists(sa.select(tenant_schemas.c.tenant_id))))).scalar())


async def record_tenant_schema(conn: AsyncConnection, *, tenant_id: uuid.UUID, schema: str, revision: str) -> None:
    statement = insert(tenant_schemas).values(tenant_id=tenant_id, schema_name=schema, revision=revision)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[tenant_schemas.c.tenant_id],
            set_={"revision": statement.excluded.revision, "migrated_at": sa.func.now()},
        )
    )


async def drop_tenant_schema(conn: AsyncConnection, *, tenant_id: uuid.UUID, schema: str) -> None:
    await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{checked_schema(schema)}" CASCADE'))
    await conn.execute(tenant_schemas.delete().where(tenant_schemas.c.tenant_id == tenant_id))


async def revision_counts(conn: AsyncConnection) -> dict[str, int]:
    query = sa.select(tenant_schemas.c.revision, sa.func.count()).group_by(tenant_schemas.c.revision)
    return {row[0]: int(row[1]) for row in (await conn.execute(query)).all()}


# Repositories


def _repository(row: Any) -> Repository:
    return Repository(
        id=row.id,
        name=row.name,
        url=row.url,
        default_branch=row.default_branch,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def add_repository(conn: AsyncConnection, repository: Repository) -> Repository:
    row = (
        await conn.execute(
            repositories.insert()
            .values(
                id=repository.id, name=repository.name, url=repository.url, default_branch=repository.default_branch
            )
            .returning(repositories)
        )
    ).one()
    return _repository(row)


async def name_taken(conn: AsyncConnection, name: str, *, other_than: uuid.UUID | None = None) -> bool:
    query = sa.exists().where(sa.func.lower(repositories.c.name) == name.lower())
    if other_than is not None:
        query = query.where(repositories.c.id != other_than)
    return bool((await conn.execute(sa.select(query))).scalar_one())


async def repository_by_id(conn: AsyncConnection, repository_id: uuid.UUID) -> Repository | None:
    row = (await conn.execute(sa.select(repositories).where(repositories.c.id == repository_id))).first()
    return _repository(row) if row else None


async def list_repositories(
    conn: AsyncConnection, *, name: str, after: uuid.UUID | None, limit: int
) -> list[Repository]:
    query = sa.select(repositories)
    if name:
        pattern = "%" + name.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(sa.func.lower(repositories.c.name).like(pattern, escape="\\"))
    if after is not None:
        query = query.where(repositories.c.id > after)
    rows = (await conn.execute(query.order_by(repositories.c.id).limit(limit))).all()
    return [_repository(r) for r in rows]


async def update_repository(conn: AsyncConnection, repository_id: uuid.UUID, **values: str) -> Repository:
    row = (
        await conn.execute(
            repositories.update()
            .where(repositories.c.id == repository_id)
            .values(**values, updated_at=sa.func.now())
            .returning(repositories)
        )
    ).one()
    return _repository(row)


async def delete_repository(conn: AsyncConnection, repository_id: uuid.UUID) -> bool:
    result = await conn.execute(
        repositories.delete().where(repositories.c.id == repository_id).returning(repositories.c.id)
    )
    return result.first() is not None


# Quotas: each count runs under lock_quota, in the transaction of the insert it allows.


async def lock_quota(conn: AsyncConnection, tenant_id: uuid.UUID, quota: str) -> None:
    """Serialises one tenant's count-then-insert for one quota until the transaction ends, rollback included, so
    two concurrent requests cannot both take the last place."""
    await conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtext(:quota), hashtext(:tenant))"),
        {"quota": f"analysis:quota:{quota}", "tenant": str(tenant_id)},
    )


async def repository_count(conn: AsyncConnection, *, at_most: int) -> int:
    """The tenant's repositories, counted up to `at_most` along the primary key: bounded whatever the table holds."""
    bounded = sa.select(repositories.c.id).order_by(repositories.c.id).limit(at_most).subquery()
    return int((await conn.execute(sa.select(sa.func.count()).select_from(bounded))).scalar_one())


async def analysis_usage(conn: AsyncConnection, *, since: uuid.UUID, recent_at_most: int) -> AnalysisUsage:
    """In one round trip: analyses queued or running (the status index), and those queued since `since` (ids are
    time-ordered, so the primary key), counted up to `recent_at_most`, with the oldest of them."""
    active = sa.select(sa.func.count()).where(analyses.c.status.in_((QUEUED, RUNNING))).scalar_subquery()
    window = sa.select(analyses.c.id).where(analyses.c.id >= since).order_by(analyses.c.id)
    recent = sa.select(sa.func.count()).select_from(window.limit(recent_at_most).subquery()).scalar_subquery()
    oldest = window.limit(1).scalar_subquery()  # no min() for uuid in PostgreSQL
    row = (await conn.execute(sa.select(active.label("active"), recent.label("recent"), oldest.label("oldest")))).one()
    return AnalysisUsage(active=int(row.active), recent=int(row.recent), oldest_recent=row.oldest)


# Analyses

_ANALYSIS_COLUMNS = [c for c in analyses.c if c.name != "report"]


def _analysis(row: Any) -> Analysis:
    return Analysis(
        id=row.id,
        repository_id=row.repository_id,
        ref=row.ref,
        status=row.status,
        progress=row.progress,
        step=row.step,
        timings=dict(row.timings),
        attempts=row.attempts,
        cancel_requested=row.cancel_requested,
        error_code=row.error_code,
        error_message=row.error_message,
        commit_sha=row.commit_sha,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        base_ref=row.base_ref,
        pull_request=PullRequest(**row.pull_request) if row.pull_request else None,
        trigger=dict(row.trigger) if row.trigger else None,
    )


async def add_analysis(
    conn: AsyncConnection,
    *,
    analysis_id: uuid.UUID,
    repository_id: uuid.UUID,
    ref: str,
    base_ref: str | None = None,
    pull_request: PullRequest | None = None,
    trigger: dict[str, str] | None = None,
) -> Analysis:
    row = (
        await conn.execute(
            analyses.insert()
            .values(
                id=analysis_id,
                repository_id=repository_id,
                ref=ref,
                status=QUEUED,
                base_ref=base_ref,
                pull_request=pull_request.to_dict() if pull_request else None,
                trigger=trigger,
            )
            .returning(*_ANALYSIS_COLUMNS)
        )
    ).one()
    return _analysis(row)


# The read a CI job polls, in one round trip with what authorises it (FastReads, with the tenant's schema): the
# tenant's schema row, the caller's membership and the analysis. No row: the tenant has not arrived; no role: the
# membership has not; no id: no such analysis.
ANALYSIS_AS_MEMBER = (
    sa.select(tenant_schemas.c.schema_name, memberships.c.role, memberships.c.removed, *_ANALYSIS_COLUMNS)
    .select_from(
        tenant_schemas.outerjoin(
            memberships,
            sa.and_(
                memberships.c.tenant_id == tenant_schemas.c.tenant_id,
                memberships.c.user_id == sa.bindparam("user_id", type_=sa.Uuid),
            ),
        ).outerjoin(analyses, analyses.c.id == sa.bindparam("analysis_id", type_=sa.Uuid))
    )
    .where(tenant_schemas.c.tenant_id == sa.bindparam("tenant_id", type_=sa.Uuid))
)


def analysis_of_row(row: Any) -> Analysis | None:
    """The analysis in a row of ANALYSIS_AS_MEMBER, if any."""
    return _analysis(row) if row.id is not None else None


async def analysis_by_id(conn: AsyncConnection, analysis_id: uuid.UUID, *, for_update: bool = False) -> Analysis | None:
    query = sa.select(*_ANALYSIS_COLUMNS).where(analyses.c.id == analysis_id)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return _analysis(row) if row else None


async def list_analyses(
    conn: AsyncConnection, *, repository_id: uuid.UUID | None, status: str, after: uuid.UUID | None, limit: int
) -> list[Analysis]:
    query = sa.select(*_ANALYSIS_COLUMNS)
    if repository_id is not None:
        query = query.where(analyses.c.repository_id == repository_id)
    if status:
        query = query.where(analyses.c.status == status)
    if after is not None:
        query = query.where(analyses.c.id < after)
    rows = (await conn.execute(query.order_by(analyses.c.id.desc()).limit(limit))).all()
    return [_analysis(r) for r in rows]


async def start_attempt(conn: AsyncConnection, analysis_id: uuid.UUID) -> Analysis:
    row = (
        await conn.execute(
            analyses.update()
            .where(analyses.c.id == analysis_id)
            .values(
                status=RUNNING,
                attempts=analyses.c.attempts + 1,
                started_at=sa.func.coalesce(analyses.c.started_at, sa.func.now()),
                progress=0,
                step="",
                error_code="",
                error_message="",
            )
            .returning(*_ANALYSIS_COLUMNS)
        )
    ).one()
    return _analysis(row)


async def record_progress(
    conn: AsyncConnection, analysis_id: uuid.UUID, *, progress: int, step: str, timings: dict[str, float]
) -> bool:
    """False when the analysis was cancelled (or finished elsewhere): the worker must stop."""
    result = await conn.execute(
        analyses.update()
        .where(analyses.c.id == analysis_id, analyses.c.status == RUNNING, analyses.c.cancel_requested.is_(False))
        .values(progress=progress, step=step, timings=timings)
        .returning(analyses.c.id)
    )
    return result.first() is not None


async def finish(
    conn: AsyncConnection,
    analysis_id: uuid.UUID,
    *,
    status: str,
    timings: dict[str, float],
    report: dict[str, Any] | None = None,
    commit_sha: str = "",
    error_code: str = "",
    error_message: str = "",
) -> bool:
    """Ends an analysis once: False when it had already ended (a duplicate delivery)."""
    result = await conn.execute(
        analyses.update()
        .where(analyses.c.id == analysis_id, analyses.c.status.not_in(FINISHED))
        .values(
            status=status,
            progress=100 if status == "succeeded" else analyses.c.progress,
            step="",
            timings=timings,
            report=report,
            commit_sha=commit_sha,
            error_code=error_code,
            error_message=error_message,
            finished_at=sa.func.now(),
        )
        .returning(analyses.c.id)
    )
    return result.first() is not None


async def request_cancel(conn: AsyncConnection, analysis_id: uuid.UUID) -> None:
    await conn.execute(analyses.update().where(analyses.c.id == analysis_id).values(cancel_requested=True))


async def report_of(conn: AsyncConnection, analysis_id: uuid.UUID) -> dict[str, Any] | None:
    query = sa.select(analyses.c.report).where(analyses.c.id == analysis_id)
    value = (await conn.execute(query)).scalar_one_or_none()
    return dict(value) if value is not None else None


async def _newest_report(conn: AsyncConnection, *which: sa.ColumnElement[bool]) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            sa.select(analyses.c.id, analyses.c.ref, analyses.c.commit_sha, analyses.c.report)
            .where(analyses.c.status == SUCCEEDED, analyses.c.report.is_not(None), *which)
            .order_by(analyses.c.id.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return None
    return {**row.report, "analysis_id": str(row.id), "ref": row.ref, "commit_sha": row.commit_sha}


async def base_report(
    conn: AsyncConnection, analysis: Analysis, *, default_branch: str
) -> tuple[str, dict[str, Any] | None]:
    """What `analysis` is compared with, and how (`previous`, `base` or `base_commit`): for the default branch, its
    newest succeeded analysis before this one; for another branch or a pull request, the newest succeeded analysis of
    the base branch (the default one unless named), that of the pull request's base commit when there is one."""
    same_repository = analyses.c.repository_id == analysis.repository_id
    if not analysis.compares_with_base(default_branch):
        found = await _newest_report(
            conn,
            same_repository,
            analyses.c.ref == analysis.ref,
            analyses.c.pull_request.is_(None),
            analyses.c.base_ref.is_(None),
            analyses.c.id < analysis.id,
        )
        return "previous", found
    base = analysis.base_ref or default_branch
    of_base = (same_repository, analyses.c.ref == base, analyses.c.pull_request.is_(None), analyses.c.id != analysis.id)
    if analysis.pull_request is not None and analysis.pull_request.base_sha:
        found = await _newest_report(conn, *of_base, analyses.c.commit_sha == analysis.pull_request.base_sha)
        if found is not None:
            return "base_commit", found
    return "base", await _newest_report(conn, *of_base)


async def branches(
    conn: AsyncConnection, repository_id: uuid.UUID, *, offset: int, limit: int
) -> list[tuple[Analysis, dict[str, Any] | None]]:
    """The repository's analysed branches (pull requests apart), by name: each one's newest analysis, and the quality
    gate of its newest succeeded one (with that analysis's id)."""
    branch = sa.and_(analyses.c.repository_id == repository_id, analyses.c.pull_request.is_(None))
    newest = (
        sa.select(*_ANALYSIS_COLUMNS)
        .where(branch)
        .ext(postgresql.distinct_on(analyses.c.ref))
        .order_by(analyses.c.ref, analyses.c.id.desc())
        .subquery("newest")
    )
    gated = (
        sa.select(
            analyses.c.ref,
            analyses.c.id.label("gate_analysis_id"),
            analyses.c.report["quality_gate"].label("gate"),
        )
        .where(branch, analyses.c.status == SUCCEEDED)
        .ext(postgresql.distinct_on(analyses.c.ref))
        .order_by(analyses.c.ref, analyses.c.id.desc())
        .subquery("gated")
    )
    rows = (
        await conn.execute(
            sa.select(newest, gated.c.gate_analysis_id, gated.c.gate)
            .select_from(newest.outerjoin(gated, gated.c.ref == newest.c.ref))
            .order_by(newest.c.ref)
            .offset(offset)
            .limit(limit)
        )
    ).all()
    out = []
    for row in rows:
        gate = {**row.gate, "analysis_id": str(row.gate_analysis_id)} if row.gate is not None else None
        out.append((_analysis(row), gate))
    return out


# Repositories reached without a user's token (service scope): GitHub's webhooks (s0005) and README badges (s0006).
# Each table says whose a repository is and which generation of its derived secret is in force.


async def next_generation(
    conn: AsyncConnection, table: sa.Table, *, repository_id: uuid.UUID, tenant_id: uuid.UUID
) -> int:
    """The repository's secret in `table`, one generation on (the first is 1): the one before stops verifying."""
    statement = insert(table).values(repository_id=repository_id, tenant_id=tenant_id, generation=1)
    result = await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[table.c.repository_id], set_={"generation": table.c.generation + 1}
        ).returning(table.c.generation)
    )
    return int(result.scalar_one())


async def target(conn: AsyncConnection, table: sa.Table, repository_id: uuid.UUID) -> tuple[uuid.UUID, int] | None:
    """Whose the repository is and its secret's generation; None when no secret was ever issued for it."""
    query = sa.select(table.c.tenant_id, table.c.generation).where(table.c.repository_id == repository_id)
    row = (await conn.execute(query)).first()
    return (row.tenant_id, row.generation) if row else None


async def forget_targets(
    conn: AsyncConnection, *, tenant_id: uuid.UUID, repository_id: uuid.UUID | None = None
) -> None:
    """A deleted repository (or every repository of a deleted tenant) stops being reachable by hook or badge."""
    for table in (hook_targets, badge_targets):
        query = table.delete().where(table.c.tenant_id == tenant_id)
        if repository_id is not None:
            query = query.where(table.c.repository_id == repository_id)
        await conn.execute(query)


async def badge_facts(conn: AsyncConnection, repository_id: uuid.UUID, branch: str | None) -> BadgeFacts | None:
    """None for an unknown repository; `branch` None is its default branch. Only scalars leave the database, never
    the report."""
    default = (
        await conn.execute(sa.select(repositories.c.default_branch).where(repositories.c.id == repository_id))
    ).scalar_one_or_none()
    if default is None:
        return None
    ref = branch or default
    report = analyses.c.report
    query = (
        sa.select(
            report["quality_gate"]["status"].as_string().label("gate"),
            report["inventory"]["totals"]["code"].as_integer().label("code_lines"),
            sa.func.coalesce(sa.func.jsonb_array_length(report["findings"]), 0).label("findings"),
            report["complexity"]["average"].as_float().label("complexity"),
            analyses.c.finished_at,
        )
        .where(
            analyses.c.repository_id == repository_id,
            analyses.c.ref == ref,
            analyses.c.pull_request.is_(None),
            analyses.c.status == SUCCEEDED,
        )
        .order_by(analyses.c.id.desc())
        .limit(1)
    )
    row = (await conn.execute(query)).first()
    if row is None:
        return BadgeFacts(ref=ref, analysed=False)
    return BadgeFacts(
        ref=ref,
        analysed=True,
        gate=row.gate or "",
        code_lines=int(row.code_lines or 0),
        findings=int(row.findings),
        complexity=float(row.complexity or 0.0),
        finished_at=row.finished_at,
    )


async def first_delivery(conn: AsyncConnection, *, delivery_id: str, repository_id: uuid.UUID) -> bool:
    """False when this delivery was received before (GitHub redelivers; an attacker may replay)."""
    result = await conn.execute(
        insert(hook_deliveries)
        .values(delivery_id=delivery_id, repository_id=repository_id)
        .on_conflict_do_nothing(index_elements=[hook_deliveries.c.delivery_id])
        .returning(hook_deliveries.c.delivery_id)
    )
    return result.first() is not None


async def purge_hook_deliveries(conn: AsyncConnection, *, older_than: dt.timedelta) -> int:
    result = await conn.execute(
        hook_deliveries.delete().where(hook_deliveries.c.received_at < sa.func.now() - older_than)
    )
    return int(result.rowcount)


# Leases: a worker's hold on a repository and on a place of a tenant's share (migration s0004)


async def take_lease(conn: AsyncConnection, *, key: str, holder: str, lease_s: float) -> bool:
    """The lease on `key` for `holder`, for `lease_s` seconds: taken when nobody holds it or its lease lapsed."""
    until = sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, lease_s)
    statement = insert(leases).values(key=key, holder=holder, expires_at=until)
    result = await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[leases.c.key],
            set_={"holder": statement.excluded.holder, "expires_at": statement.excluded.expires_at},
            where=leases.c.expires_at < sa.func.now(),
        ).returning(leases.c.key)
    )
    return result.first() is not None


async def renew_leases(conn: AsyncConnection, *, holder: str, lease_s: float) -> int:
    """Extends every lease of `holder`; how many it still held (a lapsed one taken by another is lost)."""
    until = sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, lease_s)
    result = await conn.execute(
        leases.update().where(leases.c.holder == holder).values(expires_at=until).returning(leases.c.key)
    )
    return len(result.all())


async def release_leases(conn: AsyncConnection, *, holder: str) -> None:
    await conn.execute(leases.delete().where(leases.c.holder == holder))
