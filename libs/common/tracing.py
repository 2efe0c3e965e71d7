"""Trace context across HTTP, gRPC and NATS: W3C `traceparent` in and out, spans when sampled, trace ids in logs.

One mode per process, chosen in main from the settings:

- off (`OTEL_SDK_DISABLED=true`): every hook returns at once; nothing is propagated or logged.
- propagate (no `OTEL_EXPORTER_OTLP_ENDPOINT`): every request, RPC and event still gets a trace id and a span id,
  passed on in gRPC metadata and in the event envelope's `trace` field and written in every log line, but nothing
  is recorded: a span here is two random numbers and a context variable.
- export: the OpenTelemetry SDK records sampled spans and a background thread sends them over OTLP/HTTP
  (protobuf) to `<endpoint>/v1/traces`. Unsampled spans cost what they cost in the propagate mode.

Sampling is parent-based with a ratio for new traces (`OTEL_TRACES_SAMPLER_ARG`), decided on the trace id, so a
trace is recorded in every process or in none. The gateway is the edge: it keeps a client's trace id (the client
can find its request in our logs) but makes its own sampling decision, so a client cannot make us record all.

Why no stock instrumentation: a grpc.aio client interceptor costs about 50 µs of CPU per call here and the stock
gRPC instrumentation halved throughput in a probe, because it builds spans and wraps every call whether sampled or
not. So the context is written into metadata at the few call sites, read by the server interceptor we already
have, and spans beyond the context itself exist only when the trace is sampled.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Awaitable, Callable, Iterator, MutableSequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from libs.common.config import CommonSettings
from repolens.events.v1 import events_pb2

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# version-traceid-parentid-flags; a later version may append fields after another dash.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_MAX_TRACESTATE = 512  # the W3C limit a vendor may truncate to; longer is dropped, not parsed
_SAMPLED = 0x01
_RANDOM = 0x02  # W3C level 2: the trace id is random (ours always are)
_LOW_64_BITS = (1 << 64) - 1  # what the ratio is decided on, as the SDK's TraceIdRatioBased does
_EMPTY = otel_context.Context()

# Probes and reflection would start a new trace every few seconds and say nothing about a request.
_UNTRACED_RPCS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# gRPC codes that are the server's fault (OpenTelemetry's semantic conventions for RPC server spans).
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class Mode(Enum):
    OFF = "off"
    PROPAGATE = "propagate"
    EXPORT = "export"


@dataclass
class _Tracing:
    mode: Mode = Mode.OFF
    bound: int = 0  # a new trace is sampled when the low 64 bits of its id are below this
    tracer: trace.Tracer | None = None
    provider: TracerProvider | None = None


# Set once in main by `configure_tracing`, like the logging configuration; off until then (tests in-process).
_state = _Tracing()


def configure_tracing(settings: CommonSettings, *, service: str) -> Mode:
    """Chooses the mode from the settings (`service` names the process in exported spans)."""
    global _state
    shutdown_tracing()
    if settings.otel_sdk_disabled:
        _state = _Tracing()
        return _state.mode
    ratio = settings.otel_traces_sampler_arg
    bound = round(ratio * (_LOW_64_BITS + 1))
    endpoint = settings.otel_exporter_otlp_endpoint.strip()
    if not endpoint:
        _state = _Tracing(mode=Mode.PROPAGATE, bound=bound)
        return _state.mode
    # Imported here: processes that do not export never load the SDK and the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(ratio)),
        resource=Resource.create(
            {
                "service.name": service,
                "service.namespace": "repolens",
                "deployment.environment.name": settings.environment.value,
            }
        ),
    )
    # Batch size, queue and delay follow the SDK's OTEL_BSP_* variables; headers and compression the
    # exporter's OTEL_EXPORTER_OTLP_* ones (a collector's credentials stay out of our settings and logs).
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")))
    _state = _Tracing(mode=Mode.EXPORT, bound=bound, tracer=provider.get_tracer("repolens"), provider=provider)
    return _state.mode


def shutdown_tracing() -> None:
    """Sends what is still queued (the SDK also does this at exit) and turns tracing off."""
    global _state
    provider = _state.provider
    _state = _Tracing()
    if provider is not None:
        provider.shutdown()


def mode() -> Mode:
    return _state.mode


# W3C trace context


def parse_traceparent(traceparent: str | None, tracestate: str | None = None) -> SpanContext | None:
    """The remote parent a `traceparent` names, or None when it is absent or malformed (then a new trace starts)."""
    if not traceparent:
        return None
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, more = match.groups()
    if version == "ff" or (version == "00" and more):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    state = TraceState.from_header([tracestate]) if tracestate and len(tracestate) <= _MAX_TRACESTATE else None
    return SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(flags_hex, 16) & 0xFF), trace_state=state
    )


def format_traceparent(span_context: SpanContext) -> str:
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags & 0xFF:02x}"


def _inject(span_context: SpanContext, metadata: MutableSequence[tuple[str, str]]) -> None:
    metadata.append((TRACEPARENT, format_traceparent(span_context)))
    if span_context.trace_state:
        metadata.append((TRACESTATE, span_context.trace_state.to_header()))


# Spans

# The span being served in this task. Ours rather than OpenTelemetry's context, which is only attached as well for
# recorded spans (where a library's own instrumentation might want a parent): reading and setting one context
# variable is the whole cost of an unrecorded span.
_current: ContextVar[Span | None] = ContextVar("repolens_current_span", default=None)
_Entered = tuple[Token[Span | None], Token[otel_context.Context] | None]


def new_trace_sampled(trace_id: int) -> bool:
    """The ratio decision for a new trace, the same rule as the SDK's `TraceIdRatioBased`."""
    return trace_id & _LOW_64_BITS < _state.bound


