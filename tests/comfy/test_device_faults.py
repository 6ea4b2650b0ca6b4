"""A GPU that fails costs one job: ComfyUI's `execution_error` is read as a device fault, an
out-of-memory or the workflow's own error; a fault answers `gpu_fault` and restarts its instance,
the jobs queued behind it run again, and out-of-memory answers `gpu_out_of_memory` (the stand-in
raises torch's exception types and messages, and a "poisoned" fault fails every later node in
its process, as a lost CUDA context does)."""

import threading

import pytest
import requests

from services.comfy import device_faults
from services.comfy.outputs import Outcome, Outputs
from services.core import config, errors
from tests.comfy.test_pool import AUTH, ENV, ended, instances, relay_pid, submit
from tests.comfy_standin.main import GPU_FAULTS, OOM_TIPS, full_type_name
from tests.stack import STANDIN, Stack, wait_until
from tests.workflows import decode_png, empty_image, with_knob


def error_of(fault: str) -> dict:
    """The `execution_error` ComfyUI sends for the stand-in's fault (execution.py's form)."""
    kind, message = GPU_FAULTS[fault]
    tips = OOM_TIPS if fault == "out_of_memory" else ""
    return {"exception_type": full_type_name(kind), "exception_message": f"{message}\n{tips}"}


@pytest.mark.parametrize("fault", ["illegal_memory_access", "device_side_assert", "no_kernel_image"])
def test_cuda_faults_are_device_faults(fault):
    assert device_faults.kind_of(error_of(fault)) == device_faults.DEVICE_FAULT


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: unspecified launch failure",
        "CUDA error: uncorrectable ECC error encountered",
        "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, k)`",
        "CUDA driver version is insufficient for CUDA runtime version",
    ],
)
def test_older_torch_raises_faults_as_runtime_errors(message):
    assert (
        device_faults.kind_of({"exception_type": "RuntimeError", "exception_message": message})
        == "device_fault"
    )


def test_out_of_memory_is_told_apart():
    assert device_faults.kind_of(error_of("out_of_memory")) == device_faults.OUT_OF_MEMORY
    old = {
        "exception_type": "RuntimeError",
        "exception_message": "CUDA out of memory. Tried to allocate 2 GiB",
    }
    assert device_faults.kind_of(old) == device_faults.OUT_OF_MEMORY


@pytest.mark.parametrize(
    "error",
    [
        {"exception_type": "ValueError", "exception_message": "an illegal memory access was encountered"},
        {"exception_type": "RuntimeError", "exception_message": "mat1 and mat2 shapes cannot be multiplied"},
        {"exception_type": "FileNotFoundError", "exception_message": "out of memory. Tried to allocate"},
        {},
    ],
)
def test_a_workflows_own_error_is_no_device_fault(error):
    assert device_faults.kind_of(error) is None


@pytest.fixture(scope="module")
def stack(gpu_fault_pack):
    """A pool of two, with the test node pack (tests/comfy/conftest.py)."""
    backend = gpu_fault_pack
    env = {**ENV, **backend.env, "JOB_TIMEOUT_S": "120", "OOM_RESTART_AFTER": "2"}
    stack = Stack("api", env, backend=backend).start(wait_for=("api", "comfy", "comfy-1"))
    stack.standin = backend is STANDIN
    try:
        wait_until(lambda: all(i["ready"] for i in instances(stack)), 180, "both instances ready")
        yield stack
    finally:
        stack.stop()


def slow(stack, color):
    """A job that holds its instance a while (the stand-in's a second; the real one's as long as
    ComfyUI takes), with inputs of its own so that ComfyUI's cache does not skip it."""
    if stack.standin:
        return with_knob("StandinSlow", color=color, seconds=1, steps=1)
    return empty_image(16, 16, color=color)


def run(stack, workflow):
    response = requests.post(f"{stack.url}/run", json={"workflow": workflow}, headers=AUTH, timeout=120)
    return response


