"""A job's `models` (services.models.job_models): fetched once onto the volume, shared by the workers on
it, capped by MODEL_CACHE_GB. In-process pipelines (DRY_RUN) first, then real stacks."""

import hashlib
import logging
import os
import threading

import pytest
import requests

from client.envelope_client import open_answer, seal_request
from services.core import config
from services.core.job_spec import Cancel
from services.models.model_cache import ModelCache
from tests.file_server import FileServer
from tests.pipelines import pipeline
from tests.stack import Stack, wait_until

WORKFLOW = {"1": {"class_type": "SaveImage", "inputs": {}}}
SMALL = os.urandom(1000)


@pytest.fixture
def server():
    server = FileServer()
    yield server
    server.stop()


def settings(tmp_path, **env):
    return config.load(
        {
            "ENCRYPTION_REQUIRED": "0",
            "DRY_RUN": "1",
            "COMFYUI_MODEL_DIR": str(tmp_path / "models"),
            "ALLOW_PRIVATE_DOWNLOADS": "1",
            **env,
        }
    )


def worker(tmp_path, **env):
    """One worker's pipeline on the volume under `tmp_path` (several share it)."""
    return pipeline(settings(tmp_path, **env))


def job(*models):
    return {"workflow": WORKFLOW, "models": list(models)}


def item(server, name, **extra):
    return {"type": "checkpoints", "url": f"{server.url}/file/{name}", **extra}


def model(tmp_path, name):
    return tmp_path / "models" / "checkpoints" / name


def full_transfers(server, name):
    return [r for r in server.requests if r["path"].endswith("/" + name) and r["range"] is None]


def test_a_job_brings_its_model_once_and_later_jobs_find_it(tmp_path, server):
    server.files = {"a.safetensors": SMALL}
    pipeline = worker(tmp_path)
    wanted = item(server, "a.safetensors", sha256=hashlib.sha256(SMALL).hexdigest())
    first = pipeline.run(job(wanted))
    assert first.status == 200 and first.body["dry_run"] is True, first.body
    assert model(tmp_path, "a.safetensors").read_bytes() == SMALL
    assert worker(tmp_path).run(job(wanted)).status == 200  # another worker on the volume
    assert len(server.requests) == 1  # the second job asked no server
    listing = ModelCache(settings(tmp_path)).annotate({"checkpoints": [{"name": "a.safetensors"}]})
    assert listing["checkpoints"][0]["cached"] is True and listing["checkpoints"][0]["last_used"] > 0


