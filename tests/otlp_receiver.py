"""An OTLP/HTTP trace receiver for the tests: a real HTTP server on a free port that takes what
an OpenTelemetry exporter posts to `/v1/traces` and decodes it with `opentelemetry-proto`, as a
collector would. Spans are kept flat, with their resource's and their own attributes."""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.stack import free_port, wait_until


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    error: bool
    status_message: str = ""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # an exception's, say

    def texts(self) -> list[str]:
        """Everything the span says, for a privacy scan."""
        values = [*self.attributes.values(), *self.resource.values()]
        for name, attributes in self.events:
            values += [name, *attributes, *attributes.values()]
        return [self.name, self.status_message, *self.attributes, *(str(v) for v in values)]


@dataclass
class OtlpReceiver:
    spans: list[Span] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver.lock:
                    receiver.spans.extend(_flat(request))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        """OTEL_EXPORTER_OTLP_ENDPOINT: the exporter posts to <it>/v1/traces."""
        return f"http://127.0.0.1:{self.port}"

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return sorted((s for s in self.spans if s.trace_id == trace_id), key=lambda s: s.start_ns)

    def wait_for(self, trace_id: str, names: set[str], timeout: float = 30) -> list[Span]:
        """The trace once it holds a span of each name (exports come in batches)."""
        wait_until(lambda: names <= {s.name for s in self.trace(trace_id)}, timeout, f"spans {sorted(names)}")
        return self.trace(trace_id)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _flat(request: ExportTraceServiceRequest) -> list[Span]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope in resource_spans.scope_spans:
            for span in scope.spans:
                spans.append(
                    Span(
                        span.name,
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.parent_span_id.hex(),
                        span.start_time_unix_nano,
                        span.end_time_unix_nano,
                        _attributes(span.attributes),
                        resource,
                        span.status.code == 2,  # STATUS_CODE_ERROR
                        span.status.message,
                        [(event.name, _attributes(event.attributes)) for event in span.events],
                    )
                )
    return spans


def _attributes(pairs: Any) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        out[pair.key] = getattr(pair.value, kind) if kind else None
    return out
