"""Several pods acting as one endpoint through a real Redis (STATE_URL): real supervisord stacks
with the ComfyUI stand-in, one Redis for the module. The pods share the worker key, as a fleet
behind one endpoint does."""

import base64
import json
import os
import signal
import threading
import time
import uuid

import pytest
import redis
import requests

from client.envelope_client import open_answer, seal_request
from services.comfy import supervisor_state
from services.core import config, drain, errors, tracing
from services.jobs import access, envelopes
from services.jobs.fleet import GROUP, SharedJobs
from services.jobs.fleet.liveness import Liveness
from services.jobs.fleet.state_store import StateStore
from services.jobs.quotas import Quotas
from services.jobs.webhooks import Webhooks
from tests.pipelines import pipeline
from tests.pod_jobs import ended, status, submit
from tests.stack import Stack, real_backend, wait_until
from tests.webhook_receiver import Receiver
from tests.workflows import decode_png, empty_image, invert_upload, png_b64, slow_workflow, with_knob

CLAIM_S = 2.0
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def fleet_env(redis_server, prefix, key=None):
    env = {
        "DRY_RUN": "0",
        "ENCRYPTION_REQUIRED": "0",
        "JOB_TIMEOUT_S": "60",
        "STATE_URL": redis_server.url,
        "STATE_PREFIX": prefix,
        "JOB_CLAIM_TIMEOUT_S": str(CLAIM_S),
        "ALLOW_PRIVATE_WEBHOOKS": "1",
        "WEBHOOK_RETRY_S": "0,60",
    }
    if key:
        env["WORKER_PRIVATE_KEY_B64"] = key
    return env


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver([SECRET])
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def prefix():
    return f"fleet-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def pods(redis_server, prefix):
    """Three pods on one Redis, sharing the worker key (started side by side)."""
    first = Stack("api", fleet_env(redis_server, prefix)).start()
    fleet = [first] + [
        Stack("api", fleet_env(redis_server, prefix, first.private_key)).start() for _ in range(2)
    ]
    try:
        for pod in fleet:
            pod.wait_ready()
        yield fleet
    finally:
        for pod in fleet:
            pod.stop()


def in_flight(pod):
    """Jobs the pod runs now, from its /metrics."""
    page = requests.get(pod.url + "/metrics", timeout=10).text
    [line] = [line for line in page.splitlines() if line.startswith("comfy_worker_jobs_in_flight ")]
    return int(float(line.split()[1]))


def metric(pod, name):
    page = requests.get(pod.url + "/metrics", timeout=10).text
    [line] = [line for line in page.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


def completed_jobs(pod):
    page = requests.get(pod.url + "/metrics", timeout=10).text
    lines = [
        line
        for line in page.splitlines()
        if line.startswith('comfy_worker_jobs_total{code="",outcome="completed"}')
    ]
    return int(float(lines[0].split()[1])) if lines else 0


def test_a_job_submitted_to_one_pod_is_polled_and_fetched_on_the_other(pods):
    first, second, _ = pods
    job_id = submit(first, {"workflow": with_knob("StandinSlow", color=3, seconds=1, steps=4)})
    done = ended(second, job_id)
    assert done["state"] == "completed" and done["http_status"] == 200, done
    assert done["result"]["outputs"][0]["mime"] == "image/png"
    assert status(first, job_id) == done
    runpod_view = requests.get(second.url + f"/v2/any/status/{job_id}", timeout=10).json()
    assert runpod_view["status"] == "COMPLETED" and runpod_view["output"] == done["result"]


def test_a_cancel_sent_to_one_pod_interrupts_the_job_running_on_the_other(pods):
    job_id = submit(pods[0], {"workflow": with_knob("StandinSlow", color=4, seconds=60, steps=60)})
    wait_until(lambda: status(pods[0], job_id)["state"] == "running", 20, "the job to start")
    wait_until(lambda: sum(in_flight(p) for p in pods) == 1, 10, "a pod to run the job")
    [runner] = [pod for pod in pods if in_flight(pod)]
    other = next(pod for pod in pods if pod is not runner)
    assert requests.post(other.url + f"/jobs/{job_id}/cancel", timeout=10).status_code == 200
    done = ended(other, job_id, timeout=10)
    assert done["state"] == "cancelled" and done["result"]["error"].startswith("interrupted"), done
    wait_until(lambda: in_flight(runner) == 0, 10, "the runner to let go of the job")


def test_a_draining_pod_takes_nothing_from_the_fleet_s_queue_and_still_serves_polls(pods):
    first, second, third = pods
    for pod in (second, third):
        assert requests.post(pod.url + "/drain", timeout=10).json()["draining"] is True
    try:
        before = [completed_jobs(pod) for pod in pods]
        ids = [
            submit(first, {"workflow": with_knob("StandinSlow", color=40 + n, seconds=0.3, steps=2)})
            for n in range(3)
        ]
        for job_id in ids:
            assert ended(second, job_id)["state"] == "completed"
        assert [completed_jobs(pod) for pod in pods] == [before[0] + 3, before[1], before[2]]
    finally:
        for pod in (second, third):
            requests.delete(pod.url + "/drain", timeout=10)


def test_an_unknown_job_is_not_found_on_every_pod(pods):
    for pod in pods:
        answer = requests.get(pod.url + "/jobs/nope", timeout=10)
        assert answer.status_code == 404 and answer.json()["error"].startswith("job_not_found")


def test_an_envelope_replayed_to_the_other_pod_is_refused(pods):
    first, second, _ = pods
    request, ephemeral = seal_request(
        {"workflow": with_knob("StandinSlow", color=5, seconds=0, steps=1)}, first.public_key
    )
    answer = requests.post(first.url + "/run", json=request, timeout=60)
    assert open_answer(answer.json(), ephemeral, first.public_key)["status"] == "ok"
    replayed = requests.post(second.url + "/run", json=request, timeout=60)
    assert replayed.status_code == 409 and replayed.json()["error"].startswith("replayed_request")


def test_nothing_of_an_encrypted_job_is_left_in_redis(pods, redis_server, prefix, receiver):
    first, second, _ = pods
    marker = f"okapi-{uuid.uuid4().hex[:8]}"
    payload = {
        "workflow": {
            **invert_upload(f"{marker}.png"),
            "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": marker}},
        },
        "images": [{"name": f"{marker}.png", "image": png_b64(12, 12, (9, 8, 7))}],
        "webhook": receiver.url(f"/{marker}"),  # refused once: pending, kept in the record
    }
    receiver.scripts[f"/{marker}"] = [500]
    request, ephemeral = seal_request(payload, first.public_key)
    job_id = submit(first, request)
    done = ended(second, job_id)
    result = open_answer(done["result"], ephemeral, first.public_key)
    assert result["status"] == "ok" and len(result["outputs"]) == 2
    plain_job = submit(second, {"workflow": with_knob("StandinSlow", color=6, seconds=0, steps=1)})
    ended(first, plain_job)
    wait_until(lambda: receiver.calls, 10, "the webhook's first attempt")
    found = everything_in(redis_server.client(), prefix)
    assert b"webhook_url=" in found and b"webhook_body=" in found  # the scan reads the pending webhook
    assert marker.encode() not in found and result["outputs"][0]["data"][:40].encode() not in found
    assert b"StandinSlow" not in found  # a plain workflow leaves with its job
    assert job_id.encode() in found  # the scan reads the records
    lines = client_lists(redis_server.client(), prefix)
    assert job_id.encode() not in lines and plain_job.encode() not in lines  # out of every line