def test_a_poisoned_gpu_costs_one_job_and_its_instance_restarts(stack):
    pids = {i: relay_pid(stack, i) for i in range(2)}
    fault = with_knob("GpuFault", color=11, fault="illegal_memory_access", poison=True)
    ids = [submit(stack, slow(stack, 100 + n)) for n in range(2)]  # one running on each instance
    ids.append(submit(stack, fault))  # queued behind one, with more behind it
    ids += [submit(stack, slow(stack, 200 + n)) for n in range(5)]
    answers = [ended(stack, job_id, timeout=240) for job_id in ids]
    failed = [answer for answer in answers if answer["state"] != "completed"]
    assert [answer["result"]["error"].split(":")[0] for answer in failed] == ["gpu_fault"]
    assert failed[0]["id"] == ids[2]
    for answer in answers:
        if answer["state"] == "completed":
            assert decode_png(answer["result"]["outputs"][0]).size == (16, 16)
    wait_until(lambda: all(i["ready"] for i in instances(stack)), 180, "the restarted instance back")
    restarted = [i for i in range(2) if relay_pid(stack, i) != pids[i]]
    assert len(restarted) == 1
    assert [i["preflight"] for i in instances(stack)] == ["passed", "passed"]  # the new start's too
    again = [threading.Thread(target=run, args=(stack, empty_image(8, 8, color=c))) for c in (1, 2, 3, 4)]
    for thread in again:
        thread.start()
    for thread in again:
        thread.join()
    assert all(run(stack, empty_image(9, 9, color=c)).status_code == 200 for c in (5, 6))


def test_a_gpu_fault_answers_503_with_retry_after(stack):
    response = run(stack, with_knob("GpuFault", color=12, fault="device_side_assert", poison=False))
    assert response.status_code == 503 and response.json()["error"].startswith("gpu_fault")
    assert response.headers.get("Retry-After") == "5"
    assert "device-side" not in response.text  # torch's text stays in the worker
    wait_until(lambda: all(i["ready"] for i in instances(stack)), 180, "the restarted instance back")
    assert run(stack, empty_image(7, 7, color=13)).status_code == 200


def test_out_of_memory_answers_its_code_and_repeated_ones_restart_the_instance(stack):
    wait_until(lambda: all(i["ready"] for i in instances(stack)), 180, "both instances ready")
    pids = {i: relay_pid(stack, i) for i in range(2)}
    oom = run(stack, with_knob("GpuFault", color=21, fault="out_of_memory", poison=False))
    assert oom.status_code == 503 and oom.json()["error"].startswith("gpu_out_of_memory")
    assert run(stack, empty_image(5, 5, color=22)).status_code == 200
    assert {i: relay_pid(stack, i) for i in range(2)} == pids  # one OOM is the job's own size
    for color in (23, 24, 25, 26):  # OOM_RESTART_AFTER=2 in a row on one instance: it restarts
        assert (
            run(stack, with_knob("GpuFault", color=color, fault="out_of_memory", poison=False)).status_code
            == 503
        )
    wait_until(lambda: any(relay_pid(stack, i) != pids[i] for i in range(2)), 180, "an instance restarted")


def test_faults_within_the_window_take_a_gpu_out_for_good_and_older_ones_are_forgotten():
    settings = config.load({"ENCRYPTION_REQUIRED": "0", "GPU_OUT_AFTER": "3", "GPU_OUT_WINDOW_S": "60"})
    record = device_faults.GpuRecord(settings)
    assert not record.failed_again(now=0.0) and not record.failed_again(now=30.0)
    assert not record.failed_again(now=70.0)  # the one at 0 s has left the window
    assert record.failed_again(now=80.0)  # 30, 70, 80: three within 60 s


def test_with_gpu_checks_off_every_failure_is_the_workflows_own():
    outputs = Outputs(config.load({"ENCRYPTION_REQUIRED": "0", "GPU_CHECKS": "0"}), None)
    with pytest.raises(errors.ExecutionFailed):
        outputs.raise_for(Outcome(error={**error_of("illegal_memory_access"), "node_id": "1"}), {})
    checked = Outputs(config.load({"ENCRYPTION_REQUIRED": "0"}), None)
    with pytest.raises(errors.GpuFault) as raised:
        checked.raise_for(Outcome(error=error_of("illegal_memory_access")), {})
    assert "illegal memory access" not in raised.value.message  # the answer; the log may say it
    assert raised.value.cause.startswith("torch.AcceleratorError: CUDA error: an illegal memory access")
