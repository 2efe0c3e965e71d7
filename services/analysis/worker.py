"""Analysis workers: pull jobs from JetStream, run the engine steps, commit the result, then ack."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common import errors, metrics, tracing
from libs.common.db import autocommit
from libs.common.errors import AppError, ErrorSpec
from libs.common.events import unpack
from libs.common.logging import error_text
from repolens.events.v1 import events_pb2
from services.analysis import repository as repo
from services.analysis.domain import (
    ANALYSIS_COMPLETED,
    ANALYSIS_FAILED,
    CANCELLED,
    FAILED,
    FINISHED,
    JOBS_STREAM,
    JOBS_SUBJECT,
    SUCCEEDED,
    Analysis,
    Repository,
    TenantConfig,
)
from services.analysis.engine.churn import churn
from services.analysis.engine.fetch import FetchCancelled, FetchError, fetch
from services.analysis.engine.findings import changes_since
from services.analysis.engine.inventory import Cancelled
from services.analysis.engine.llm_review import PROVIDERS, ReviewSettings, llm_review
from services.analysis.engine.pipeline import analyse, start_pool
from services.analysis.jobs import ensure_jobs_stream
from services.analysis.urls import RepositoryUrlError, check_repository_url
from services.analysis.use_cases import Analyses, emit_finished, tenant_transaction

log = structlog.get_logger(__name__)

DURABLE = "analysis-workers"
_FETCH_ERRORS: dict[str, ErrorSpec] = {
    "timeout": errors.FETCH_TIMEOUT,
    "too_large": errors.FETCH_TOO_LARGE,
    "not_found": errors.FETCH_NOT_FOUND,
    "auth": errors.FETCH_AUTH,
}


class Settle(enum.Enum):
    ACK = "ack"
    LATER = "later"  # redeliver after a short delay (the repository is busy, or a crash to retry)


@dataclass
class Run:
    """State shared between the engine (partly in a thread) and the watcher that reports progress."""

    stop: threading.Event = field(default_factory=threading.Event)
    progress: int = 0
    step: str = "queued"
    timings: dict[str, float] = field(default_factory=dict)


class Worker:
    def __init__(
        self,
        *,
        analyses: Analyses,
        js: JetStreamContext,
        concurrency: int,
        max_attempts: int,
        ack_wait_s: float,
        fetch_timeout_s: float,
        max_repository_bytes: int,
        churn_window_days: int = 365,
        churn_max_commits: int = 1000,
        work_dir: str = "",
        engine_processes: int = 0,
        engine_cache_dir: str = "",
        engine_cache_max_entries: int = 200_000,
        review: ReviewSettings | None = None,
    ):
        self._analyses = analyses
        self._js = js
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._max_attempts = max_attempts
        self._ack_wait_s = ack_wait_s
        self._fetch_timeout_s = fetch_timeout_s
        self._max_bytes = max_repository_bytes
        self._churn_window_days = churn_window_days
        self._churn_max_commits = churn_max_commits
        self._work_dir = work_dir or None
        self._running: set[asyncio.Task[None]] = set()
        self._engine_processes = engine_processes
        self._pool: ProcessPoolExecutor | None = None
        self._engine_cache_dir = engine_cache_dir
        self.started = False  # taking jobs: bound to the stream, engine pool up
        self._engine_cache_max_entries = engine_cache_max_entries
        self._review = review or ReviewSettings()

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_jobs_stream(self._js)
        await self._js.add_consumer(
            JOBS_STREAM,
            ConsumerConfig(
                durable_name=DURABLE,
                filter_subject=JOBS_SUBJECT,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self._ack_wait_s,
                max_deliver=-1,
                max_ack_pending=1000,
            ),
        )
        subscription = await self._js.pull_subscribe_bind(durable=DURABLE, stream=JOBS_STREAM)
        if self._engine_processes:
            self._pool = await asyncio.to_thread(start_pool, self._engine_processes)
        if self._engine_cache_dir:
            # A cache that cannot be made is only a slower analysis (the engine warns and measures every file).
            with contextlib.suppress(OSError):
                os.makedirs(self._engine_cache_dir, exist_ok=True)
        log.info("worker.started", concurrency=self._concurrency, engine_processes=self._engine_processes)
        self.started = True
        while not stop.is_set():
            free = self._concurrency - len(self._running)
            if free <= 0:
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED, timeout=1.0)
                continue
            try:
                messages = await subscription.fetch(free, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except Exception as exc:
                log.warning("worker.fetch_failed", error=error_text(exc))
                await asyncio.sleep(1.0)
                continue
            for message in messages:
                task = asyncio.create_task(self.handle(message))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        self.started = False  # draining: no longer ready for jobs
        # Let running analyses finish; jobs not acked by then are redelivered to another worker.
        if self._running:
            await asyncio.wait(self._running, timeout=30)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def handle(self, message: Msg) -> None:
        metrics.delivery_received(DURABLE, message)
        heartbeat = asyncio.create_task(self._heartbeat(message))
        settle = Settle.LATER
        traced = tracing.NOT_CONSUMING
        try:
            envelope = events_pb2.EventEnvelope.FromString(message.data)
            traced = tracing.consume(envelope, consumer=DURABLE)  # the trace of the request that queued it
            structlog.contextvars.bind_contextvars(request_id=envelope.request_id or None)
            job = unpack(envelope, events_pb2.AnalysisRequested)
            structlog.contextvars.bind_contextvars(analysis_id=job.analysis_id, tenant_id=job.tenant_id)
            settle = await self._run(job)
        except Exception as exc:
            traced.failed(exc)
            log.exception("worker.job_crashed")
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        try:
            if settle is Settle.ACK:
                await message.ack()
            else:
                await message.nak(delay=1.0)
            metrics.delivery_settled(DURABLE, "acked" if settle is Settle.ACK else "retried")
        except Exception as exc:  # the job comes back after ack_wait anyway
            log.warning("worker.settle_failed", error=error_text(exc))
        finally:
            structlog.contextvars.clear_contextvars()
            traced.end()

    async def _heartbeat(self, message: Msg) -> None:
        """Tells JetStream the job is alive, so a long analysis is not redelivered to another worker."""
        while True:
            await asyncio.sleep(max(self._ack_wait_s / 3, 0.5))
            with contextlib.suppress(Exception):
                await message.in_progress()

    async def _run(self, job: events_pb2.AnalysisRequested) -> Settle:
        repository_id = uuid.UUID(job.repository_id)
        async with autocommit(self._analyses.engine).connect() as lock:
            if not await repo.lock_repository(lock, repository_id):
                return Settle.LATER  # another analysis of this repository runs: wait for our turn
            try:
                return await self._analyse(uuid.UUID(job.tenant_id), uuid.UUID(job.analysis_id))
            finally:
                await repo.unlock_repository(lock, repository_id)

    async def _claim(self, tenant_id: uuid.UUID, analysis_id: uuid.UUID) -> tuple[Analysis, Repository] | None:
        """Marks the analysis running (one more attempt), or None when there is nothing (left) to do."""
        async with tenant_transaction(self._analyses.engine, tenant_id) as conn:
            analysis = await repo.analysis_by_id(conn, analysis_id, for_update=True)
            if analysis is None or analysis.status in FINISHED:
                return None  # deleted, or a duplicate delivery of a finished job
            if analysis.cancel_requested:
                await repo.finish(conn, analysis_id, status=CANCELLED, timings=analysis.timings)
                return None
            if analysis.attempts >= self._max_attempts:
                await self._fail(conn, tenant_id, analysis, errors.ANALYSIS_ATTEMPTS_EXHAUSTED, analysis.timings)
                return None
            analysis = await repo.start_attempt(conn, analysis_id)
            repository = await repo.repository_by_id(conn, analysis.repository_id)
            return (analysis, repository) if repository is not None else None

    async def _fail(
        self,
        conn: AsyncConnection,
        tenant_id: uuid.UUID,
        analysis: Analysis,
        spec: ErrorSpec,
        timings: dict[str, float],
    ) -> None:
        if await repo.finish(
            conn, analysis.id, status=FAILED, timings=timings, error_code=spec.code, error_message=spec.message
        ):
            await emit_finished(
                conn,
                event_type=ANALYSIS_FAILED,
                payload=events_pb2.AnalysisFinished(
                    tenant_id=str(tenant_id),
                    analysis_id=str(analysis.id),
                    repository_id=str(analysis.repository_id),
                    status=FAILED,
                    error_code=spec.code,
                ),
            )
        log.info("analysis.failed", code=spec.code)

    async def _analyse(self, tenant_id: uuid.UUID, analysis_id: uuid.UUID) -> Settle:
        try:
            claimed = await self._claim(tenant_id, analysis_id)
        except AppError as exc:
            if exc.spec is errors.TENANT_NOT_FOUND:
                return Settle.ACK  # the tenant was deleted
            raise
        finally:
            self._analyses.events_written()
        if claimed is None:
            return Settle.ACK
        analysis, repository = claimed
        log.info("analysis.started", attempt=analysis.attempts)
        metrics.ANALYSES.labels(state="running").inc()
        run = Run()
        watcher = asyncio.create_task(self._watch(tenant_id, analysis_id, run))
        metrics.ANALYSES_IN_PROGRESS.inc()
        try:
            report, commit_sha = await self._engine(tenant_id, analysis, repository, run)
        except (Cancelled, FetchCancelled):
            return await self._end(tenant_id, analysis, run, status=CANCELLED)
        except RepositoryUrlError:
            return await self._end(tenant_id, analysis, run, status=FAILED, spec=errors.REPOSITORY_URL_REFUSED)
        except FetchError as exc:
            spec = _FETCH_ERRORS.get(exc.reason, errors.FETCH_FAILED)
            return await self._end(tenant_id, analysis, run, status=FAILED, spec=spec)
        finally:
            metrics.ANALYSES_IN_PROGRESS.dec()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        return await self._end(tenant_id, analysis, run, status=SUCCEEDED, report=report, commit_sha=commit_sha)

    async def _engine(
        self, tenant_id: uuid.UUID, analysis: Analysis, repository: Repository, run: Run
    ) -> tuple[dict[str, Any], str]:
        config = await self._analyses.tenant_config(tenant_id)
        hosts = set(config.allowed_hosts) & set(self._analyses.deployment_hosts)
        # Checked again at run time: the allow-lists may have changed since the repository was added.
        location = check_repository_url(repository.url, allowed_hosts=hosts, allow_local=self._analyses.allow_local)
        with tempfile.TemporaryDirectory(prefix="repolens-", dir=self._work_dir) as tmp:
            run.step, run.progress = "fetch", 5
            started = time.perf_counter()
            fetched = await fetch(
                location,
                ref=analysis.ref,
                dest=Path(tmp) / "src",
                github_token=config.github_token or None,
                timeout_s=self._fetch_timeout_s,
                max_bytes=self._max_bytes,
                should_stop=run.stop.is_set,
                depth=self._churn_max_commits,
            )
            run.timings["fetch"] = round(time.perf_counter() - started, 3)
            run.step, run.progress = "churn", 30
            started = time.perf_counter()
            history = await churn(
                Path(tmp) / "src",
                window_days=self._churn_window_days,
                max_commits=self._churn_max_commits,
                timeout_s=self._fetch_timeout_s,
                should_stop=run.stop.is_set,
            )
            run.timings["churn"] = round(time.perf_counter() - started, 3)

            def progress(step: str, percent: int) -> None:
                run.step, run.progress = step, percent

            outcome = await asyncio.to_thread(
                analyse,
                Path(tmp) / "src",
                gate=config.quality_gate,
                should_stop=run.stop.is_set,
                progress=progress,
                pool=self._pool,
                churn=history,
                cache_dir=self._engine_cache_dir,
                cache_max_entries=self._engine_cache_max_entries,
            )
            run.timings.update(outcome.timings)
        if config.llm_provider in PROVIDERS:
            # After the clone's directory is gone: the review is network I/O on the event loop, not disk.
            run.step, run.progress = "review", 96
            started = time.perf_counter()
            outcome.sections["review"] = await self._llm_review(outcome.sections, config, run)
            run.timings["review"] = round(time.perf_counter() - started, 3)
        report = {
            "repository": {"id": str(repository.id), "name": repository.name, "url": repository.url},
            "ref": analysis.ref,
            "commit_sha": fetched.commit_sha,
            **outcome.sections,
            "timings": dict(run.timings),
        }
        return report, fetched.commit_sha

    async def _llm_review(self, sections: dict[str, Any], config: TenantConfig, run: Run) -> dict[str, Any]:
        """The provider's review, abandoned as soon as the analysis is cancelled; a failure of ours here
        leaves the rule-based review in place rather than failing an analysis whose results are all there."""
        task = asyncio.create_task(
            llm_review(
                sections,
                provider=config.llm_provider,
                api_key=config.llm_api_key,
                model=config.llm_model,
                settings=self._review,
            )
        )
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.2)
                if run.stop.is_set() and not task.done():
                    raise Cancelled()
            return task.result()
        except Cancelled:
            raise
        except Exception as exc:
            log.warning("review.crashed", error_type=type(exc).__name__)
            return dict(sections.get("review") or {})
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _watch(self, tenant_id: uuid.UUID, analysis_id: uuid.UUID, run: Run) -> None:
        """Writes progress twice a second and turns a cancellation (or a vanished row) into the stop flag."""
        while not run.stop.is_set():
            await asyncio.sleep(0.5)
            try:
                async with tenant_transaction(self._analyses.engine, tenant_id) as conn:
                    alive = await repo.record_progress(
                        conn, analysis_id, progress=run.progress, step=run.step, timings=run.timings
                    )
            except Exception as exc:
                log.warning("analysis.progress_failed", error=error_text(exc))
                continue
            if not alive:
                run.stop.set()

    async def _end(
        self,
        tenant_id: uuid.UUID,
        analysis: Analysis,
        run: Run,
        *,
        status: str,
        spec: ErrorSpec | None = None,
        report: dict[str, Any] | None = None,
        commit_sha: str = "",
    ) -> Settle:
        try:
            async with tenant_transaction(self._analyses.engine, tenant_id) as conn:
                current = await repo.analysis_by_id(conn, analysis.id, for_update=True)
                if current is not None and current.cancel_requested and status == SUCCEEDED:
                    # Cancelled while the last step was finishing: the user's word wins.
                    status, report, commit_sha = CANCELLED, None, ""
                if report is not None:
                    previous = await repo.previous_report(conn, analysis.repository_id, before=analysis.id)
                    report["changes"] = changes_since(report.get("findings", []), previous)
                if status == FAILED and spec is not None:
                    await self._fail(conn, tenant_id, analysis, spec, run.timings)
                elif (
                    await repo.finish(
                        conn, analysis.id, status=status, timings=run.timings, report=report, commit_sha=commit_sha
                    )
                    and status == SUCCEEDED
                ):
                    code_lines = int(report["inventory"]["totals"]["code"]) if report else 0
                    await emit_finished(
                        conn,
                        event_type=ANALYSIS_COMPLETED,
                        payload=events_pb2.AnalysisFinished(
                            tenant_id=str(tenant_id),
                            analysis_id=str(analysis.id),
                            repository_id=str(analysis.repository_id),
                            status=SUCCEEDED,
                            code_lines=code_lines,
                        ),
                    )
        except AppError as exc:
            if exc.spec is errors.TENANT_NOT_FOUND:
                return Settle.ACK
            raise
        self._analyses.events_written()
        log.info("analysis.ended", status=status)
        return Settle.ACK