def client_lists(client: redis.Redis, prefix: str) -> bytes:
    """The job ids still in a key's line or counted as taken."""
    ids = [client.lrange(key, 0, -1) for key in client.scan_iter(match=f"{prefix}:waiting:*")]
    ids += [client.zrange(key, 0, -1) for key in client.scan_iter(match=f"{prefix}:inflight:*")]
    return b"\n".join(i for group in ids for i in group)


def everything_in(client: redis.Redis, prefix: str) -> bytes:
    """Every key, hash field, set member, string and stream entry under the fleet's prefix."""
    parts = []
    for key in client.scan_iter(match=f"{prefix}:*"):
        kind = client.type(key)
        parts.append(key)
        if kind == b"hash":
            parts += [b"%s=%s" % item for item in client.hgetall(key).items()]
        elif kind == b"set":
            parts += list(client.smembers(key))
        elif kind == b"string":
            parts.append(client.get(key))
        elif kind == b"list":
            parts += client.lrange(key, 0, -1)
        elif kind == b"zset":
            parts += client.zrange(key, 0, -1)
        elif kind == b"stream":
            parts += [b"%s=%s" % item for _id, fields in client.xrange(key) for item in fields.items()]
    return b"\n".join(parts)


def test_jobs_submitted_to_one_pod_run_spread_over_every_free_pod(pods):
    before = [completed_jobs(pod) for pod in pods]
    jobs = [
        submit(pods[0], {"workflow": with_knob("StandinSlow", color=10 + n, seconds=2, steps=4)})
        for n in range(6)
    ]
    for job_id in jobs:
        assert ended(pods[1], job_id)["state"] == "completed"
    ran = [completed_jobs(pod) - n for pod, n in zip(pods, before, strict=True)]
    assert sum(ran) == 6 and all(ran), ran
    assert all(metric(pod, "comfy_worker_shared_jobs_waiting") == 0 for pod in pods)


def test_a_killed_pod_s_job_is_answered_worker_lost_by_the_others(pods):
    """It kills the third pod: the tests after it use the other two."""
    jobs = [
        submit(pods[0], {"workflow": with_knob("StandinSlow", color=20 + n, seconds=60, steps=60)})
        for n in range(3)
    ]
    wait_until(lambda: all(in_flight(pod) == 1 for pod in pods), 20, "each pod to run one job")
    pods[2].kill()
    states = {}

    def one_lost():
        states.update({job_id: status(pods[0], job_id) for job_id in jobs})
        return [s["state"] for s in states.values()].count("failed") == 1

    wait_until(one_lost, CLAIM_S * 3 + 5, "the killed pod's job to be answered")
    [lost] = [s for s in states.values() if s["state"] == "failed"]
    assert lost["http_status"] == 503 and lost["result"]["error"].startswith("worker_lost"), lost
    assert sorted(s["state"] for s in states.values()) == ["failed", "running", "running"]
    assert sum(metric(pod, "comfy_worker_jobs_worker_lost_total") for pod in pods[:2]) == 1
    for job_id in jobs:
        requests.post(pods[1].url + f"/jobs/{job_id}/cancel", timeout=10)
    for job_id in jobs:
        assert ended(pods[1], job_id, timeout=15)["state"] in ("failed", "cancelled")


# One pod's side of the queue, in this process on the real Redis (DRY_RUN jobs) --------------
def shared_jobs(redis_server, prefix, capacity, executor=None, at_once=None, **env):
    """A pod's job store; with `executor` (in ComfyUI's place) its jobs run past DRY_RUN, and
    webhooks to this machine are sent, signed with SECRET."""
    settings = config.load(
        {
            "ENCRYPTION_REQUIRED": "0",
            "DRY_RUN": "0" if executor else "1",
            "STATE_URL": redis_server.url,
            "STATE_PREFIX": prefix,
            "ALLOW_PRIVATE_WEBHOOKS": "1",
            "WEBHOOK_SECRET": SECRET,
            **env,
        }
    )
    store = StateStore(settings)
    return SharedJobs(
        settings,
        pipeline(settings, executor, shared=store),
        store,
        capacity,
        Quotas(settings, store),
        Webhooks(settings),
        at_once,
    )


