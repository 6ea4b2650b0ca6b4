"""Before a ComfyUI start takes jobs, the worker's pre-flight node computes on its device; a GPU
broken from its start (the test node pack's `broken_gpu` file, which makes every torch call in
a node fail as torch does on such a device) fails it, takes no job, is restarted, and after
GPU_OUT_AFTER failures is out for good: /healthz and /metrics say so, a pod API answers
`gpu_unusable`, a serverless worker asks RunPod for another, a fleet pod takes nothing."""

import os
import stat
import uuid

import requests

from services.comfy import preflight
from services.core import config
from services.models import model_folders
from tests.comfy import test_pool
from tests.comfy.test_pool import AUTH, ENV, instances
from tests.jobs.fleet.test_store import completed_jobs, fleet_env
from tests.pod_jobs import ended, submit
from tests.stack import Stack, wait_until
from tests.workflows import decode_png, empty_image

BROKEN = "no_kernel_image"  # what a GPU the wheels were not built for raises on every kernel


def test_the_node_is_placed_where_comfyuis_user_reads_it_and_named_in_the_model_paths(tmp_path):
    settings = config.load(
        {"ENCRYPTION_REQUIRED": "0", "RUN_DIR": str(tmp_path), "COMFY_INSTANCE": "1", "COMFY_INSTANCES": "2"}
    )
    folder = preflight.place_node(settings)
    assert folder == os.path.join(str(tmp_path), "comfy-1-nodes")
    copied = os.path.join(folder, "worker_preflight.py")
    with open(copied, "rb") as placed, open(preflight.NODE, "rb") as source:
        assert placed.read() == source.read()
    assert stat.S_IMODE(os.stat(copied).st_mode) == 0o644 and stat.S_IMODE(os.stat(folder).st_mode) == 0o755
    assert os.listdir(folder) == ["worker_preflight.py"]  # ComfyUI loads every module there
    yaml = model_folders.extra_model_paths_yaml("/models", None, folder)
    assert f"worker_nodes:\n    custom_nodes: '{folder}'\n" in yaml
    assert preflight.workflow(7) == {"preflight": {"class_type": "WorkerPreflight", "inputs": {"seed": 7}}}


def broken_stack(gpu_fault_pack, mode, env, broken=(0,)):
    """A stack whose instances in `broken` have a GPU broken from their start."""
    stack = Stack(mode, {**env, **gpu_fault_pack.env}, backend=gpu_fault_pack)
    for instance in broken:
        user = os.path.join(stack.comfy_dir(instance), "user")
        os.makedirs(user)
        with open(os.path.join(user, "broken_gpu"), "w") as marker:
            marker.write(BROKEN)
    return stack


def test_a_gpu_broken_from_its_start_is_never_ready_and_leaves_while_the_other_serves(gpu_fault_pack):
    env = {**ENV, "JOB_TIMEOUT_S": "120", "GPU_OUT_AFTER": "2"}
    stack = broken_stack(gpu_fault_pack, "api", env, broken=(1,)).start(wait_for=("api", "comfy"))
    try:
        wait_until(lambda: instances(stack)[0]["ready"], 180, "the healthy instance ready")
        for color in (1, 2, 3):  # served by the healthy one while the other fails its pre-flights
            response = requests.post(
                f"{stack.url}/run",
                json={"workflow": empty_image(6, 6, color=color)},
                headers=AUTH,
                timeout=120,
            )
            assert response.status_code == 200, response.text
            assert decode_png(response.json()["outputs"][0]).size == (6, 6)
        wait_until(lambda: instances(stack)[1]["broken"] is not None, 180, "the broken instance out for good")
        healthy, broken = instances(stack)
        assert healthy["ready"] and healthy["preflight"] == "passed" and healthy["broken"] is None
        assert not broken["ready"] and broken["state"] == "STOPPED" and broken["preflight"] == "failed"
        assert (
            "pre-flight failed" in broken["broken"]
            and "2 device faults or failed pre-flights" in broken["broken"]
        )
        failed_lines = [line for line in stack.log.splitlines() if "instance 1: pre-flight failed on" in line]
        assert len(failed_lines) == 2, failed_lines  # the first start and one restart
        assert all(
            "torch.AcceleratorError: CUDA error: no kernel image is available" in line
            for line in failed_lines
        )
        metrics = requests.get(f"{stack.url}/metrics", headers=AUTH, timeout=10).text
        assert 'comfy_worker_comfyui_broken{comfy_instance="1"} 1.0' in metrics
        assert 'comfy_worker_comfyui_broken{comfy_instance="0"} 0.0' in metrics
        assert requests.get(f"{stack.url}/readyz", timeout=10).status_code == 200
        jobs = [test_pool.submit(stack, empty_image(7, 7, color=10 + n)) for n in range(4)]
        assert all(test_pool.ended(stack, job_id, timeout=120)["state"] == "completed" for job_id in jobs)
    finally:
        stack.stop()