def _start(name: str, kind: SpanKind, parent: SpanContext | None) -> Span:
    """A span at an entry point: a child of the remote `parent`, or the first of a new trace.

    The decision is parent-based as the SDK's `ParentBased(TraceIdRatioBased)` (the parent's flag, or the ratio
    for a new trace) and made here, so that the SDK only ever sees the spans it will record.
    """
    if parent is None:
        trace_id = random.getrandbits(128) or 1  # nosec B311 # ids must be unique, not secret (as the OTel SDK)
        sampled = new_trace_sampled(trace_id)
    else:
        trace_id, sampled = parent.trace_id, bool(parent.trace_flags & _SAMPLED)
    if sampled and _state.tracer is not None:
        context = trace.set_span_in_context(NonRecordingSpan(parent), _EMPTY) if parent is not None else _EMPTY
        return _state.tracer.start_span(name, context=context, kind=kind)
    flags = (_RANDOM if parent is None else parent.trace_flags & _RANDOM) | (_SAMPLED if sampled else 0)
    span_context = SpanContext(
        trace_id,
        random.getrandbits(64) or 1,  # nosec B311 # a span id, unique not secret
        is_remote=False,
        trace_flags=TraceFlags(flags),
        trace_state=parent.trace_state if parent is not None else None,
    )
    return NonRecordingSpan(span_context)


def _enter(span: Span) -> _Entered:
    recorded = otel_context.attach(trace.set_span_in_context(span, _EMPTY)) if span.is_recording() else None
    return _current.set(span), recorded


def _leave(entered: _Entered) -> None:
    token, recorded = entered
    if recorded is not None:
        otel_context.detach(recorded)
    _current.reset(token)


def _child(name: str, kind: SpanKind, attributes: dict[str, str]) -> Span | None:
    """A child of the current span when the trace is recorded here, else None (the current context is passed on)."""
    current = _current.get()
    if _state.tracer is None or current is None or not current.is_recording():
        return None
    return _state.tracer.start_span(
        name, context=trace.set_span_in_context(current, _EMPTY), kind=kind, attributes=attributes
    )


def _failed(span: Span, error: BaseException) -> None:
    # The type only: an exception's message may carry user data, and a trace backend is no place for it.
    span.set_attribute("error.type", type(error).__name__)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))


def _decided_here(parent: SpanContext) -> SpanContext:
    """The parent with the sampled flag replaced by our own ratio decision on its trace id."""
    flags = parent.trace_flags & ~_SAMPLED | (_SAMPLED if new_trace_sampled(parent.trace_id) else 0)
    return SpanContext(
        parent.trace_id, parent.span_id, is_remote=True, trace_flags=TraceFlags(flags), trace_state=parent.trace_state
    )


@contextlib.contextmanager
def serving(
    name: str, *, kind: SpanKind, traceparent: str | None, tracestate: str | None = None, edge: bool = False
) -> Iterator[Span]:
    """The span of work that arrived from elsewhere (an HTTP request), current until the block ends.

    At the `edge` the caller's trace id is kept but not its sampling decision: a client must not be able to make
    every one of its requests recorded.
    """
    parent = parse_traceparent(traceparent, tracestate)
    if edge and parent is not None:
        parent = _decided_here(parent)
    span = _start(name, kind, parent)
    entered = _enter(span)
    try:
        yield span
    except BaseException as exc:
        if span.is_recording():
            _failed(span, exc)
        raise
    finally:
        span.end()
        _leave(entered)


def _rpc_attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


