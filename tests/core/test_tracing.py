"""A job's trace, in this process: the pipeline's spans exported by the real OTLP/HTTP exporter to
a real receiver (tests/otlp_receiver.py), a client's `traceparent` continued, and nothing of an
encrypted job in any span. Whole stacks are traced in tests/jobs/test_traces_live.py."""

import logging
import os

import pytest

from client.envelope_client import open_answer, seal_request
from services.comfy.launch import comfy_environment
from services.core import config, errors, tracing
from services.jobs import envelopes
from tests.pipelines import pipeline

PRIVATE, PUBLIC = envelopes.keypair()
MARKER = "okapi-in-a-span"
WORKFLOW = {"7": {"class_type": "SaveImage", "inputs": {"filename_prefix": MARKER}}}
CLIENT_TRACE, CLIENT_SPAN = os.urandom(16).hex(), os.urandom(8).hex()
TRACEPARENT = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}


class Executor:
    """In ComfyUI's place: a result, or an error that quotes the workflow."""

    def __init__(self, error=None):
        self.error = error

    def execute(self, job, progress, cancel):
        if self.error:
            raise self.error
        return {"status": "ok", "prompt_id": "p1", "outputs": []}


def settings(otlp, **env):
    return config.load(
        {
            "WORKER_PRIVATE_KEY_B64": PRIVATE,
            "ENCRYPTION_REQUIRED": "0",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_SERVICE_NAME": "pod-7",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,team=a%2Cb",
            **env,
        }
    )


def traced(otlp, executor=None, **env):
    own = settings(otlp, **env)
    tracing.setup(own, "api")
    return pipeline(own, executor or Executor())


def test_an_encrypted_job_continues_the_client_s_trace_and_says_nothing_of_its_content(otlp, caplog):
    request, ephemeral = seal_request({"workflow": WORKFLOW}, PUBLIC)
    caplog.set_level(logging.INFO)
    reply = traced(otlp).run(request, trace=TRACEPARENT, name="job-1")
    assert open_answer(reply.body, ephemeral, PUBLIC)["status"] == "ok"
    assert reply.trace_id == CLIENT_TRACE
    spans = otlp.wait_for(CLIENT_TRACE, {"job", "envelope.open", "seal"})
    job = next(s for s in spans if s.name == "job")
    assert job.parent_id == CLIENT_SPAN
    assert [s.name for s in spans] == ["job", "envelope.open", "seal"]  # by start time
    assert all(s.parent_id == job.span_id for s in spans if s is not job)
    assert job.attributes["job.id"] == "job-1" and job.attributes["job.encrypted"] is True
    assert job.attributes["job.outcome"] == "completed" and job.attributes["job.kid"]
    assert job.resource["service.name"] == "pod-7" and job.resource["team"] == "a,b"
    said = " ".join(text for span in spans for text in span.texts())
    assert MARKER not in said and "SaveImage" not in said and '"7"' not in said
    [end] = [r for r in caplog.records if getattr(r, "event", "") == "job.end"]
    assert end.trace_id == CLIENT_TRACE and f"trace_id={CLIENT_TRACE}" in end.getMessage()


def test_a_job_without_a_traceparent_starts_its_own_trace(otlp):
    reply = traced(otlp).run({"workflow": WORKFLOW})
    assert len(reply.trace_id) == 32 and reply.trace_id != CLIENT_TRACE
    spans = otlp.wait_for(reply.trace_id, {"job"})
    assert [s.parent_id for s in spans if s.name == "job"] == [""]


def test_a_failed_job_s_spans_tell_its_code_and_never_the_message(otlp):
    error = errors.WorkflowValidationFailed(f"node 7 ({MARKER}) is wrong", {"7": MARKER})
    request, _ephemeral = seal_request({"workflow": WORKFLOW}, PUBLIC)
    reply = traced(otlp, Executor(error)).run(request, trace=TRACEPARENT)
    assert reply.status == 400 and reply.trace_id == CLIENT_TRACE
    [job] = [s for s in otlp.wait_for(CLIENT_TRACE, {"job"}) if s.name == "job"]
    assert job.error and job.attributes["error.type"] == "workflow_validation_failed"
    assert MARKER not in " ".join(t for s in otlp.trace(CLIENT_TRACE) for t in s.texts())