def test_two_workers_naming_one_large_file_at_once_make_one_transfer(tmp_path, server):
    data = os.urandom(200 * 1024 * 1024)
    server.files = {"big.safetensors": data}
    replies = []
    runs = [
        threading.Thread(
            target=lambda: replies.append(worker(tmp_path).run(job(item(server, "big.safetensors"))))
        )
        for _ in range(2)
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(120)
    assert [r.status for r in replies] == [200, 200], [r.body for r in replies]
    assert len(server.requests) == 1 and server.bytes_sent("big.safetensors") == len(data)
    assert (
        hashlib.sha256(model(tmp_path, "big.safetensors").read_bytes()).digest()
        == hashlib.sha256(data).digest()
    )


def test_a_dead_worker_s_transfer_is_taken_over_and_resumed(tmp_path, server):
    data = os.urandom(3 * 1024 * 1024)
    server.files = {"half.safetensors": data}
    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / ".half.safetensors.lock").write_text("a-worker-that-died")
    (folder / ".half.safetensors.part").write_bytes(data[: len(data) // 2])
    reply = worker(tmp_path, MODEL_LOCK_STALE_S="1").run(
        job(item(server, "half.safetensors", sha256=hashlib.sha256(data).hexdigest()))
    )
    assert reply.status == 200, reply.body
    assert (folder / "half.safetensors").read_bytes() == data
    assert [r["range"] for r in server.requests] == [f"bytes={len(data) // 2}-"]
    assert sorted(os.listdir(folder)) == ["half.safetensors"]


def test_the_cap_evicts_the_least_recently_used_never_a_file_in_use_nor_the_operator_s(tmp_path, server):
    server.files = {name: SMALL for name in ("a", "b", "c", "d", "big")}
    server.files["big"] = os.urandom(4000)
    cap = {"MODEL_CACHE_GB": str(3500 / 1e9)}
    model(tmp_path, "x").parent.mkdir(parents=True)
    model(tmp_path, "operator.safetensors").write_bytes(os.urandom(5000))  # placed by hand: no record
    pipeline = worker(tmp_path, **cap)
    for name in ("a", "b", "c"):
        assert pipeline.run(job(item(server, name))).status == 200
    assert pipeline.run(job(item(server, "a"))).status == 200  # a used again: b is now the oldest
    other = ModelCache(settings(tmp_path, **cap))
    marker = other.use("checkpoints", "b")  # a job on another worker uses b
    assert pipeline.run(job(item(server, "d"))).status == 200
    assert sorted(os.listdir(model(tmp_path, "x").parent)) == ["a", "b", "d", "operator.safetensors"]
    other.release(marker)
    assert pipeline.run(job(item(server, "c"))).status == 200  # now b, the oldest, goes
    assert sorted(os.listdir(model(tmp_path, "x").parent)) == ["a", "c", "d", "operator.safetensors"]
    too_big = pipeline.run(job(item(server, "big")))
    assert too_big.status == 507 and too_big.body["error"].startswith("model_cache_full: models[0]"), (
        too_big.body
    )
    assert not model(tmp_path, "big").exists()


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("checksum", "model_fetch_failed: models[1]: checksum mismatch"),
        ("404", "model_fetch_failed: models[1]: the server answered HTTP 404"),
        ("private", "model_fetch_failed: models[0]: not allowed"),  # every item is checked first
        ("slow", "model_fetch_failed: models[1]: took longer than 1 s"),
    ],
)
def test_a_model_that_cannot_be_had_answers_a_coded_error_without_its_url(
    tmp_path, server, caplog, case, why
):
    server.files = {"ok": SMALL, "m.safetensors": os.urandom(2 * 1024 * 1024)}
    server.rate = 256 * 1024
    env = {"MODEL_FETCH_TIMEOUT_S": "1"}
    wanted = item(server, "m.safetensors")
    if case == "checksum":
        wanted["sha256"] = "0" * 64
    elif case == "404":
        wanted["url"] = f"{server.url}/file/missing.safetensors"
    elif case == "private":
        env["ALLOW_PRIVATE_DOWNLOADS"] = "0"
    else:
        wanted["url"] = f"{server.url}/slow/m.safetensors"
    caplog.set_level(logging.INFO)
    reply = worker(tmp_path, **env).run(job(item(server, "ok", type="loras"), wanted))
    assert reply.body["error"].startswith(why), reply.body
    host = server.url.split("//")[1]
    assert host not in reply.body["error"] and "127.0.0.1" not in reply.body["error"]
    assert host not in caplog.text
    assert not model(tmp_path, "m.safetensors").exists()


def test_a_cancel_stops_a_model_transfer(tmp_path, server):
    server.files = {"m.safetensors": os.urandom(4 * 1024 * 1024)}
    server.rate = 256 * 1024
    cancel, replies = Cancel(), []
    wanted = item(server, "m.safetensors")
    wanted["url"] = f"{server.url}/slow/m.safetensors"
    running = threading.Thread(target=lambda: replies.append(worker(tmp_path).run(job(wanted), None, cancel)))
    running.start()
    partial = model(tmp_path, ".m.safetensors.part")
    wait_until(lambda: partial.exists() and partial.stat().st_size > 0, 10, "the transfer to start")
    cancel.set()
    running.join(10)
    assert replies and replies[0].body["error"].startswith("interrupted"), replies
    assert (
        not model(tmp_path, "m.safetensors").exists() and not model(tmp_path, ".m.safetensors.lock").exists()
    )


def test_models_must_be_a_list_of_objects(tmp_path):
    reply = worker(tmp_path).run({"workflow": WORKFLOW, "models": "checkpoints/x"})
    assert reply.status == 400 and reply.body["error"].startswith("invalid_request: 'models'")
    unknown = worker(tmp_path).run(job({"type": "nope", "url": "http://example.com/x"}))
    assert unknown.status == 400 and unknown.body["error"].startswith("invalid_target: models[0]")


# Real stacks on one volume --------------------------------------------------------------------
def volume_env(volume, **extra):
    return {
        "DRY_RUN": "1",
        "ENCRYPTION_REQUIRED": "0",
        "COMFYUI_MODEL_DIR": str(volume),
        "ALLOW_PRIVATE_DOWNLOADS": "1",
        "MODEL_LOCK_STALE_S": "2",
        **extra,
    }


def run_on(stack, payload):
    if stack.mode == "api":
        return requests.post(stack.url + "/run", json=payload, timeout=120).json()
    answer = requests.post(stack.url + "/v2/LOCAL/runsync", json={"input": payload}, timeout=120).json()
    return answer.get("output") or {"error": answer.get("error")}


def paced(server, name):
    return {"type": "checkpoints", "url": f"{server.url}/slow/{name}"}