DRY_JOB = {"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}}


def test_a_job_a_silent_pod_took_but_never_started_is_taken_over_and_runs(redis_server):
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    submitter = shared_jobs(redis_server, prefix, lambda own: 0, JOB_CLAIM_TIMEOUT_S="0.5")
    job = submitter.start(DRY_JOB)
    client = redis_server.client()
    taken = client.xreadgroup(GROUP, "silent-pod", {f"{prefix}:jobs": ">"}, count=1, block=5000)
    assert taken  # a pod took its ticket, then went silent before it bound the ticket to the job
    taker = shared_jobs(redis_server, prefix, lambda own: 1 - own, JOB_CLAIM_TIMEOUT_S="0.5")
    wait_until(lambda: submitter.get(job.id).state == "completed", 10, "the job to be taken over")
    assert taker.taken_over == 1 and submitter.get(job.id).result["dry_run"] is True
    assert client.xlen(f"{prefix}:jobs") == 0 and taker.waiting() == 0


def test_a_pod_that_stops_hands_back_what_it_took_but_did_not_start(redis_server):
    """Its job waits in ComfyUI's queue (not started) when the pod stops: it runs on another pod
    at once, not after the claim timeout, and the stopped pod takes its prompt out of ComfyUI."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    queued = Blocking(starts=False)
    stopping = shared_jobs(redis_server, prefix, lambda own: 1 - own, queued)  # claim timeout 30 s
    job = stopping.start(DRY_JOB)
    assert queued.running.wait(10)
    assert stopping.get(job.id).state == "queued"  # taken, not started
    stopping.close()
    other = shared_jobs(redis_server, prefix, lambda own: 1 - own)
    wait_until(lambda: other.get(job.id).state == "completed", 10, "another pod to run it (not after 30 s)")
    assert other.taken_over == 1
    wait_until(lambda: not stopping.taken, 5, "the stopped pod to let go")
    assert queued.stopped.is_set() and other.get(job.id).result["dry_run"] is True


def test_a_bug_in_one_round_of_taking_does_not_stop_the_pod_taking_jobs(redis_server, caplog):
    """Not a Redis error: the loop logs where it broke (never the message) and goes on."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    rounds = []

    def capacity(own):
        rounds.append(own)
        if len(rounds) == 1:
            raise ValueError("a secret prompt in the message")
        return 1 - own

    pod = shared_jobs(redis_server, prefix, capacity)
    job = pod.start(DRY_JOB)
    wait_until(lambda: pod.get(job.id).state == "completed", 10, "the job to run after the bug")
    crash = [r.getMessage() for r in caplog.records if "shared-jobs-take" in r.getMessage()]
    assert crash and "ValueError at test_store.py:" in crash[0] and "secret prompt" not in crash[0]


def test_records_are_kept_for_job_keep_s_and_a_queued_job_cancels_at_once(redis_server):
    """The record of the cancelled job expires after the JOB_KEEP_S of the pod that ended it, set
    here by its old name, JOB_TTL_S, which is still read."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    idle = shared_jobs(redis_server, prefix, lambda own: 0, JOB_TTL_S="1")
    job = idle.start(DRY_JOB)
    cancelled = idle.cancel(job.id)
    assert cancelled.state == "cancelled" and cancelled.result["error"].startswith("interrupted")
    worker = shared_jobs(redis_server, prefix, lambda own: 1 - own, JOB_KEEP_S="1")
    wait_until(lambda: worker.waiting() == 0, 10, "the cancelled entry to leave the queue")
    assert idle.get(job.id).state == "cancelled"  # never ran
    wait_until(lambda: idle.get(job.id) is None, 10, "the record to expire after JOB_KEEP_S")


class Blocking:
    """In ComfyUI's place: a job runs until released (with `starts=False`, it waits in ComfyUI's
    queue until then, and starts when released). A cancel stops it."""

    def __init__(self, starts=True):
        self.starts = starts
        self.running, self.release, self.stopped = threading.Event(), threading.Event(), threading.Event()

    def execute(self, job, progress, cancel):
        if self.starts and job.on_start:
            job.on_start()
        self.running.set()
        deadline = time.monotonic() + 30
        while not self.release.wait(0.05) and time.monotonic() < deadline:
            if cancel.is_set():
                self.stopped.set()
                raise cancel.error
        if not self.starts and job.on_start:
            job.on_start()
        return {"status": "ok", "prompt_id": "p", "outputs": []}


def test_a_job_declared_worker_lost_tells_its_webhook_what_the_record_says(redis_server, receiver):
    """The pod went silent while its job ran (no proof of life): another pod answered
    worker_lost. When the job then ends, its outcome is dropped, and so the webhook says
    worker_lost too, not a completion nobody can poll."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    comfy = Blocking()
    runner = shared_jobs(redis_server, prefix, lambda own: 1 - own, comfy, JOB_CLAIM_TIMEOUT_S="1")
    job = runner.start({**DRY_JOB, "webhook": receiver.url(f"/{prefix}")})
    assert comfy.running.wait(10)
    runner.liveness.beat = lambda: None  # silent from now on
    redis_server.client().delete(f"{prefix}:pod:{runner.name}")
    reaper = shared_jobs(redis_server, prefix, lambda own: 0, JOB_CLAIM_TIMEOUT_S="1")
    wait_until(lambda: reaper.get(job.id).state == "failed", 10, "the job to be declared lost")
    comfy.release.set()
    wait_until(lambda: [c for c in receiver.calls if c.path == f"/{prefix}"], 10, "the webhook")
    (call,) = [c for c in receiver.calls if c.path == f"/{prefix}"]
    told = json.loads(call.body)
    assert told["type"] == "job.failed"
    assert told["data"]["result"]["error"].startswith(errors.WorkerLost.code)
    assert reaper.get(job.id).state == "failed"


