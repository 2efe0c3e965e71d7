"""Prometheus metrics of every process: one place that defines them, the exporter, the pool gauges, the sampler.

Every name starts with `repolens_`; docs/metrics.md lists them. Metrics are module-level objects in the default
registry (the prometheus-client idiom): defining one does no I/O, and processes that never touch a metric simply
expose it unchanged. Label values are always from small fixed sets (route templates, RPC method names, states),
never ids, so the number of series stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import sqlalchemy as sa
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util.queue import AsyncAdaptedQueue

from libs.common.config import CommonSettings
from libs.common.logging import error_text

log = structlog.get_logger(__name__)

# Request latencies: fine around the 100 ms target, coarse up to the gateway's deadlines.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Analysis steps run from milliseconds (inventory of a small tree) to minutes (a large clone, an LLM review).
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# ---------------------------------------------------------------------------------------------- HTTP (gateway)

HTTP_REQUESTS = Counter(
    "repolens_http_requests_total",
    "HTTP requests answered by the gateway, by route template, method and status",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "repolens_http_request_duration_seconds",
    "Time from the request's arrival to the end of its response, by route template and method",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)

# ---------------------------------------------------------------------------------------------- gRPC

GRPC_SERVER_HANDLED = Counter(
    "repolens_grpc_server_handled_total",
    "RPCs a service answered, by full method name and status code",
    ["method", "code"],
)
GRPC_SERVER_DURATION = Histogram(
    "repolens_grpc_server_handling_seconds", "Time a service took to answer an RPC", ["method"], buckets=LATENCY_BUCKETS
)
GRPC_CLIENT_HANDLED = Counter(
    "repolens_grpc_client_handled_total",
    "RPCs this process made, by full method name and status code",
    ["method", "code"],
)
GRPC_CLIENT_DURATION = Histogram(
    "repolens_grpc_client_handling_seconds",
    "Time an outgoing RPC took, as the caller saw it (network and queueing included)",
    ["method"],
    buckets=LATENCY_BUCKETS,
)

# ---------------------------------------------------------------------------------------------- NATS and the outbox

NATS_PUBLISHED = Counter(
    "repolens_nats_published_total", "Messages the outbox relay published and JetStream acknowledged", ["subject"]
)
NATS_CONSUMED = Counter(
    "repolens_nats_consumed_total",
    "Deliveries a consumer settled: acked, retried (nak, redelivered later) or dead_lettered",
    ["consumer", "result"],
)
NATS_REDELIVERED = Counter(
    "repolens_nats_redelivered_total",
    "Deliveries that were not the message's first (a retry or a lost ack)",
    ["consumer"],
)
NATS_DEAD_LETTERED = Counter(
    "repolens_nats_dead_lettered_total",
    "Messages given up after the last attempt and sent to the dead-letter subject",
    ["consumer"],
)
OUTBOX_RELAY_FAILURES = Counter(
    "repolens_outbox_relay_failures_total",
    "Relay rounds that failed (NATS or the database away); rows stay queued",
    ["outbox"],
)
OUTBOX_BACKLOG = Gauge("repolens_outbox_backlog", "Outbox rows not yet published", ["outbox"])
OUTBOX_OLDEST_AGE = Gauge(
    "repolens_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row (0 when none waits)", ["outbox"]
)
CONSUMER_PENDING = Gauge(
    "repolens_nats_consumer_pending",
    "Messages in the stream a durable consumer has not been given yet (its lag)",
    ["consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "repolens_nats_consumer_ack_pending",
    "Messages delivered to a durable consumer and not yet acknowledged",
    ["consumer"],
)
SAMPLE_FAILURES = Counter(
    "repolens_metrics_sample_failures_total", "Background samples (backlog, lag) that could not be read", ["probe"]
)

# ---------------------------------------------------------------------------------------------- analyses

ANALYSIS_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ANALYSES = Counter(
    "repolens_analyses_total",
    "Analyses entering a state: queued (accepted), running (one attempt started), succeeded, failed, cancelled",
    ["state"],
)
ANALYSES_IN_PROGRESS = Gauge("repolens_analyses_in_progress", "Analyses this worker is running now")
ANALYSIS_STEP_DURATION = Histogram(
    "repolens_analysis_step_duration_seconds",
    "Duration of each engine step of an ended analysis",
    ["step"],
    buckets=STEP_BUCKETS,
)
ANALYSIS_QUEUE_DEPTH = Gauge("repolens_analysis_queue_depth", "Analysis jobs waiting for a worker")

# ---------------------------------------------------------------------------------------------- logins

# `locked_out`: a login refused because the account or client is locked out (counted where that is decided).
LOGIN_RESULTS = ("success", "failure", "locked_out")
LOGINS = Counter("repolens_logins_total", "Login attempts by outcome", ["result"])

# ---------------------------------------------------------------------------------------------- database statements

# Counted by libs/common/slow_queries.py; `application` is the engine's application_name (auth, analysis-worker...).
DB_SLOW_QUERIES = Counter(
    "repolens_db_slow_queries_total",
    "Statements that took longer than DB_SLOW_QUERY_MS (failed and cancelled ones included)",
    ["application"],
)

# Known label values start at 0, so that alert expressions and rates see the series before the first event.
for _state in ANALYSIS_STATES:
    ANALYSES.labels(state=_state)
for _result in LOGIN_RESULTS:
    LOGINS.labels(result=_result)


# ---------------------------------------------------------------------------------------------- recording helpers


def analysis_ended(status: str, timings: Mapping[str, float]) -> None:
    """An analysis reached a final state: count it and record how long each of its steps took."""
    ANALYSES.labels(state=status).inc()
    for step, seconds in timings.items():
        with contextlib.suppress(TypeError, ValueError):
            ANALYSIS_STEP_DURATION.labels(step=step).observe(float(seconds))


def consumer_registered(consumer: str) -> None:
    """Creates a consumer's series at 0, so that rates and alerts see it before its first redelivery."""
    for result in ("acked", "retried", "dead_lettered"):
        NATS_CONSUMED.labels(consumer=consumer, result=result)
    NATS_REDELIVERED.labels(consumer=consumer)
    NATS_DEAD_LETTERED.labels(consumer=consumer)


