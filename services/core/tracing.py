"""A job's trace: OpenTelemetry spans exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT
(or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, and nothing at all when it is not.

A job is one trace. Its `job` span continues the W3C `traceparent` it came with (a pod request's
header, a serverless input's field, a fleet record's field), and each stage of the job is a child
of it. What crosses a process (a fleet record, a webhook taken over) carries `carrier_of_current()`, so the
pod that runs a job, or that delivers its webhook, continues the same trace. Spans carry ids,
codes, counts and times only, never a workflow, a node, a prompt, an output, a URL or a key
(README: Operating it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.core.config import Settings

Carrier = dict[str, str]  # `traceparent` (and `tracestate`): a context as text
FIELDS = ("traceparent", "tracestate")

_PROPAGATOR = TraceContextTextMapPropagator()
_SAMPLERS = {
    "always_on": lambda arg: sampling.ALWAYS_ON,
    "always_off": lambda arg: sampling.ALWAYS_OFF,
    "traceidratio": sampling.TraceIdRatioBased,
    "parentbased_always_on": lambda arg: sampling.ParentBased(sampling.ALWAYS_ON),
    "parentbased_always_off": lambda arg: sampling.ParentBased(sampling.ALWAYS_OFF),
    "parentbased_traceidratio": sampling.ParentBasedTraceIdRatio,
}

_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None
_record_factory: Any = None  # logging's, before the trace id was stamped on records
_JOB: ContextVar[trace.Span | None] = ContextVar("job_span", default=None)  # the job being traced


def setup(settings: Settings, program: str) -> None:
    """Export this process's spans when an endpoint is configured; once per process (a gunicorn
    worker after its fork: the exporter's thread and connection are the worker's own)."""
    global _tracer, _provider
    endpoint = settings.otel_traces_endpoint
    if not endpoint or _tracer is not None:
        return
    attributes = dict(settings.otel_resource_attributes)
    attributes.update({"service.name": settings.otel_service_name, "comfy_worker.program": program})
    sampler = _SAMPLERS[settings.otel_traces_sampler](settings.otel_traces_sampler_arg)
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    exporter = OTLPSpanExporter(endpoint=endpoint, headers=settings.otel_header_pairs or None)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _provider, _tracer = provider, provider.get_tracer("comfy-worker")
    _stamp_log_records()


def close() -> None:
    """Export what is left and stop tracing (a gunicorn worker's exit; a test's end)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
        logging.setLogRecordFactory(_record_factory)
    _tracer = _provider = None


def _stamp_log_records() -> None:
    """Every log line said while a job is traced carries its `trace_id` (services.core.logs)."""
    global _record_factory
    make = _record_factory = logging.getLogRecordFactory()

    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made = make(*args, **kwargs)
        if current := trace_id():
            made.trace_id = current
        return made

    logging.setLogRecordFactory(record)


def enabled() -> bool:
    return _tracer is not None


def carried(fields: Mapping[str, Any] | None) -> Carrier:
    """The W3C fields of a request's headers, a serverless input or a record (any case)."""
    if fields is None:
        return {}
    return {k: v for k in FIELDS if isinstance(v := fields.get(k), str) and v}


def _parent(carrier: Mapping[str, str] | None) -> otel_context.Context | None:
    return _PROPAGATOR.extract(carried(carrier)) if carrier else None


@contextlib.contextmanager
def job(carrier: Mapping[str, str] | None = None, **attributes: Any) -> Iterator[None]:
    """The job's span, continuing `carrier` (a new trace without one). Inside a job already
    (a pod route that opened it to time its request and answer), the same job goes on."""
    if _tracer is None or _JOB.get() is not None:
        annotate(**attributes)
        yield
        return
    with _open("job", _parent(carrier), attributes) as current:
        token = _JOB.set(current.span)
        try:
            yield
        finally:
            _JOB.reset(token)


class Mark:
    """A span being written: what became known during it (an attempt's status, say)."""

    def __init__(self, span: trace.Span | None = None) -> None:
        self.span = span

    def set(self, **attributes: Any) -> None:
        if self.span is not None:
            self.span.set_attributes(_clean(attributes))


_NOTHING = Mark()


@contextlib.contextmanager
def stage(name: str, **attributes: Any) -> Iterator[Mark]:
    """A step of the current job (`models`, `comfyui.execute`, `seal`...); nothing outside a job."""
    if _tracer is None or _JOB.get() is None:
        yield _NOTHING
        return
    with _open(name, None, attributes) as current:
        yield current


@contextlib.contextmanager
def span(name: str, carrier: Mapping[str, str] | None = None, **attributes: Any) -> Iterator[Mark]:
    """Work of a job outside its run (a webhook attempt, a submission) or of its own (a
    download), continuing `carrier` when given, else what is current."""
    if _tracer is None:
        yield _NOTHING
        return
    with _open(name, _parent(carrier) if carrier else None, attributes) as current:
        yield current


@contextlib.contextmanager
def _open(name: str, parent: otel_context.Context | None, attributes: Mapping[str, Any]) -> Iterator[Mark]:
    """A span made current. An error that ends it is told by its code only (`error.type`):
    its message may quote a workflow, which a span never holds."""
    assert _tracer is not None
    with _tracer.start_as_current_span(
        name,
        context=parent,
        attributes=_clean(attributes),
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield Mark(current)
        except BaseException as exc:
            current.set_attribute("error.type", getattr(exc, "code", None) or type(exc).__name__)
            current.set_status(trace.StatusCode.ERROR)
            raise


def submitted(carrier: Mapping[str, str] | None, **attributes: Any) -> Carrier:
    """A job kept to run later (an async job, a fleet's record): its `submit` span, continuing
    `carrier`, and that span's context, which the job's run continues wherever it runs."""
    if _tracer is None:
        return {}
    with span("submit", carrier, **attributes):
        return carrier_of_current()


def annotate(**attributes: Any) -> None:
    """Attributes of the current job's span (its outcome, code, instance...)."""
    current = _JOB.get()
    if current is not None:
        current.set_attributes(_clean(attributes))


def failed(code: str) -> None:
    """The current job ended in error `code` (its span's status, with the code only)."""
    current = _JOB.get()
    if current is not None:
        current.set_attribute("error.type", code)
        current.set_status(trace.StatusCode.ERROR)


def carrier_of_current() -> Carrier:
    """The current context as `traceparent`, for a record or a request that carries it on."""
    if _tracer is None:
        return {}
    out: Carrier = {}
    _PROPAGATOR.inject(out)
    return out


def trace_id() -> str:
    """The current trace's id (32 hex digits), or "" when nothing is traced."""
    if _tracer is None:
        return ""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def trace_id_of(carrier: Mapping[str, str] | None) -> str:
    """The trace id a carried `traceparent` (`00-<trace id>-<span id>-<flags>`) names, or ""."""
    parts = (carrier or {}).get("traceparent", "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """OpenTelemetry takes no None."""
    return {k: v for k, v in attributes.items() if v is not None}