def answer_or_none(stack, payload):
    """For a worker that is killed meanwhile."""
    try:
        return run_on(stack, payload)
    except requests.RequestException:
        return None


def test_a_pod_and_a_serverless_worker_on_one_volume_fetch_a_file_once(tmp_path, server):
    data = os.urandom(16 * 1024 * 1024)
    server.files = {"shared.safetensors": data}
    server.rate = 8 * 1024 * 1024  # two seconds: both jobs ask while the transfer runs
    pod = Stack("api", volume_env(tmp_path / "models")).start()
    queue = Stack("serverless", volume_env(tmp_path / "models")).start()
    try:
        pod.wait_ready()
        queue.wait_ready()
        answers = []
        both = [
            threading.Thread(
                target=lambda s=s: answers.append(run_on(s, job(paced(server, "shared.safetensors"))))
            )
            for s in (pod, queue)
        ]
        for thread in both:
            thread.start()
        for thread in both:
            thread.join(180)
        assert all(a.get("dry_run") for a in answers) and len(answers) == 2, answers
        assert len(server.requests) == 1 and server.bytes_sent("shared.safetensors") == len(data)
        listed = requests.get(pod.url + "/models/ls", params={"type": "checkpoints"}, timeout=10).json()
        [entry] = listed["models"]["checkpoints"]
        assert entry["name"] == "shared.safetensors" and entry["cached"] is True and entry["last_used"]
        metrics = requests.get(pod.url + "/metrics", timeout=10).text
        assert (
            "comfy_worker_model_transfers_total" in metrics
            and "comfy_worker_model_cache_hits_total" in metrics
        )
    finally:
        pod.stop()
        queue.stop()


def test_a_worker_killed_mid_transfer_is_finished_by_the_other(tmp_path, server):
    """On one machine the other sees at once that the holder exited (a holder elsewhere: after
    MODEL_LOCK_STALE_S, test_a_dead_worker_s_transfer_is_taken_over_and_resumed)."""
    data = os.urandom(6 * 1024 * 1024)
    server.files = {"slow.safetensors": data}
    server.rate = 1024 * 1024
    wanted = {**item(server, "slow.safetensors", sha256=hashlib.sha256(data).hexdigest())}
    wanted["url"] = f"{server.url}/slow/slow.safetensors"
    first = Stack("api", volume_env(tmp_path / "models")).start()
    second = Stack("api", volume_env(tmp_path / "models")).start()
    try:
        first.wait_ready()
        second.wait_ready()
        threading.Thread(target=lambda: answer_or_none(first, job(wanted)), daemon=True).start()
        partial = tmp_path / "models" / "checkpoints" / ".slow.safetensors.part"
        wait_until(
            lambda: partial.exists() and partial.stat().st_size > 1024 * 1024, 30, "the transfer to run"
        )
        first.kill()
        server.rate = 64 * 1024 * 1024
        answer = run_on(second, job(wanted))
        assert answer.get("dry_run") is True, answer
        assert (tmp_path / "models" / "checkpoints" / "slow.safetensors").read_bytes() == data
        assert any((r["range"] or "").startswith("bytes=") for r in server.requests)  # resumed, not restarted
    finally:
        first.stop()
        second.stop()


def test_an_encrypted_job_s_model_url_is_in_no_log_record_or_answer(tmp_path, server):
    server.files = {"secret-model-7731.safetensors": SMALL}
    with Stack("api", {**volume_env(tmp_path / "models"), "ENCRYPTION_REQUIRED": "1"}).ready() as pod:
        for name in ("secret-model-7731.safetensors", "absent-model-7731.safetensors"):
            payload = job(item(server, name))
            request, ephemeral = seal_request(payload, pod.public_key)
            job_id = requests.post(pod.url + "/run", params={"async": "1"}, json=request, timeout=10).json()[
                "id"
            ]
            wait_until(
                lambda j=job_id: (
                    requests.get(pod.url + f"/jobs/{j}", timeout=10).json()["state"]
                    in ("completed", "failed")
                ),
                30,
                "the job",
            )
            record = requests.get(pod.url + f"/jobs/{job_id}", timeout=10).text
            assert "7731" not in record and server.url not in record
            opened = open_answer(
                requests.get(pod.url + f"/jobs/{job_id}", timeout=10).json()["result"],
                ephemeral,
                pod.public_key,
            )
            assert opened.get("dry_run") or opened["error"].startswith(
                "model_fetch_failed: models[0]: the server answered HTTP 404"
            )
        assert "7731" not in pod.log and server.url.split("//")[1] not in pod.log