def test_a_pod_whose_every_gpu_is_broken_answers_gpu_unusable(gpu_fault_pack):
    env = {**ENV, "COMFY_INSTANCES": "1", "JOB_TIMEOUT_S": "60", "GPU_OUT_AFTER": "1"}
    stack = broken_stack(gpu_fault_pack, "api", env).start(wait_for=("api",))
    try:
        wait_until(lambda: instances(stack)[0]["broken"] is not None, 180, "the only instance out for good")
        response = requests.post(
            f"{stack.url}/run", json={"workflow": empty_image(5, 5)}, headers=AUTH, timeout=60
        )
        assert response.status_code == 503 and response.json()["error"].startswith("gpu_unusable")
        assert response.headers.get("Retry-After") == "30"
        ready = requests.get(f"{stack.url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["comfy"]["instances"][0]["broken"]
        assert stack.state("comfy") == "STOPPED" and stack.proc.poll() is None  # PID 1 stays up
    finally:
        stack.stop()


def test_a_serverless_worker_whose_only_gpu_is_broken_asks_runpod_for_another(gpu_fault_pack):
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "JOB_TIMEOUT_S": "60", "GPU_OUT_AFTER": "1"}
    stack = broken_stack(gpu_fault_pack, "serverless", env).start(wait_for=("handler", "localqueue"))
    try:
        wait_until(lambda: os.path.exists(os.path.join(stack.run_dir, "comfy-broken")), 180, "out for good")
        job = requests.post(
            f"{stack.url}/v2/LOCAL/runsync", json={"input": {"workflow": empty_image(5, 5)}}, timeout=90
        ).json()
        assert job["status"] == "FAILED", job
        assert job["error"].startswith("gpu_unusable")
        asked = f"job {job['id']}: the worker asked to be replaced"  # the SDK sent stopPod
        wait_until(lambda: asked in stack.log, 10, "the local queue's line")
    finally:
        stack.stop()


def test_a_fleet_pod_whose_only_gpu_is_broken_takes_nothing_and_another_pod_runs_its_jobs(
    redis_server, gpu_fault_pack
):
    prefix = f"broken-{uuid.uuid4().hex[:8]}"
    env = {**fleet_env(redis_server, prefix), "GPU_OUT_AFTER": "1"}
    first = broken_stack(gpu_fault_pack, "api", env).start(wait_for=("api",))
    second = None
    try:
        wait_until(lambda: os.path.exists(os.path.join(first.run_dir, "comfy-broken")), 180, "out for good")
        job_ids = [submit(first, {"workflow": empty_image(8, 8, color=c)}) for c in (1, 2)]
        second_env = {**fleet_env(redis_server, prefix, first.private_key), **gpu_fault_pack.env}
        second = Stack("api", second_env, backend=gpu_fault_pack).start()
        for job_id in job_ids:
            done = ended(first, job_id, timeout=300)
            assert done["state"] == "completed", done
        assert completed_jobs(second) == 2 and completed_jobs(first) == 0
    finally:
        for pod in (first, second):
            if pod is not None:
                pod.stop()