def delivery_received(consumer: str, message: Msg) -> None:
    """Counts a redelivery (JetStream's delivery count above 1); a message without JetStream metadata is none."""
    try:
        delivered = message.metadata.num_delivered
    except Exception:
        return
    if delivered is not None and delivered > 1:
        NATS_REDELIVERED.labels(consumer=consumer).inc()


def delivery_settled(consumer: str, result: str) -> None:
    NATS_CONSUMED.labels(consumer=consumer, result=result).inc()
    if result == "dead_lettered":
        NATS_DEAD_LETTERED.labels(consumer=consumer).inc()


# ---------------------------------------------------------------------------------------------- database pool


class _CountingQueue(AsyncAdaptedQueue[Any]):
    """The async pool's queue, counting callers blocked in `get` (every connection taken, no overflow left)."""

    def __init__(self, maxsize: int = 0, use_lifo: bool = False):
        super().__init__(maxsize, use_lifo)
        self.waiting = 0

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block:
            return super().get(block, timeout)
        self.waiting += 1
        try:
            return super().get(block, timeout)
        finally:
            self.waiting -= 1


class MeteredPool(AsyncAdaptedQueuePool):
    """SQLAlchemy's async queue pool, unchanged except that it can tell how many callers wait for a connection."""

    _queue_class = _CountingQueue

    def waiting(self) -> int:
        queue = self._pool
        return queue.waiting if isinstance(queue, _CountingQueue) else 0

    def limit(self) -> int:
        return self.size() + max(self._max_overflow, 0)


PoolCounts = dict[str, int]  # limit, in_use, idle, waiting


def _engine_counts(engine: Any) -> PoolCounts | None:
    pool = engine.pool
    if not isinstance(pool, MeteredPool):
        return None
    return {
        "limit": pool.limit(),
        "in_use": max(pool.checkedout(), 0),
        "idle": pool.checkedin(),
        "waiting": pool.waiting(),
    }


def _psycopg_counts(pool: Any) -> PoolCounts:
    stats = pool.get_stats()  # plain numbers kept by the pool (and reset only by pop_stats, which we never call)
    size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
    return {
        "limit": stats.get("pool_max", 0),
        "in_use": max(size - available, 0),
        "idle": available,
        "waiting": stats.get("requests_waiting", 0),
    }