def test_a_pod_proves_it_lives_before_it_can_take_a_job(redis_server, monkeypatch):
    """A pod's first proof of life came from its watch loop, which may run after its take loop
    started a job: another pod polling then answered that job worker_lost (seen once in CI)."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(Liveness, "round", lambda self: time.sleep(0.25))  # no beat from it
    comfy = Blocking()
    runner = shared_jobs(redis_server, prefix, lambda own: 1 - own, comfy)
    job = runner.start(DRY_JOB)
    assert comfy.running.wait(10)
    other = shared_jobs(redis_server, prefix, lambda own: 0)
    assert other.get(job.id).state == "running" and other.lost == 0
    comfy.release.set()
    wait_until(lambda: other.get(job.id).state == "completed", 10, "the job to end")


def traced_here(otlp):
    """Both pods of these tests are in this process: one tracer, whose spans join across the
    pods only by what Redis carries."""
    tracing.setup(
        config.load({"ENCRYPTION_REQUIRED": "0", "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint}), "api"
    )


def test_a_job_submitted_on_one_pod_and_run_on_another_is_one_trace(redis_server, receiver, otlp):
    traced_here(otlp)
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    client_trace, client_span = os.urandom(16).hex(), os.urandom(8).hex()
    submitter = shared_jobs(redis_server, prefix, lambda own: 0)
    job = submitter.start(
        {**DRY_JOB, "webhook": receiver.url(f"/{prefix}")},
        {"traceparent": f"00-{client_trace}-{client_span}-01"},
    )
    assert job.trace_id == client_trace
    runner = shared_jobs(redis_server, prefix, lambda own: 1 - own)
    wait_until(lambda: submitter.get(job.id).state == "completed", 10, "the other pod to run it")
    assert submitter.get(job.id).view()["trace_id"] == client_trace and runner.taken_over == 0
    spans = otlp.wait_for(client_trace, {"submit", "job", "result.store", "webhook.attempt"})
    named = {s.name: s for s in spans}
    assert named["submit"].parent_id == client_span
    assert named["job"].parent_id == named["submit"].span_id
    assert named["result.store"].parent_id == named["job"].span_id
    assert named["webhook.attempt"].parent_id == named["job"].span_id
    assert named["webhook.attempt"].attributes["http.response.status_code"] == 200
    assert [s.name for s in spans].count("job") == 1


def test_a_webhook_taken_over_by_another_pod_continues_the_job_s_trace(redis_server, receiver, otlp):
    traced_here(otlp)
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    client, key = redis_server.client(), f"{prefix}:job:j1"
    left = {
        "state": "completed",
        "traceparent": f"00-{trace_id}-{span_id}-01",
        "webhook_url": receiver.url(f"/{prefix}"),
        "webhook_body": "{}",
        "webhook_owner": "",  # its pod stopped and handed it back
        "webhook_state": "pending",
        "webhook_attempts": 1,
    }
    client.hset(key, mapping=left)
    client.expire(key, 60)
    client.sadd(f"{prefix}:webhooks", "j1")
    shared_jobs(redis_server, prefix, lambda own: 0)
    [attempt] = otlp.wait_for(trace_id, {"webhook.attempt"})
    assert attempt.parent_id == span_id and attempt.attributes["webhook.attempt"] == 2
    assert client.hget(key, "webhook_state") == b"delivered"


def test_a_webhook_that_outlives_its_record_leaves_no_key_without_a_ttl(redis_server, receiver):
    """JOB_KEEP_S shorter than the webhook's retries: the record expires while the delivery goes
    on, and writing the delivery's state made `job:<id>` anew, never to expire."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    receiver.scripts[f"/{prefix}"] = [500]
    pod = shared_jobs(
        redis_server,
        prefix,
        lambda own: 1 - own,
        JOB_KEEP_S="1",
        WEBHOOK_RETRY_S="0,3",
        WEBHOOK_TIMEOUT_S="2",
    )
    job = pod.start({**DRY_JOB, "webhook": receiver.url(f"/{prefix}")})
    client = redis_server.client()

    def delivery_over():
        attempts = [c for c in receiver.calls if c.path == f"/{prefix}"]
        return len(attempts) == 2 and not client.sismember(f"{prefix}:webhooks", job.id)

    wait_until(delivery_over, 20, "both attempts, and the delivery's end written")
    wait_until(lambda: job.id not in pod.deliveries.delivering, 5, "the pod to let go of the delivery")
    assert client.ttl(f"{prefix}:job:{job.id}") != -1  # gone (-2), or still expiring


# Redis lost and back --------------------------------------------------------------------------
def test_a_pod_outlives_its_redis_and_resumes_without_losing_the_running_job():
    from tests.redis_server import RedisServer

    own_redis = RedisServer().start()
    pod = Stack("api", fleet_env(own_redis, "outage")).ready()
    try:
        job_id = submit(pod, {"workflow": with_knob("StandinSlow", color=30, seconds=4, steps=8)})
        wait_until(lambda: status(pod, job_id)["state"] == "running", 20, "the job to run")
        own_redis.kill()
        wait_until(
            lambda: requests.get(pod.url + "/readyz", timeout=10).status_code == 503, 10, "/readyz 503"
        )
        refused = requests.post(pod.url + "/run", params={"async": "1"}, json=DRY_JOB, timeout=30)
        assert refused.status_code == 503 and refused.json()["error"].startswith("state_unavailable")
        assert requests.get(pod.url + f"/jobs/{job_id}", timeout=30).status_code == 503
        sync = requests.post(
            pod.url + "/run",
            json={"workflow": with_knob("StandinSlow", color=31, seconds=0, steps=1)},
            timeout=60,
        )
        assert sync.status_code == 200, sync.text
        own_redis.start()  # empty: no persistence
        wait_until(
            lambda: requests.get(pod.url + "/readyz", timeout=10).status_code == 200, 20, "/readyz 200"
        )
        done = ended(pod, job_id, timeout=30)  # finished during the outage, written once Redis was back
        assert done["state"] == "completed" and done["http_status"] == 200, done
        again = submit(pod, {"workflow": with_knob("StandinSlow", color=32, seconds=0, steps=1)})
        assert ended(pod, again)["state"] == "completed"
        assert "STATE_URL" in pod.log and own_redis.url not in pod.log
    finally:
        pod.stop()
        own_redis.stop()


