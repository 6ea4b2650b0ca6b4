"""Every job ends with one line on the pod that ran it, naming the job and no content: a pod's
sync, async and RunPod-style jobs, a serverless job through the local queue, and a fleet's job
submitted to one pod and run by another (real supervisord, gunicorn, runpod SDK and Redis)."""

from __future__ import annotations

import re
import uuid

import requests

from client.envelope_client import open_answer, seal_request
from tests.pod_jobs import ended, submit
from tests.stack import Stack, wait_until
from tests.workflows import empty_image

MARKER = f"okapi{uuid.uuid4().hex[:8]}"  # a filename prefix of an encrypted job
ENV = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0"}


def end_lines(log: str, job_id: str) -> list[str]:
    return [line for line in log.splitlines() if f"job {job_id} ended: " in line]


def field(line: str, name: str) -> str:
    return re.search(rf" {name}=(\S+)", line).group(1)


def test_a_pod_says_each_job_s_end_once_and_nothing_of_an_encrypted_one():
    with Stack("api", ENV).ready() as pod:
        request, ephemeral = seal_request({"workflow": empty_image(8, 8, 7, prefix=MARKER)}, pod.public_key)
        sealed = requests.post(pod.url + "/run", json=request, timeout=60)
        assert open_answer(sealed.json(), ephemeral, pod.public_key)["status"] == "ok"
        sync_id = sealed.headers["X-Job-Id"]
        async_id = submit(pod, {"workflow": empty_image(8, 8, 9)})
        assert ended(pod, async_id)["state"] == "completed"
        runsync = requests.post(pod.url + "/v2/x/runsync", json={"input": {"workflow": 5}}, timeout=60).json()
        ids = (sync_id, async_id, runsync["id"])
        wait_until(lambda: all(end_lines(pod.log, i) for i in ids), 10, "the end lines")
        log = pod.log
    [sync], [async_], [refused] = (end_lines(log, i) for i in ids)
    assert field(sync, "route") == "/run" and field(sync, "encrypted") == "True"
    assert field(sync, "outcome") == "completed" and field(sync, "instance") == "0"
    assert float(field(sync, "comfy_s")) > 0 and int(field(sync, "bytes_out")) > 0
    assert field(async_, "route") == "async" and field(async_, "outcome") == "completed"
    assert (field(refused, "route"), field(refused, "code")) == ("runsync", "invalid_workflow")
    assert MARKER not in log and "EmptyImage" not in log


def test_a_serverless_job_s_end_line_names_its_runpod_id():
    with Stack("serverless", ENV).ready() as worker:
        answer = requests.post(
            worker.url + "/v2/LOCAL/runsync", json={"input": {"workflow": empty_image(8, 8, 3)}}, timeout=120
        ).json()
        assert answer["status"] == "COMPLETED"
        wait_until(lambda: end_lines(worker.log, answer["id"]), 10, "the handler's end line")
        [line] = end_lines(worker.log, answer["id"])
    assert field(line, "route") == "serverless" and field(line, "outcome") == "completed"


def test_a_fleet_job_ends_in_one_line_on_the_pod_that_ran_it(redis_server):
    fleet = {**ENV, "STATE_URL": redis_server.url, "STATE_PREFIX": f"ends-{uuid.uuid4().hex[:8]}"}
    first = Stack("api", fleet).start()
    second = Stack("api", {**fleet, "WORKER_PRIVATE_KEY_B64": first.private_key}).start()
    try:
        for pod in (first, second):
            pod.wait_ready()
        jobs = [submit(first, {"workflow": empty_image(8, 8, n)}) for n in range(4)]
        for job_id in jobs:
            assert ended(second, job_id)["state"] == "completed"
        wait_until(lambda: all(end_lines(first.log + second.log, j) for j in jobs), 10, "the end lines")
        for job_id in jobs:
            [line] = end_lines(first.log + second.log, job_id)
            assert field(line, "route") == "fleet" and field(line, "outcome") == "completed"
    finally:
        first.stop()
        second.stop()