class _PoolCollector(Collector):
    """Reads the pools at scrape time (plain integers, no I/O), summed per pool name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: list[tuple[str, weakref.ref[Any], Callable[[Any], PoolCounts | None]]] = []

    def track(self, name: str, pool: Any, counts: Callable[[Any], PoolCounts | None]) -> None:
        with self._lock:
            self._pools = [entry for entry in self._pools if entry[1]() is not None]
            self._pools.append((name, weakref.ref(pool), counts))

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families = {
            "limit": GaugeMetricFamily(
                "repolens_db_pool_limit", "Connections the pool may open (pool size plus overflow)", labels=["pool"]
            ),
            "in_use": GaugeMetricFamily(
                "repolens_db_pool_in_use", "Connections checked out of the pool now", labels=["pool"]
            ),
            "idle": GaugeMetricFamily("repolens_db_pool_idle", "Open connections waiting in the pool", labels=["pool"]),
            "waiting": GaugeMetricFamily(
                "repolens_db_pool_waiting",
                "Callers waiting for a connection because the pool is exhausted",
                labels=["pool"],
            ),
        }
        totals: dict[str, dict[str, int]] = {}
        with self._lock:
            pools = [(name, ref(), counts) for name, ref, counts in self._pools]
        for name, pool, counts in pools:
            found = counts(pool) if pool is not None else None
            if found is None:
                continue
            row = totals.setdefault(name, {"limit": 0, "in_use": 0, "idle": 0, "waiting": 0})
            for key, value in found.items():
                row[key] += value
        for name, row in sorted(totals.items()):
            for key, family in families.items():
                family.add_metric([name], row[key])
        return list(families.values())


_POOLS = _PoolCollector()
REGISTRY.register(_POOLS)


def track_pool(engine: AsyncEngine, name: str) -> None:
    """Exposes the engine's pool as `repolens_db_pool_*{pool=name}` (the engine must use `MeteredPool`)."""
    _POOLS.track(name, engine.sync_engine, _engine_counts)


def track_read_pool(pool: Any, name: str) -> None:
    """Exposes a psycopg_pool pool (the hot reads') as `repolens_db_pool_*{pool=name}`."""
    _POOLS.track(name, pool, _psycopg_counts)


# ---------------------------------------------------------------------------------------------- exporter


class Health:
    """What `/health/live` and `/health/ready` on the metrics port answer, for a process with no API of its own to
    probe (the worker). Live: the event loop ran its heartbeat within `stale_s` (a loop blocked by a stuck call
    answers 503, so the orchestrator restarts the process, where `/metrics`, served from a thread, would still
    answer). Ready: live, and `ready()` (the process's own test: connected, started) is true."""

    def __init__(self, *, stale_s: float, ready: Callable[[], bool] = lambda: True):
        self.stale_s = stale_s
        self._ready = ready
        self._beat = time.monotonic()

    def beat(self) -> None:
        self._beat = time.monotonic()

    def live(self) -> bool:
        return time.monotonic() - self._beat < self.stale_s

    def ready(self) -> bool:
        try:
            return self.live() and bool(self._ready())
        except Exception:
            return False

    async def run(self) -> None:
        """Beats four times per `stale_s` (at most once a second), so only a stalled loop goes stale."""
        interval_s = min(1.0, self.stale_s / 4)
        while True:
            self.beat()
            await asyncio.sleep(interval_s)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes every few seconds would drown the process's own log."""


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _app(health: Health | None) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if health is not None and path in ("/health/live", "/health/ready"):
            ok = health.live() if path == "/health/live" else health.ready()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else b"unavailable\n"]
        return metrics_app(environ, start_response)  # type: ignore[no-any-return]

    return app


