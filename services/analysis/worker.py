"""Analysis workers: a JetStream consumer of analysis jobs that runs each through the lifecycle's use cases and the
engine, then settles the message. Every change of an analysis's state is a use case (use_cases.py); the worker
reaches no table itself."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import structlog
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from libs.common import errors, metrics, tracing
from libs.common.consumer import dead_letter
from libs.common.db import database_unavailable
from libs.common.errors import AppError
from libs.common.events import unpack
from libs.common.logging import error_text
from repolens.events.v1 import events_pb2
from services.analysis import github, use_cases
from services.analysis.domain import JOBS_STREAM, JOBS_SUBJECT
from services.analysis.engine import pipeline
from services.analysis.engine.context import EngineSettings, Job, StepError
from services.analysis.engine.fetch import FetchCancelled
from services.analysis.engine.inventory import Cancelled
from services.analysis.engine.scan import start_pool
from services.analysis.github import CommitStatuses
from services.analysis.jobs import ensure_jobs_stream
from services.analysis.urls import RepositoryUrlError, check_repository_url
from services.analysis.use_cases import Analyses, Claim

log = structlog.get_logger(__name__)

DURABLE = "analysis-workers"


# A job handed back comes again after 1 s, then 2 s, 3 s... at most this: jobs that wait long (their tenant runs its
# share, their repository is busy) are delivered less often, and since JetStream serves due redeliveries before new
# messages, many of them waiting cannot keep other tenants' new jobs from being reached.
RETRY_MAX_DELAY_S = 5.0


class Settle(enum.Enum):
    ACK = "ack"
    LATER = "later"  # redeliver after a delay (the tenant runs its share, the repository is busy, a crash to retry)


@dataclass
class Run:
    """State shared between the engine (partly in a thread) and the watcher that reports progress."""

    stop: threading.Event = field(default_factory=threading.Event)
    progress: int = 0
    step: str = "queued"
    timings: dict[str, float] = field(default_factory=dict)
    lost: bool = False  # the leases lapsed and another worker may hold them: hand the job back, end nothing

    def report(self, step: str, progress: int) -> None:
        self.step, self.progress = step, progress


class _Poison(Exception):  # noqa: N818 # not an error of ours: a message that is not a job
    """A message that can never be a job (not an envelope, not an AnalysisRequested, no valid ids)."""


@dataclass(frozen=True)
class _Job:
    tenant_id: uuid.UUID
    analysis_id: uuid.UUID
    repository_id: uuid.UUID


def _job(envelope: events_pb2.EventEnvelope) -> _Job:
    try:
        job = unpack(envelope, events_pb2.AnalysisRequested)
        return _Job(uuid.UUID(job.tenant_id), uuid.UUID(job.analysis_id), uuid.UUID(job.repository_id))
    except ValueError as exc:
        raise _Poison(str(exc)) from None


def _cancelling() -> bool:
    """Whether this task is being cancelled. A cancellation that lands in a database call can come out of it as
    another exception (SQLAlchemy cleaning up the interrupted transaction raises its own): a loop that logs errors
    and goes on must end all the same, or whoever cancelled it and waits for it waits for ever."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Worker:
    def __init__(
        self,
        *,
        analyses: Analyses,
        js: JetStreamContext,
        engine: EngineSettings,
        concurrency: int,
        max_attempts: int,
        ack_wait_s: float,
        engine_processes: int = 0,
        tenant_max_running: int = 2,
        job_max_deliveries: int = 1000,
        statuses: CommitStatuses | None = None,
        public_url: str = "http://localhost:8000",
    ):
        self._analyses = analyses
        self._statuses = statuses
        self._public_url = public_url.rstrip("/")
        self._js = js
        self._engine = engine
        self._concurrency = concurrency
        self._max_attempts = max_attempts
        self._ack_wait_s = ack_wait_s
        self._running: set[asyncio.Task[None]] = set()
        self._engine_processes = engine_processes
        self._pool: ProcessPoolExecutor | None = None
        self.started = False  # taking jobs: bound to the stream, engine pool up
        self._tenant_max_running = tenant_max_running
        self._max_deliveries = job_max_deliveries
        # A lease lasts twice as long as JetStream waits for a silent job: renewed every third of it, a busy worker has
        # slack before it loses it, and a dead worker's repository and place come free soon after its job is
        # delivered again (which hands itself back until then).
        self._lease_s = 2 * ack_wait_s
        self._id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_jobs_stream(self._js)
        await self._js.add_consumer(
            JOBS_STREAM,
            ConsumerConfig(
                durable_name=DURABLE,
                filter_subject=JOBS_SUBJECT,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self._ack_wait_s,
                max_deliver=self._max_deliveries,
                max_ack_pending=1000,
            ),
        )
        subscription = await self._js.pull_subscribe_bind(durable=DURABLE, stream=JOBS_STREAM)
        if self._engine_processes:
            self._pool = await asyncio.to_thread(start_pool, self._engine_processes)
        if self._engine.engine_cache_dir:
            # A cache that cannot be made is only a slower analysis (the engine warns and measures every file).
            with contextlib.suppress(OSError):
                os.makedirs(self._engine.engine_cache_dir, exist_ok=True)
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
            # Its processes end with it, not after it: no engine process outlives the worker that started it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True), 15)

    async def handle(self, message: Msg) -> None:
        """Settles one job: acked once its analysis ended (or there is nothing to do), handed back when its tenant's
        share or its repository is busy or something failed, dead-lettered when it is no job at all or was handed
        back `job_max_deliveries` times."""
        metrics.delivery_received(DURABLE, message)
        traced = tracing.NOT_CONSUMING
        try:
            try:
                envelope = events_pb2.EventEnvelope.FromString(message.data)
                job = _job(envelope)
            except (DecodeError, _Poison) as exc:
                await dead_letter(self._js, message, consumer=DURABLE, reason=f"not an analysis job: {exc}")
                return
            traced = tracing.consume(envelope, consumer=DURABLE)  # the trace of the request that queued it
            structlog.contextvars.bind_contextvars(
                request_id=envelope.request_id or None, analysis_id=str(job.analysis_id), tenant_id=str(job.tenant_id)
            )
            settle = Settle.LATER
            try:
                settle = await self._take(job, message)
            except AppError as exc:
                if exc.spec is not errors.TENANT_NOT_FOUND:
                    raise
                settle = Settle.ACK  # the tenant is gone (or never was): nothing to do, ever
            except Exception as exc:
                traced.failed(exc)
                if database_unavailable(exc):  # the job comes back once it is (handed back below)
                    log.warning("worker.database_unavailable", error=error_text(exc))
                else:
                    log.exception("worker.job_crashed")
            await self._settle(message, job, settle)
        except Exception as exc:  # could not even settle it: the job comes back after ack_wait anyway
            log.warning("worker.settle_failed", error=error_text(exc))
        finally:
            structlog.contextvars.clear_contextvars()
            traced.end()

    async def _settle(self, message: Msg, job: _Job, settle: Settle) -> None:
        if settle is Settle.ACK:
            await message.ack()
            metrics.delivery_settled(DURABLE, "acked")
            return
        delivered = message.metadata.num_delivered or 1
        if delivered < self._max_deliveries:
            await message.nak(delay=min(float(delivered), RETRY_MAX_DELAY_S))
            metrics.delivery_settled(DURABLE, "retried")
            return
        # JetStream would not deliver it again: the analysis ends failed, the job is kept for a look.
        with contextlib.suppress(AppError):
            await use_cases.fail_job(
                analyses=self._analyses,
                tenant_id=job.tenant_id,
                analysis_id=job.analysis_id,
                spec=errors.JOB_UNDELIVERABLE,
            )
        await dead_letter(self._js, message, consumer=DURABLE, reason=f"handed back {delivered} times")

    async def _take(self, job: _Job, message: Msg) -> Settle:
        """Runs the job's analysis if the tenant has a free place and its repository is free."""
        holder = f"{self._id}/{job.analysis_id}"
        # Fair share (docs/architecture.md): a tenant whose places are all taken gets its job back, and the consumer
        # hands out the next jobs, other tenants' among them, instead of queueing behind it.
        if not await use_cases.take_turn(
            analyses=self._analyses,
            tenant_id=job.tenant_id,
            repository_id=job.repository_id,
            holder=holder,
            places=self._tenant_max_running,
            lease_s=self._lease_s,
        ):
            return Settle.LATER
        heartbeat = asyncio.create_task(self._heartbeat(message))
        try:
            claimed = await use_cases.claim(
                analyses=self._analyses,
                tenant_id=job.tenant_id,
                analysis_id=job.analysis_id,
                max_attempts=self._max_attempts,
            )
            if claimed is None:
                return Settle.ACK
            return await self._run(claimed, holder)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await use_cases.end_turn(analyses=self._analyses, holder=holder)

    async def _heartbeat(self, message: Msg) -> None:
        """Tells JetStream the job is alive, so a long analysis is not redelivered to another worker."""
        while True:
            await asyncio.sleep(max(self._ack_wait_s / 3, 0.5))
            try:
                await message.in_progress()
            except Exception:
                if _cancelling():
                    raise asyncio.CancelledError from None

    async def _run(self, claimed: Claim, holder: str) -> Settle:
        """The engine's steps on a claimed analysis, then the use case that ends it."""
        log.info("analysis.started", attempt=claimed.analysis.attempts)
        run = Run()
        watcher = asyncio.create_task(self._watch(claimed, holder, run))
        metrics.ANALYSES_IN_PROGRESS.inc()
        try:
            outcome = await pipeline.run(
                await self._job(claimed),
                settings=self._engine,
                should_stop=run.stop.is_set,
                progress=run.report,
                timings=run.timings,
                pool=self._pool,
            )
        except (Cancelled, FetchCancelled):
            if run.lost:
                return Settle.LATER  # another worker may run it now; its attempt counts, ours ends nothing
            await use_cases.cancelled(analyses=self._analyses, claimed=claimed, timings=run.timings)
            await self._tell_github(claimed, "cancelled", None)
            return Settle.ACK
        except StepError as exc:
            await use_cases.fail(analyses=self._analyses, claimed=claimed, spec=exc.spec, timings=run.timings)
            await self._tell_github(claimed, "failed", None)
            return Settle.ACK
        finally:
            metrics.ANALYSES_IN_PROGRESS.dec()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        status = await use_cases.succeed(
            analyses=self._analyses,
            claimed=claimed,
            report=outcome.report,
            commit_sha=outcome.commit_sha,
            timings=run.timings,
        )
        log.info("analysis.ended", status=status)
        await self._tell_github(claimed, status, outcome.report)
        return Settle.ACK

    async def _tell_github(self, claimed: Claim, status: str, report: dict[str, Any] | None) -> None:
        """The commit status of an analysis a GitHub webhook queued, with the tenant's GitHub token; bounded by
        GITHUB_TIMEOUT_S, and a failure only logged."""
        trigger = claimed.analysis.trigger or {}
        if self._statuses is None or trigger.get("kind") != "github":
            return
        try:
            token = (await self._analyses.tenant_config(claimed.tenant_id)).github_token
        except Exception as exc:
            log.warning("github.status_failed", error=error_text(exc))
            return
        state, description = github.status_of(status, report)
        await self._statuses.post(
            token=token,
            full_name=trigger.get("full_name", ""),
            sha=trigger.get("sha", ""),
            state=state,
            description=description,
            target_url=f"{self._public_url}/api/v2/analyses/{claimed.analysis.id}",
        )

    async def _job(self, claimed: Claim) -> Job:
        analysis, repository = claimed.analysis, claimed.repository
        config = await self._analyses.tenant_config(claimed.tenant_id)
        hosts = set(config.allowed_hosts) & set(self._analyses.deployment_hosts)
        try:
            # Checked again at run time: the allow-lists may have changed since the repository was added.
            location = check_repository_url(repository.url, allowed_hosts=hosts, allow_local=self._analyses.allow_local)
        except RepositoryUrlError:
            raise StepError(errors.REPOSITORY_URL_REFUSED) from None

        async def previous() -> dict[str, Any] | None:
            return await use_cases.base_report(analyses=self._analyses, claimed=claimed)

        return Job(
            repository={"id": str(repository.id), "name": repository.name, "url": repository.url},
            ref=analysis.ref,
            location=location,
            config=config,
            previous_report=previous,
            judged_on_new_code=analysis.compares_with_base(repository.default_branch),
        )

    async def _watch(self, claimed: Claim, holder: str, run: Run) -> None:
        """Writes progress twice a second and keeps the leases; a cancellation, a vanished row or lost leases set
        the stop flag."""
        renewed = time.monotonic()
        while not run.stop.is_set():
            await asyncio.sleep(0.5)
            try:
                if time.monotonic() - renewed >= self._lease_s / 3:
                    if not await use_cases.keep_turn(analyses=self._analyses, holder=holder, lease_s=self._lease_s):
                        log.warning("analysis.leases_lost")
                        run.lost = True
                        run.stop.set()
                        return
                    renewed = time.monotonic()
                alive = await use_cases.record_progress(
                    analyses=self._analyses, claimed=claimed, progress=run.progress, step=run.step, timings=run.timings
                )
            except Exception as exc:
                if _cancelling():
                    raise asyncio.CancelledError from exc
                log.warning("analysis.progress_failed", error=error_text(exc))
                continue
            if not alive:
                run.stop.set()