Behaviour = Callable[[Any, "grpc.aio.ServicerContext[Any, Any]"], Awaitable[Any]]


def traced_rpc(method: str, behaviour: Behaviour) -> Behaviour:
    """Wraps a unary handler in a server span under the caller's `traceparent` (the whole handler, its logs too)."""
    if _state.mode is Mode.OFF or method.startswith(_UNTRACED_RPCS):
        return behaviour
    name = method.lstrip("/")

    async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        traceparent = tracestate = None
        for key, value in context.invocation_metadata() or ():
            if key == TRACEPARENT:
                traceparent = str(value)
            elif key == TRACESTATE:
                tracestate = str(value)
        span = _start(name, SpanKind.SERVER, parse_traceparent(traceparent, tracestate))
        entered = _enter(span)
        try:
            return await behaviour(request, context)
        finally:
            if span.is_recording():
                code = context.code() or grpc.StatusCode.OK
                span.set_attributes(_rpc_attributes(method))
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code in _SERVER_FAULTS:
                    span.set_status(Status(StatusCode.ERROR, code.name))
                span.end()
            _leave(entered)

    return traced


@contextlib.contextmanager
def outgoing_rpc(call: object, metadata: MutableSequence[tuple[str, str]]) -> Iterator[None]:
    """Adds the trace context to an outgoing call's `metadata`; a client span around it when the trace is recorded.

    `call` is the stub's method (its name is read only when a span is made).
    """
    current = _current.get()
    if current is None:  # tracing off, or a call outside any request (a background refresh)
        yield
        return
    span = None
    if current.is_recording():
        method = getattr(call, "_method", b"")
        name = method.decode() if isinstance(method, bytes) else str(method)
        span = _child(name.lstrip("/"), SpanKind.CLIENT, _rpc_attributes(name))
    if span is None:
        _inject(current.get_span_context(), metadata)
        yield
        return
    _inject(span.get_span_context(), metadata)
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        span.set_attribute("rpc.grpc.status_code", exc.code().value[0])
        if exc.code() in _SERVER_FAULTS:
            span.set_status(Status(StatusCode.ERROR, exc.code().name))
        raise
    except BaseException as exc:
        _failed(span, exc)
        raise
    finally:
        span.end()


# Events


def stamp(envelope: events_pb2.EventEnvelope) -> None:
    """Writes the current trace context into a new event's envelope, for whoever consumes it.

    A recorded trace gets a producer span for the event, so consumers hang under it and the wait in the outbox
    and the stream shows as the gap between the two.
    """
    current = _current.get()
    if current is None:
        return
    span = _child(
        f"{envelope.type} publish",
        SpanKind.PRODUCER,
        {"messaging.system": "nats", "messaging.operation.type": "create", "messaging.message.id": envelope.id},
    )
    span_context = (span or current).get_span_context()
    if span is not None:
        span.end()
    envelope.trace.traceparent = format_traceparent(span_context)
    if span_context.trace_state:
        envelope.trace.tracestate = span_context.trace_state.to_header()


class Consumption:
    """The consumer span of one event while it is handled; `end()` it in a `finally`."""

    def __init__(self, span: Span | None = None):
        self._span = span
        self._entered = _enter(span) if span is not None else None

    def failed(self, error: BaseException) -> None:
        if self._span is not None and self._span.is_recording():
            _failed(self._span, error)

    def end(self) -> None:
        if self._span is not None:
            self._span.end()
            self._span = None
        if self._entered is not None:
            _leave(self._entered)
            self._entered = None


NOT_CONSUMING = Consumption()


def consume(envelope: events_pb2.EventEnvelope, *, consumer: str) -> Consumption:
    """Makes the event's trace current (a new one when the event carries none) until `end()`."""
    if _state.mode is Mode.OFF:
        return NOT_CONSUMING
    parent = parse_traceparent(envelope.trace.traceparent, envelope.trace.tracestate)
    span = _start(f"{envelope.type} process", SpanKind.CONSUMER, parent)
    if span.is_recording():
        span.set_attributes(
            {
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.consumer.group.name": consumer,
                "messaging.message.id": envelope.id,
            }
        )
    return Consumption(span)


# Logs


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span in hex, or None outside any trace."""
    current = _current.get()
    if current is None:
        return None
    span_context = current.get_span_context()
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


def add_trace_ids(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    """structlog processor: the current trace and span id in every log line written inside a trace."""
    current = _current.get()
    if current is not None:
        span_context = current.get_span_context()
        event.setdefault("trace_id", f"{span_context.trace_id:032x}")
        event.setdefault("span_id", f"{span_context.span_id:016x}")
    return event