def test_a_stage_that_raises_is_marked_with_the_error_s_code_never_its_message(otlp):
    tracing.setup(settings(otlp), "api")
    with tracing.job(TRACEPARENT), pytest.raises(errors.InvalidWorkflow), tracing.stage("upload"):
        raise errors.InvalidWorkflow(f"node {MARKER} has no class_type")
    [upload] = [s for s in otlp.wait_for(CLIENT_TRACE, {"job", "upload"}) if s.name == "upload"]
    assert upload.error and upload.attributes == {"error.type": "invalid_workflow"}
    assert MARKER not in " ".join(upload.texts()) and not upload.events


def test_without_an_endpoint_nothing_is_traced_and_answers_name_no_trace(otlp, caplog):
    own = config.load({"ENCRYPTION_REQUIRED": "0"})
    tracing.setup(own, "api")
    caplog.set_level(logging.INFO)
    reply = pipeline(own, Executor()).run({"workflow": WORKFLOW}, trace=TRACEPARENT)
    assert reply.status == 200 and reply.trace_id == "" and not tracing.enabled()
    assert tracing.submitted(TRACEPARENT) == {}
    [end] = [r for r in caplog.records if getattr(r, "event", "") == "job.end"]
    assert not hasattr(end, "trace_id") and "trace_id" not in end.getMessage()


def test_the_sampler_and_the_traces_endpoint_come_from_the_standard_variables(otlp):
    off = settings(otlp, OTEL_TRACES_SAMPLER="always_off")
    tracing.setup(off, "api")
    reply = pipeline(off, Executor()).run({"workflow": WORKFLOW})
    tracing.close()  # everything exported
    assert otlp.trace(reply.trace_id) == []  # an id all the same: the answer names it
    direct = config.load(
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{otlp.endpoint}/v1/traces/", "ENCRYPTION_REQUIRED": "0"}
    )
    assert direct.otel_traces_endpoint == f"{otlp.endpoint}/v1/traces"
    assert settings(otlp).otel_traces_endpoint == f"{otlp.endpoint}/v1/traces"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_RESOURCE_ATTRIBUTES", "team"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization"),
    ],
)
def test_a_bad_telemetry_variable_stops_the_start_naming_it(name, value):
    with pytest.raises(config.ConfigError, match=name):
        config.load({"ENCRYPTION_REQUIRED": "0", name: value})


def test_the_exporter_s_headers_are_a_secret_comfyui_never_sees(tmp_path):
    env = {
        "ENCRYPTION_REQUIRED": "0",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20tok-123456789",
        "COMFY_ENV": "OTEL_EXPORTER_OTLP_HEADERS,OTEL_SERVICE_NAME",
        "OTEL_SERVICE_NAME": "pod",
    }
    own = config.load(env)
    assert own.otel_header_pairs == {"authorization": "Bearer tok-123456789"}
    assert "(set)" in config.describe(own) and "tok-123456789" not in config.describe(own)
    passed = comfy_environment(env, own, str(tmp_path))
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in passed and passed["OTEL_SERVICE_NAME"] == "pod"


def test_an_encrypted_job_s_model_download_span_names_neither_its_type_nor_its_size(otlp, tmp_path):
    """A model's type and exact size fingerprint what an encrypted job runs; a plain job's
    download span tells both."""
    from tests.file_server import FileServer

    server = FileServer()
    server.files = {"a.safetensors": os.urandom(1234), "b.safetensors": os.urandom(4321)}
    try:
        pod = traced(otlp, COMFYUI_MODEL_DIR=str(tmp_path / "models"), ALLOW_PRIVATE_DOWNLOADS="1")
        spans = {}
        for name, sealed in (("a.safetensors", True), ("b.safetensors", False)):
            trace_id = os.urandom(16).hex()
            body = {"workflow": WORKFLOW, "models": [{"type": "loras", "url": f"{server.url}/file/{name}"}]}
            if sealed:
                body, _ephemeral = seal_request(body, PUBLIC)
            reply = pod.run(body, trace={"traceparent": f"00-{trace_id}-{CLIENT_SPAN}-01"})
            assert reply.status == 200, reply.body
            [spans[sealed]] = [
                s for s in otlp.wait_for(trace_id, {"job", "download"}) if s.name == "download"
            ]
    finally:
        server.stop()
    assert spans[False].attributes["download.type"] == "loras"
    assert spans[False].attributes["download.bytes"] == 4321
    assert "download.type" not in spans[True].attributes and "download.bytes" not in spans[True].attributes
    said = " ".join(spans[True].texts())
    assert "loras" not in said and "1234" not in said and "a.safetensors" not in said