@dataclass
class MetricsExporter:
    """The `/metrics` HTTP server of one process, on its own port: never the public API's port."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_exporter(settings: CommonSettings, *, process: str, health: Health | None = None) -> MetricsExporter | None:
    """Serves the default registry on `METRICS_HOST:METRICS_PORT` in a thread, and `/health/live` and
    `/health/ready` when given a `health`; None when `METRICS_PORT` is 0.

    A port already taken (a second worker started by hand with the same environment) costs this process its
    metrics, loudly in the log, but never its work.
    """
    if not settings.metrics_port:
        return None
    try:
        server = make_server(
            settings.metrics_host,
            settings.metrics_port,
            _app(health),
            server_class=_ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
    except OSError as exc:
        log.error("metrics.unavailable", process=process, port=settings.metrics_port, error=error_text(exc))
        return None
    thread = threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True)
    thread.start()
    exporter = MetricsExporter(server=server, thread=thread)
    log.info("metrics.serving", process=process, host=settings.metrics_host, port=exporter.port)
    return exporter


# ---------------------------------------------------------------------------------------------- sampler

Probe = Callable[[], Awaitable[None]]


class Sampler:
    """Reads what only a query can tell (outbox backlog, consumer lag) every few seconds into gauges.

    A scrape then never waits on PostgreSQL or NATS, and a slow or failing read costs a stale value and a
    `repolens_metrics_sample_failures_total` increment, not a failed scrape.
    """

    def __init__(self, *, interval_s: float):
        self._interval_s = interval_s
        self._probes: list[tuple[str, Probe]] = []
        self._stopped = asyncio.Event()

    def watch_outbox(self, engine: AsyncEngine, table: sa.Table) -> None:
        name = str(table.schema or table.name)
        OUTBOX_BACKLOG.labels(outbox=name)
        OUTBOX_OLDEST_AGE.labels(outbox=name)
        OUTBOX_RELAY_FAILURES.labels(outbox=name)
        waiting = table.c.published_at.is_(None)
        query = sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.extract("epoch", sa.func.now() - sa.func.min(table.c.created_at)), 0),
        ).where(waiting)

        async def probe() -> None:
            async with engine.connect() as conn:
                count, age = (await conn.execute(query)).one()
            OUTBOX_BACKLOG.labels(outbox=name).set(int(count))
            OUTBOX_OLDEST_AGE.labels(outbox=name).set(max(float(age), 0.0))

        self._probes.append((f"outbox:{name}", probe))

    def watch_consumer(
        self, js: JetStreamContext, *, stream: str, durable: str, queue_depth: Gauge | None = None
    ) -> None:
        """A durable consumer's lag; `queue_depth` also receives its pending count (the analysis job queue)."""
        consumer_registered(durable)
        CONSUMER_PENDING.labels(consumer=durable)
        CONSUMER_ACK_PENDING.labels(consumer=durable)

        async def probe() -> None:
            info = await js.consumer_info(stream, durable)
            pending = int(info.num_pending or 0)
            CONSUMER_PENDING.labels(consumer=durable).set(pending)
            CONSUMER_ACK_PENDING.labels(consumer=durable).set(int(info.num_ack_pending or 0))
            if queue_depth is not None:
                queue_depth.set(pending)

        self._probes.append((f"consumer:{durable}", probe))

    @property
    def probes(self) -> list[str]:
        return [name for name, _ in self._probes]

    async def sample_once(self) -> None:
        for name, probe in self._probes:
            try:
                await asyncio.wait_for(probe(), timeout=max(self._interval_s, 1.0))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the consumer may not exist yet, or NATS/PostgreSQL is away
                SAMPLE_FAILURES.labels(probe=name.split(":", 1)[0]).inc()
                log.debug("metrics.sample_failed", probe=name, error=error_text(exc))

    def stop(self) -> None:
        self._stopped.set()

    async def run(self) -> None:
        while not self._stopped.is_set():
            await self.sample_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), timeout=self._interval_s)


class ProcessMetrics:
    """A process's exporter and sampler together: `start()` after the connections exist, `stop()` at shutdown.

    With `METRICS_PORT` 0 nothing is served and nothing is sampled, so embedded services cost no extra queries.
    """

    def __init__(self, settings: CommonSettings, *, process: str, health: Health | None = None):
        self._settings = settings
        self._process = process
        self._health = health
        self.sampler = Sampler(interval_s=settings.metrics_sample_interval_s)
        self.exporter: MetricsExporter | None = None
        self._sampling: asyncio.Task[None] | None = None
        self._beating: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.exporter = start_exporter(self._settings, process=self._process, health=self._health)
        loop = asyncio.get_running_loop()
        if self.exporter is not None and self.sampler.probes:
            self._sampling = loop.create_task(self.sampler.run(), name="metrics-sampler")
        if self.exporter is not None and self._health is not None:
            self._beating = loop.create_task(self._health.run(), name="health-heartbeat")

    async def stop(self) -> None:
        self.sampler.stop()
        for task in (self._sampling, self._beating):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.exporter is not None:
            await asyncio.to_thread(self.exporter.close)
