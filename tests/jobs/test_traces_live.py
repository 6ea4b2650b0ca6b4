"""A job is one trace, exported by the real worker (supervisord, gunicorn with gevent, the runpod
SDK) over OTLP/HTTP to a real receiver: a pod's encrypted job from its request to its answer,
with a client's `traceparent` continued (on `/run` and RunPod's routes alike) and nothing of the job in any span, its async job from
submission to run, a serverless job through the local queue, and a fleet's job submitted on one
pod and run by another. A webhook taken over by another pod is in fleet/test_store.py."""

from __future__ import annotations

import json
import os
import uuid

import requests

from client.envelope_client import open_answer, seal_request
from tests.otlp_receiver import OtlpReceiver
from tests.pod_jobs import ended, status, submit
from tests.stack import Stack, wait_until
from tests.workflows import empty_image, with_knob

MARKER = f"okapi{uuid.uuid4().hex[:8]}"  # a filename prefix of an encrypted job
POD_STAGES = [
    "job",
    "request",
    "envelope.open",
    "queue.wait",
    "upload",
    "comfyui.execute",
    "outputs",
    "seal",
    "answer",
]


def env(otlp: OtlpReceiver) -> dict[str, str]:
    return {
        "DRY_RUN": "0",
        "ENCRYPTION_REQUIRED": "0",
        "LOG_FORMAT": "json",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_SERVICE_NAME": "comfy-worker-test",
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # the SDK's own variable: export within 0.2 s
    }


def client_trace() -> tuple[str, str, dict[str, str]]:
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return trace_id, span_id, {"traceparent": f"00-{trace_id}-{span_id}-01"}


def test_a_pod_s_jobs_are_traced_from_request_to_answer_and_name_nothing_of_an_encrypted_one(backend, otlp):
    pod = Stack("api", env(otlp), backend=backend).ready()
    try:
        trace_id, span_id, header = client_trace()
        request, ephemeral = seal_request({"workflow": empty_image(8, 8, 7, prefix=MARKER)}, pod.public_key)
        sealed = requests.post(pod.url + "/run", json=request, headers=header, timeout=120)
        assert open_answer(sealed.json(), ephemeral, pod.public_key)["status"] == "ok"
        assert sealed.headers["X-Trace-Id"] == trace_id
        spans = otlp.wait_for(trace_id, set(POD_STAGES))
        assert [s.name for s in spans] == POD_STAGES  # one of each, by start time
        job = spans[0]
        assert job.parent_id == span_id and all(s.parent_id == job.span_id for s in spans[1:])
        assert job.attributes["job.id"] == sealed.headers["X-Job-Id"]
        assert job.attributes["job.encrypted"] is True and job.attributes["job.outcome"] == "completed"
        assert job.resource["service.name"] == "comfy-worker-test"
        said = " ".join(t for s in spans for t in s.texts())
        assert MARKER not in said and "EmptyImage" not in said and "SaveImage" not in said

        async_trace, async_span, header = client_trace()
        submitted = requests.post(
            pod.url + "/run?async=1", json={"workflow": empty_image(8, 8, 9)}, headers=header, timeout=30
        )
        assert submitted.status_code == 202 and submitted.headers["X-Trace-Id"] == async_trace
        job_id = submitted.json()["id"]
        assert ended(pod, job_id)["trace_id"] == async_trace
        spans = otlp.wait_for(async_trace, {"submit", "job", "comfyui.execute"})
        named = {s.name: s for s in spans}
        assert named["submit"].parent_id == async_span and named["job"].parent_id == named["submit"].span_id
        assert named["job"].attributes["job.id"] == job_id

        runpod_traces = []  # RunPod's routes on the pod continue the header too
        for route, first in (("runsync", "job"), ("run", "submit")):
            rp_trace, rp_span, header = client_trace()
            runpod_traces.append(rp_trace)
            job = {"input": {"workflow": empty_image(8, 8, 11)}}
            sent = requests.post(f"{pod.url}/v2/pod/{route}", json=job, headers=header, timeout=120)
            assert sent.status_code == 200, sent.text
            spans = otlp.wait_for(rp_trace, {first, "job", "comfyui.execute"})
            assert {s.name: s for s in spans}[first].parent_id == rp_span
    finally:
        pod.stop()
    ends = [json.loads(line) for line in pod.log.splitlines() if '"job.end"' in line]
    assert {e["trace_id"] for e in ends} == {trace_id, async_trace, *runpod_traces}
    assert MARKER not in pod.log


def test_a_serverless_job_continues_the_traceparent_of_its_input_and_answers_its_trace_id(otlp):
    worker = Stack("serverless", env(otlp)).ready()
    try:
        trace_id, span_id, field = client_trace()
        job = {"input": {"workflow": empty_image(8, 8, 3), **field}}
        answer = requests.post(worker.url + "/v2/LOCAL/runsync", json=job, timeout=120).json()
        assert answer["status"] == "COMPLETED" and answer["output"]["trace_id"] == trace_id
        spans = otlp.wait_for(trace_id, {"job", "queue.wait", "comfyui.execute", "outputs"})
        job_span = spans[0]
        assert job_span.name == "job" and job_span.parent_id == span_id
        assert (
            job_span.attributes["job.id"] == answer["id"] and job_span.attributes["job.route"] == "serverless"
        )
        assert job_span.resource["comfy_worker.program"] == "handler"
    finally:
        worker.stop()


def test_a_fleet_job_submitted_on_one_pod_and_run_on_another_is_one_trace(redis_server, otlp):
    fleet = {**env(otlp), "STATE_URL": redis_server.url, "STATE_PREFIX": f"traces-{uuid.uuid4().hex[:8]}"}
    first = Stack("api", {**fleet, "OTEL_RESOURCE_ATTRIBUTES": "pod.name=first"}).ready()
    second = None
    try:
        blockers = [  # its one instance holds two: one running, the next queued behind it
            submit(first, {"workflow": with_knob("StandinSlow", color=c, seconds=60, steps=60)})
            for c in (5, 15)
        ]
        queue = f"http://127.0.0.1:{first.comfy_port}/queue"
        wait_until(  # the second has not started: it waits in ComfyUI's queue, taken by the first pod
            lambda: (
                sorted(status(first, b)["state"] for b in blockers) == ["queued", "running"]
                and len(requests.get(queue, timeout=5).json()["queue_pending"]) == 1
            ),
            30,
            "the first pod full",
        )
        second = Stack(
            "api",
            {
                **fleet,
                "WORKER_PRIVATE_KEY_B64": first.private_key,
                "OTEL_RESOURCE_ATTRIBUTES": "pod.name=second",
            },
        ).ready()
        trace_id, span_id, header = client_trace()
        answer = requests.post(
            first.url + "/run?async=1", json={"workflow": empty_image(8, 8, 6)}, headers=header, timeout=30
        )
        assert answer.headers["X-Trace-Id"] == trace_id
        assert ended(second, answer.json()["id"])["trace_id"] == trace_id
        spans = otlp.wait_for(trace_id, {"submit", "job", "comfyui.execute", "result.store"})
        named = {s.name: s for s in spans}
        assert named["submit"].parent_id == span_id and named["submit"].resource["pod.name"] == "first"
        assert named["job"].parent_id == named["submit"].span_id
        assert {s.resource["pod.name"] for s in spans if s.name != "submit"} == {"second"}
        for blocker in blockers:
            requests.post(first.url + f"/jobs/{blocker}/cancel", timeout=10)
    finally:
        for pod in (first, second):
            if pod is not None:
                pod.stop()
