"""Every job ends with one line on the pod that ran it, naming the job and no content: a pod's
sync, async and RunPod-style jobs, a serverless job through the local queue, and a fleet's job
submitted to one pod and run by another (real supervisord, gunicorn, runpod SDK and Redis).
With LOG_FORMAT=json every line the container printed, boot to exit, supervisord's and
ComfyUI's included, is one JSON object of the worker's schema."""

from __future__ import annotations

import json
import re
import uuid

import pytest
import requests

from client.envelope_client import open_answer, seal_request
from tests.pod_jobs import ended, submit
from tests.stack import Stack, wait_until
from tests.workflows import empty_image

MARKER = f"okapi{uuid.uuid4().hex[:8]}"  # a filename prefix of an encrypted job
PROGRAMS = {"entrypoint", "supervisord", "watchdog", "api", "handler", "localqueue", "comfy"}
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FORMATS = ["text", "json"]


def env(log_format: str) -> dict[str, str]:
    """ComfyUI's boot output is passed on always, its later output not (a worker key is set)."""
    return {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "LOG_FORMAT": log_format}


def printed(stack: Stack) -> str:
    """Everything the stopped stack printed."""
    stack.stop()
    assert stack.log_closed.wait(30)
    return stack.log


def records(log: str, log_format: str) -> list[dict]:
    """Each line as the fields it says; under json every line must be one object of the schema."""
    lines = [line for line in log.splitlines() if line.strip()]
    if log_format == "text":
        return [{"msg": line} for line in lines]
    not_json = [line for line in lines if not _is_json(line)]
    assert not not_json, not_json[:5]
    found = [json.loads(line) for line in lines]
    for record in found:
        assert {"ts", "level", "program", "event", "msg"} <= set(record), record
        assert STAMP.match(record["ts"]) and record["program"] in PROGRAMS, record
    assert {r["program"] for r in found} >= {"entrypoint", "supervisord", "watchdog", "comfy"}
    return found


def _is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def ends(found: list[dict], job_id: str, log_format: str) -> list[dict]:
    """The job's end lines, as fields."""
    if log_format == "json":
        return [r for r in found if r.get("event") == "job.end" and r.get("job_id") == job_id]
    lines = [r["msg"] for r in found if f"job {job_id} ended: " in r["msg"]]
    return [dict(re.findall(r" (\w+)=(\S+)", line)) for line in lines]


def said(value: object) -> str:
    return str(value)


@pytest.mark.parametrize("log_format", FORMATS)
def test_a_pod_says_each_job_s_end_once_and_nothing_of_an_encrypted_one(backend, log_format):
    pod = Stack("api", env(log_format), backend=backend).ready()
    try:
        request, ephemeral = seal_request({"workflow": empty_image(8, 8, 7, prefix=MARKER)}, pod.public_key)
        sealed = requests.post(pod.url + "/run", json=request, timeout=60)
        assert open_answer(sealed.json(), ephemeral, pod.public_key)["status"] == "ok"
        async_id = submit(pod, {"workflow": empty_image(8, 8, 9)})
        assert ended(pod, async_id)["state"] == "completed"
        runsync = requests.post(pod.url + "/v2/x/runsync", json={"input": {"workflow": 5}}, timeout=60).json()
        ids = (sealed.headers["X-Job-Id"], async_id, runsync["id"])
    finally:
        log = printed(pod)
    found = records(log, log_format)
    [sync], [async_], [refused] = (ends(found, i, log_format) for i in ids)
    assert (said(sync["route"]), said(sync["encrypted"]), said(sync["outcome"])) == (
        "/run",
        "True",
        "completed",
    )
    assert said(sync["instance"]) == "0" and float(sync["comfy_s"]) > 0 and int(sync["bytes_out"]) > 0
    assert (said(async_["route"]), said(async_["outcome"])) == ("async", "completed")
    assert (said(refused["route"]), said(refused["code"])) == ("runsync", "invalid_workflow")
    assert MARKER not in log and "EmptyImage" not in log


@pytest.mark.parametrize("log_format", FORMATS)
def test_a_serverless_job_s_end_line_names_its_runpod_id(log_format):
    worker = Stack("serverless", env(log_format)).ready()
    try:
        job = {"input": {"workflow": empty_image(8, 8, 3)}}
        answer = requests.post(worker.url + "/v2/LOCAL/runsync", json=job, timeout=120).json()
        assert answer["status"] == "COMPLETED"
    finally:
        log = printed(worker)
    found = records(log, log_format)
    [line] = ends(found, answer["id"], log_format)
    assert (said(line["route"]), said(line["outcome"])) == ("serverless", "completed")
    if log_format == "json":
        assert {"handler", "localqueue"} <= {r["program"] for r in found}


@pytest.mark.parametrize("log_format", FORMATS)
def test_a_fleet_job_ends_in_one_line_on_the_pod_that_ran_it(redis_server, log_format):
    fleet = {**env(log_format), "STATE_URL": redis_server.url, "STATE_PREFIX": f"ends-{uuid.uuid4().hex[:8]}"}
    first = Stack("api", fleet).start()
    second = Stack("api", {**fleet, "WORKER_PRIVATE_KEY_B64": first.private_key}).start()
    try:
        for pod in (first, second):
            pod.wait_ready()
        jobs = [submit(first, {"workflow": empty_image(8, 8, n)}) for n in range(4)]
        for job_id in jobs:
            assert ended(second, job_id)["state"] == "completed"
        wait_until(lambda: all(f"job {j} ended" in first.log + second.log for j in jobs), 10, "the end lines")
    finally:
        logs = [printed(first), printed(second)]
    found = [r for log in logs for r in records(log, log_format)]
    for job_id in jobs:
        [line] = ends(found, job_id, log_format)
        assert (said(line["route"]), said(line["outcome"])) == ("fleet", "completed")