def test_while_redis_is_down_a_limited_key_s_sync_jobs_run_and_its_async_ones_are_refused(tmp_path):
    """A key's limits are counted in Redis: while it does not answer, a sync job runs uncounted
    (with a line that says so), as README promises of sync /run; an async one, which Redis
    would keep, answers 503 state_unavailable."""
    from tests.redis_server import RedisServer

    token = access.new_token()
    keys = tmp_path / "keys"
    keys.write_text(f"limited sha256:{access.hash_of(token)} jobs jobs=1\n")
    headers = {"Authorization": f"Bearer {token}"}
    own_redis = RedisServer().start()
    pod = Stack("api", {**fleet_env(own_redis, "outage-keys"), "API_KEYS_FILE": str(keys)}).ready()
    try:
        own_redis.kill()
        wait_until(
            lambda: requests.get(pod.url + "/readyz", timeout=10).status_code == 503, 10, "/readyz 503"
        )
        quick = {"workflow": with_knob("StandinSlow", color=33, seconds=0, steps=1)}
        sync = requests.post(pod.url + "/run", json=quick, headers=headers, timeout=60)
        assert sync.status_code == 200, sync.text
        runsync = requests.post(pod.url + "/v2/x/runsync", json={"input": quick}, headers=headers, timeout=60)
        assert runsync.status_code == 200 and runsync.json()["status"] == "COMPLETED", runsync.text
        for path, params, body in (("/run", {"async": "1"}, quick), ("/v2/x/run", None, {"input": quick})):
            refused = requests.post(pod.url + path, params=params, json=body, headers=headers, timeout=30)
            assert refused.status_code == 503 and refused.json()["error"].startswith("state_unavailable")
        assert "the limits of key limited are not counted for POST /run" in pod.log
    finally:
        pod.stop()
        own_redis.stop()


def test_a_serverless_worker_refuses_an_envelope_a_pod_of_the_fleet_ran(pods, redis_server, prefix):
    env = {**fleet_env(redis_server, prefix, pods[0].private_key), "DRY_RUN": "1"}
    with Stack("serverless", env).ready() as worker:
        quick = {"workflow": with_knob("StandinSlow", color=40, seconds=0, steps=1)}
        request, _ = seal_request(quick, pods[0].public_key)
        assert requests.post(pods[0].url + "/run", json=request, timeout=60).status_code == 200
        replayed = requests.post(worker.url + "/v2/LOCAL/runsync", json={"input": request}, timeout=60).json()
        assert replayed["status"] == "FAILED" and replayed["error"].startswith("replayed_request"), replayed


@pytest.mark.real
def test_two_pods_with_the_real_comfyui_share_async_jobs(redis_server):
    """make test-real: each pod runs the unmodified ComfyUI; an encrypted job submitted to one is
    polled and opened on the other."""
    prefix = f"real-{uuid.uuid4().hex[:8]}"
    backend = real_backend()
    first = Stack("api", fleet_env(redis_server, prefix), backend=backend).start()
    second = Stack("api", fleet_env(redis_server, prefix, first.private_key), backend=backend).start()
    try:
        for pod in (first, second):
            pod.wait_ready()
        request, ephemeral = seal_request({"workflow": empty_image(40, 24, 0x3366FF)}, first.public_key)
        job_id = submit(first, request)
        done = ended(second, job_id, timeout=120)
        assert done["state"] == "completed" and done["http_status"] == 200, done
        result = open_answer(done["result"], ephemeral, first.public_key)
        assert decode_png(result["outputs"][0]).size == (40, 24)
    finally:
        first.stop()
        second.stop()


def test_a_pod_whose_only_comfyui_is_down_takes_nothing_from_the_stream(redis_server, backend):
    """Its ComfyUI stopped, a pod leaves the jobs submitted to it in the stream (a job it took
    would wait there for its ComfyUI); a pod that comes up meanwhile runs them."""
    prefix = f"down-{uuid.uuid4().hex[:8]}"
    first = Stack("api", fleet_env(redis_server, prefix), backend=backend).ready()
    second = None
    try:
        supervisor_state.rpc(first.socket).supervisor.stopProcess("comfy")
        sealed, ephemeral = seal_request({"workflow": empty_image(12, 8, 0x00FF00)}, first.public_key)
        job_id = submit(first, sealed)
        second = Stack("api", fleet_env(redis_server, prefix, first.private_key), backend=backend).start()
        done = ended(first, job_id, timeout=300)  # the first pod taking it would fail it
        assert done["state"] == "completed", done
        assert completed_jobs(second) == 1 and completed_jobs(first) == 0
        image = decode_png(open_answer(done["result"], ephemeral, first.public_key)["outputs"][0])
        assert image.size == (12, 8) and image.convert("RGB").getpixel((1, 1)) == (0, 255, 0)
    finally:
        for pod in (first, second):
            if pod is not None:
                pod.stop()


def test_a_job_queued_behind_the_running_one_goes_back_to_the_stream_when_its_comfyui_dies(redis_server):
    """The pod's only ComfyUI is killed: its running job answers comfy_restarted, and the job
    queued behind it, which never started, runs on the other pod under its id."""
    prefix = f"died-{uuid.uuid4().hex[:8]}"
    first = Stack("api", fleet_env(redis_server, prefix)).ready()
    second = None
    try:
        running = submit(first, {"workflow": with_knob("StandinSlow", color=60, seconds=30, steps=30)})
        wait_until(lambda: comfy_queue(first)["queue_running"] != [], 20, "the first pod's ComfyUI to run it")
        sealed, ephemeral = seal_request({"workflow": empty_image(10, 6, 0x0000FF)}, first.public_key)
        queued = submit(first, sealed)
        wait_until(lambda: comfy_queue(first)["queue_pending"] != [], 20, "the next job queued behind it")
        second = Stack("api", fleet_env(redis_server, prefix, first.private_key)).ready()
        relay = supervisor_state.rpc(first.socket).supervisor.getProcessInfo("comfy")["pid"]
        [comfyui] = Stack.children(relay)
        os.kill(comfyui, signal.SIGKILL)
        lost = ended(second, running)
        assert lost["state"] == "failed" and lost["result"]["error"].startswith("comfy_restarted"), lost
        again = ended(second, queued)
        assert again["state"] == "completed", again
        image = decode_png(open_answer(again["result"], ephemeral, first.public_key)["outputs"][0])
        assert image.size == (10, 6) and image.convert("RGB").getpixel((1, 1)) == (0, 0, 255)
        assert completed_jobs(second) == 1 and completed_jobs(first) == 0
        assert f"job {queued} went back to the fleet's queue (not started when this pod's last" in first.log
    finally:
        for pod in (first, second):
            if pod is not None:
                pod.stop()


def test_a_killed_api_process_s_jobs_not_started_run_at_once_and_its_prompts_leave_comfyui(
    redis_server, backend
):
    """The first pod's gunicorn worker is killed with one job running in its ComfyUI and one
    queued behind it. The queued one, which never started, runs at once (the claim timeout is
    ten minutes) under its id; the running one answers worker_lost; the dead process's prompts
    leave that ComfyUI."""
    prefix = f"apikill-{uuid.uuid4().hex[:8]}"
    env = {**fleet_env(redis_server, prefix), "JOB_CLAIM_TIMEOUT_S": "600", "JOB_TIMEOUT_S": "300"}
    first = Stack("api", env, backend=backend).ready()
    second = None
    try:
        real = backend.name == "real"
        blocker = (
            slow_workflow(60, color=71)
            if real
            else with_knob("StandinSlow", color=71, seconds=120, steps=120)
        )
        running = submit(first, {"workflow": blocker})
        wait_until(lambda: comfy_queue(first)["queue_running"] != [], 60, "the first pod's ComfyUI to run it")
        sealed, ephemeral = seal_request({"workflow": empty_image(10, 6, 0x00FFFF)}, first.public_key)
        queued = submit(first, sealed)
        wait_until(lambda: comfy_queue(first)["queue_pending"] != [], 30, "the next job queued behind it")
        assert status(first, queued)["state"] == "queued"  # taken, but not started
        assert status(first, running)["state"] == "running"
        second = Stack("api", {**env, "WORKER_PRIVATE_KEY_B64": first.private_key}, backend=backend).ready()
        assert comfy_queue(first)["queue_running"] != [], "the blocker ended first: a longer one is needed"
        master = supervisor_state.rpc(first.socket).supervisor.getProcessInfo("api")["pid"]
        [worker] = Stack.children(master)
        os.kill(worker, signal.SIGKILL)
        again = ended(second, queued, timeout=120)
        assert again["state"] == "completed", again
        image = decode_png(open_answer(again["result"], ephemeral, first.public_key)["outputs"][0])
        assert image.size == (10, 6) and image.convert("RGB").getpixel((1, 1)) == (0, 255, 255)
        lost = ended(second, running, timeout=60)
        assert lost["state"] == "failed" and lost["result"]["error"].startswith("worker_lost"), lost
        wait_until(
            lambda: comfy_queue(first) == {"queue_running": [], "queue_pending": []}, 30, "an idle ComfyUI"
        )
        said = f"the API process {worker} is gone: instance 0: deleted 1 waiting prompt(s), interrupted 1; "
        assert said + "1 fleet job(s) it took and had not started went back to the queue" in first.log
    finally:
        for pod in (first, second):
            if pod is not None:
                pod.stop()


def test_an_entry_waiting_in_comfyui_is_kept_from_other_pods_past_the_claim_timeout(redis_server):
    """A job waits in its pod's ComfyUI queue longer than JOB_CLAIM_TIMEOUT_S: the pod that took
    it keeps it (no other pod takes it over and runs it twice); it starts and completes there."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    queued = Blocking(starts=False)
    holder = shared_jobs(redis_server, prefix, lambda own: 1 - own, queued, JOB_CLAIM_TIMEOUT_S="1")
    job = holder.start(DRY_JOB)
    assert queued.running.wait(10)
    other = shared_jobs(redis_server, prefix, lambda own: 1 - own, JOB_CLAIM_TIMEOUT_S="1")
    client, stream = redis_server.client(), f"{prefix}:jobs"
    pending = lambda: client.xpending_range(stream, GROUP, "-", "+", 10)  # noqa: E731
    since = time.monotonic()
    while time.monotonic() - since < 3:  # three claim timeouts
        [entry] = pending()
        assert entry["consumer"].decode() == holder.name and entry["time_since_delivered"] < 1000
        time.sleep(0.1)
    assert other.taken_over == 0 and other.get(job.id).state == "queued"
    queued.release.set()
    wait_until(lambda: other.get(job.id).state == "completed", 10, "the job to end where it waited")
    assert pending() == [] and client.xlen(stream) == 0


def comfy_queue(pod):
    return requests.get(f"http://127.0.0.1:{pod.comfy_port}/queue", timeout=5).json()


def test_a_pod_drained_by_sigterm_finishes_its_jobs_for_the_fleet_and_hands_on_what_its_deadline_cut(
    redis_server,
):
    """Two pods drained at once while a third serves: the one whose job is shorter than the drain
    finishes it (polled on the third); the other's deadline cuts its job, which runs again on the
    third under the same id, its envelope opened a second time for that job only."""
    fleet = {**fleet_env(redis_server, f"drain-{uuid.uuid4().hex[:8]}"), "DRAIN_TIMEOUT_S": "4"}
    first = Stack("api", fleet).start()
    second = Stack("api", {**fleet, "WORKER_PRIVATE_KEY_B64": first.private_key}).start()
    drained = [first, second]
    other = None
    try:
        for pod in drained:
            pod.wait_ready()
        finishing = submit(first, {"workflow": with_knob("StandinSlow", color=50, seconds=2, steps=4)})
        wait_until(lambda: sum(in_flight(pod) for pod in drained) == 1, 20, "a pod to run the short job")
        sealed, ephemeral = seal_request(
            {"workflow": with_knob("StandinSlow", color=51, seconds=8, steps=16)}, first.public_key
        )
        cut = submit(first, sealed)
        wait_until(lambda: all(in_flight(pod) == 1 for pod in drained), 20, "the other to run the long job")
        # started in ComfyUI: a job still queued there would go back to the fleet at once instead
        wait_until(lambda: status(first, cut)["state"] == "running", 20, "the long job to start")
        for pod in drained:
            pod.terminate()
        other = Stack("api", {**fleet, "WORKER_PRIVATE_KEY_B64": first.private_key}).ready()
        assert [pod.exit_code(timeout=60) for pod in drained] == [0, 0]
        done = ended(other, finishing)
        assert done["state"] == "completed" and done["result"]["outputs"], done
        assert any("cutting what is left (1 fleet-job, 1 job)" in pod.log for pod in drained)
        again = ended(other, cut, timeout=60)  # ran again on the pod that is left
        assert again["state"] == "completed", again
        result = open_answer(again["result"], ephemeral, first.public_key)
        assert decode_png(result["outputs"][0]).size == (16, 16)
        assert completed_jobs(other) == 1
    finally:
        for pod in [*drained, other]:
            if pod is not None:
                pod.stop()


def test_a_pending_webhook_sealed_to_a_dropped_key_fails_instead_of_staying_claimed(redis_server):
    """After a rotation dropped the key its URL was sealed to, no pod can open it: it was
    claimed, left pending and claimed again for ever; now it ends as failed."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    old, new = envelopes.keypair()[0], envelopes.keypair()[0]
    client, key = redis_server.client(), f"{prefix}:job:j1"
    sealed = envelopes.keep_secret("http://127.0.0.1:9/hook", envelopes.Keyring.from_keys(old))
    kept = {"state": "completed", "webhook_url": sealed, "webhook_body": "{}", "webhook_owner": ""}
    client.hset(key, mapping={**kept, "webhook_state": "pending", "webhook_attempts": 1})
    client.expire(key, 60)
    client.sadd(f"{prefix}:webhooks", "j1")
    shared_jobs(redis_server, prefix, lambda own: 0, WORKER_PRIVATE_KEY_B64=new)
    wait_until(lambda: not client.sismember(f"{prefix}:webhooks", "j1"), 15, "the webhook to end")
    assert client.hget(key, "webhook_state") == b"failed" and client.hget(key, "webhook_url") is None


def test_a_record_without_a_key_is_no_named_key_s_and_another_key_s_job_is_not_either(redis_server):
    """A record without a key (none is written so; one a pod before named keys wrote) is seen
    only where every job is anyone's (no keys set); a named key sees its own jobs only."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    store = shared_jobs(redis_server, prefix, lambda own: 0)
    client = redis_server.client()
    client.hset(f"{prefix}:job:old", mapping={"state": "queued", "created": 1})
    assert store.get("old", "ci") is None and store.cancel("old", "ci") is None
    assert store.get("old", "-").state == "queued" and store.get("old").state == "queued"
    job = store.start(DRY_JOB, owner="ci")
    assert store.get(job.id, "ci").state == "queued"
    assert store.get(job.id, "team") is None and store.cancel(job.id, "team") is None
    assert store.get(job.id, "ci").state == "queued"  # the other key's cancel did not reach it


@pytest.mark.parametrize("starts", [True, False], ids=["running", "queued"])
def test_a_job_whose_record_redis_lost_is_written_again_only_with_its_key(redis_server, starts):
    """Redis restarted without persistence under a job (here its record deleted): a running
    job's outcome is written again with its key, so only that key polls it; a job that had not
    started writes nothing (Redis forgot it, as every queued job)."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    comfy = Blocking(starts=starts)
    pod = shared_jobs(redis_server, prefix, lambda own: 1 - own, comfy)
    job = pod.start(DRY_JOB, owner="ci")
    assert comfy.running.wait(10)
    client = redis_server.client()
    client.delete(f"{prefix}:job:{job.id}")
    comfy.release.set()
    wait_until(lambda: not pod.taken, 10, "the job to end on its pod")
    assert pod.get(job.id, "team") is None and pod.get(job.id, "-") is None
    if starts:
        assert pod.get(job.id, "ci").state == "completed"
        assert client.hget(f"{prefix}:job:{job.id}", "key") == b"ci"
    else:
        assert client.exists(f"{prefix}:job:{job.id}") == 0


def ran_in_order(pod, jobs):
    """The jobs' ids in the order they ended (one at a time: the order they were taken)."""
    return sorted(jobs, key=lambda job_id: pod.get(job_id).finished)


def test_a_key_s_single_job_runs_next_when_another_key_floods_the_fleet_s_queue(redis_server):
    """One key queues five jobs, then another key one: the second key's job is the next taken,
    not the sixth, and each key's own jobs keep their order."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    submitter = shared_jobs(redis_server, prefix, lambda own: 0)
    flood = [submitter.start(DRY_JOB, owner="flood").id for _ in range(5)]
    single = submitter.start(DRY_JOB, owner="single").id
    worker = shared_jobs(redis_server, prefix, lambda own: 1 - own)  # one job at a time
    wait_until(lambda: all(worker.get(j).state == "completed" for j in [*flood, single]), 20, "every job")
    assert ran_in_order(worker, [*flood, single]) == [flood[0], single, *flood[1:]]
    assert worker.waiting() == 0


def test_a_key_with_a_job_running_on_another_pod_waits_for_a_key_with_none(redis_server):
    """Turns count the jobs each key has taken across the fleet: while one pod runs key A's job,
    a second pod takes both of key B's before A's next, though A's were sent first."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    submitter = shared_jobs(redis_server, prefix, lambda own: 0)
    first = submitter.start(DRY_JOB, owner="a").id
    blocking = Blocking()
    busy = shared_jobs(redis_server, prefix, lambda own: 1 - own, blocking)
    assert blocking.running.wait(10) and busy.get(first).state == "running"
    busy.taking.capacity = lambda own: 0
    later_a = [submitter.start(DRY_JOB, owner="a").id for _ in range(2)]
    b_jobs = [submitter.start(DRY_JOB, owner="b").id for _ in range(2)]
    other = shared_jobs(redis_server, prefix, lambda own: 1 - own)
    jobs = [*later_a, *b_jobs]
    wait_until(lambda: all(other.get(j).state == "completed" for j in jobs), 20, "the other pod's jobs")
    assert ran_in_order(other, jobs) == [*b_jobs, *later_a]
    blocking.release.set()
    wait_until(lambda: busy.get(first).state == "completed", 10, "the first job")
    client = redis_server.client()
    assert client_lists(client, prefix) == b"" and client.xlen(f"{prefix}:jobs") == 0


def test_a_job_in_the_queue_as_a_pod_before_tickets_wrote_it_still_runs(redis_server):
    """A rolling upgrade: an entry that carries its job's id and request runs as that job."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    pod = shared_jobs(redis_server, prefix, lambda own: 0)
    client = redis_server.client()
    client.hset(f"{prefix}:job:old", mapping={"state": "queued", "created": 1, "key": "-"})
    client.xadd(f"{prefix}:jobs", {"id": "old", "body": json.dumps(DRY_JOB), "traceparent": "", "key": "-"})
    pod.taking.capacity = lambda own: 1 - own
    wait_until(lambda: pod.get("old").state == "completed", 10, "the old entry's job")
    assert pod.get("old").result["dry_run"] is True and pod.waiting() == 0


def test_an_idle_pod_between_two_reads_still_gets_the_job_a_busy_pod_could_queue_behind(redis_server):
    """An idle pod is not blocked on the stream while it looks at its capacity (a loaded machine
    makes that slow): a busy pod that looked then took the job and queued it behind its running
    one, while the idle ComfyUI waited (seen in CI). A busy pod reads only a job that waited."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    busy = shared_jobs(redis_server, prefix, lambda own: 1, at_once=lambda own: 0)

    def slow_capacity(own: int) -> int:
        time.sleep(0.2)
        return 1

    idle = shared_jobs(redis_server, prefix, slow_capacity)
    client = redis_server.client()
    for _ in range(6):  # each sent while the idle pod looks at its capacity, after its last job
        job = busy.start(DRY_JOB)
        wait_until(lambda job=job: idle.get(job.id).state == "completed", 10, "the job")
        assert client.hget(f"{prefix}:job:{job.id}", "owner").decode() == idle.name


def test_a_pod_with_room_only_behind_a_running_job_leaves_each_new_job_to_an_idle_pod(redis_server):
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    busy = shared_jobs(redis_server, prefix, lambda own: 1, at_once=lambda own: 0)
    idle = shared_jobs(redis_server, prefix, lambda own: 1)
    client = redis_server.client()
    for _ in range(8):
        job = busy.start(DRY_JOB)
        wait_until(lambda job=job: idle.get(job.id).state == "completed", 10, "the job")
        assert client.hget(f"{prefix}:job:{job.id}", "owner").decode() == idle.name
    idle.close()  # no idle pod left: the busy one takes the job all the same
    job = busy.start(DRY_JOB)
    wait_until(lambda: busy.get(job.id).state == "completed", 10, "the busy pod to take it")
    assert client.hget(f"{prefix}:job:{job.id}", "owner").decode() == busy.name


def test_a_draining_pod_hands_back_at_once_the_job_it_took_and_had_not_started(redis_server, tmp_path):
    """The job waits in the draining pod's ComfyUI queue behind a running one (not started):
    it leaves that queue and runs on an idle pod at once, not after the claim timeout."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    comfy = Blocking(starts=False)
    draining = shared_jobs(redis_server, prefix, lambda own: 1 - own, comfy, RUN_DIR=str(tmp_path / "a"))
    job = draining.start(DRY_JOB)
    assert comfy.running.wait(10) and draining.get(job.id).state == "queued"
    idle = shared_jobs(redis_server, prefix, lambda own: 1 - own, RUN_DIR=str(tmp_path / "b"))
    os.makedirs(tmp_path / "a")
    drain.begin(draining.settings.run_layout)
    wait_until(lambda: idle.get(job.id).state == "completed", 10, "the job to run on the idle pod")
    assert redis_server.client().hget(f"{prefix}:job:{job.id}", "owner").decode() == idle.name
    assert comfy.stopped.is_set()  # taken out of the draining pod's ComfyUI


def failing(script, times):
    """A Redis script that does not answer the first `times` calls (None: never)."""
    calls = []

    def call(**kwargs):
        calls.append(kwargs)
        if times is None or len(calls) <= times:
            raise redis.ConnectionError("Redis does not answer")
        return script(**kwargs)

    return call


def test_a_start_redis_did_not_answer_is_written_once_it_answers(redis_server):
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    comfy = Blocking()
    pod = shared_jobs(redis_server, prefix, lambda own: 0, comfy, JOB_CLAIM_TIMEOUT_S="4")
    pod.running.start_script = failing(pod.running.start_script, 2)
    job = pod.start(DRY_JOB)
    pod.taking.capacity = lambda own: 1 - own
    assert comfy.running.wait(10)
    record = redis_server.client().hgetall(f"{prefix}:job:{job.id}")
    assert record[b"state"] == b"running" and record[b"owner"].decode() == pod.name
    comfy.release.set()
    wait_until(lambda: pod.get(job.id).state == "completed", 10, "the job")
    assert not comfy.stopped.is_set()


def test_a_start_redis_never_answered_stops_the_job_here_and_it_runs_once_elsewhere(redis_server):
    """Past the point where another pod may take the job's ticket over, the pod that could not
    record the start stops its run, so the job does not run on two pods."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    comfy = Blocking()
    pod = shared_jobs(redis_server, prefix, lambda own: 0, comfy, JOB_CLAIM_TIMEOUT_S="1.5")
    pod.running.start_script = failing(pod.running.start_script, None)
    job = pod.start(DRY_JOB)
    pod.taking.capacity = lambda own: 1 - own
    assert comfy.stopped.wait(10)  # stopped here
    pod.taking.capacity = lambda own: 0
    wait_until(lambda: not pod.taken, 10, "the stopped run to end")
    other = shared_jobs(redis_server, prefix, lambda own: 1 - own, JOB_CLAIM_TIMEOUT_S="1.5")
    wait_until(lambda: other.get(job.id).state == "completed", 10, "the job to run on the other pod")
    assert redis_server.client().hget(f"{prefix}:job:{job.id}", "owner").decode() == other.name
