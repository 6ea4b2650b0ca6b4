"""What one GPU fault costs a fleet under load: two pods of two stand-in ComfyUIs each on one
Redis, CLIENTS clients sending JOBS short jobs (one after another each) to both pods; after
FAULT_AT jobs one client sends a job that poisons its instance (the stand-in's GpuFault with
`poison`: every later node in that process fails, as after a lost CUDA context). Printed per
run: jobs failed per fault (target 1: the fault job itself), jobs the broken instance answered
after the fault (target 0), and the time from the fault's answer until that instance serves
again (a new process, ready). The baseline is the same run with GPU_CHECKS=0 (every failure is
the workflow's own, as before the classification), in the same script.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import requests

from services.comfy import supervisor_state
from tests.pod_jobs import ended, submit
from tests.redis_server import RedisServer
from tests.stack import Stack
from tests.workflows import with_knob

CLIENTS, JOBS, FAULT_AT = 4, 80, 20
RECOVERY_S = 60.0  # how long the fault's instance is watched for a new, ready process


def env(redis: RedisServer, prefix: str, checks: bool, key: str | None = None) -> dict:
    settings = {
        "DRY_RUN": "0",
        "ENCRYPTION_REQUIRED": "0",
        "COMFY_INSTANCES": "2",
        "JOB_TIMEOUT_S": "60",
        "STATE_URL": redis.url,
        "STATE_PREFIX": prefix,
        "LOG_FORMAT": "json",
        "GPU_CHECKS": "1" if checks else "0",
    }
    return {**settings, "WORKER_PRIVATE_KEY_B64": key} if key else settings


def end_lines(pod: Stack) -> dict[str, dict]:
    """Each job's end line (job id -> its fields) from the pod's log."""
    lines = {}
    for line in pod.log.splitlines():
        start = line.find("{")
        if start < 0 or '"job.end"' not in line:
            continue
        try:
            fields = json.loads(line[start:])
        except ValueError:
            continue
        lines[fields.get("job_id")] = fields
    return lines


def program(instance: int) -> str:
    return "comfy" if instance == 0 else f"comfy-{instance}"


def watch_recovery(pods: list[Stack], job_id: str, old_pids: list[dict[int, int]], found: dict) -> None:
    """From the fault's answer: which pod and instance ran it (its end line: a fleet's job runs
    on whichever pod took it), then the seconds until that instance runs a new, ready process
    (`found["recovery_s"]`; absent within RECOVERY_S)."""
    began = time.monotonic()
    while time.monotonic() - began < RECOVERY_S:
        ran = [(p, lines[job_id]) for p, pod in enumerate(pods) if job_id in (lines := end_lines(pod))]
        if ran:
            where, line = ran[0]
            pod, instance = pods[where], line["instance"]
            views = requests.get(f"{pod.url}/healthz", timeout=10).json()["comfy"]["instances"]
            pid = supervisor_state.rpc(pod.socket).supervisor.getProcessInfo(program(instance))["pid"]
            if pid not in (old_pids[where][instance], 0) and views[instance]["ready"]:
                found["recovery_s"] = time.monotonic() - began
                return
        time.sleep(0.05)


def one_run(checks: bool) -> dict:
    redis = RedisServer().start()
    prefix = f"gpu-{uuid.uuid4().hex[:8]}"
    first = Stack("api", env(redis, prefix, checks)).start()
    second = Stack("api", env(redis, prefix, checks, first.private_key)).start()
    pods = [first, second]
    try:
        for pod in pods:
            pod.wait_ready()
            wait = time.monotonic() + 60
            while not all(
                i["ready"]
                for i in requests.get(f"{pod.url}/healthz", timeout=10).json()["comfy"]["instances"]
            ):
                if time.monotonic() > wait:
                    raise RuntimeError("a pod's instances did not get ready")
                time.sleep(0.1)
        pids = [
            {
                i: supervisor_state.rpc(pod.socket).supervisor.getProcessInfo(program(i))["pid"]
                for i in range(2)
            }
            for pod in pods
        ]
        sent = iter(range(JOBS))
        lock = threading.Lock()
        outcomes: dict[str, str] = {}  # job id -> its state
        fault: dict = {}
        watchers = []

        def client() -> None:
            while True:
                with lock:
                    n = next(sent, None)
                if n is None:
                    return
                pod = n % 2
                if n == FAULT_AT:
                    workflow = with_knob("GpuFault", color=n, fault="illegal_memory_access", poison=True)
                else:
                    workflow = with_knob("StandinSlow", color=n, seconds=0.2, steps=1)
                job_id = submit(pods[pod], {"workflow": workflow})
                outcomes[job_id] = ended(pods[pod], job_id, timeout=120)["state"]
                if n == FAULT_AT:
                    fault["id"] = job_id
                    watcher = threading.Thread(target=watch_recovery, args=(pods, job_id, pids, fault))
                    watcher.start()
                    watchers.append(watcher)

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for thread in [*threads]:
            thread.start()
        for thread in threads:
            thread.join()
        for watcher in watchers:
            watcher.join()
        lines = {job_id: (p, line) for p, pod in enumerate(pods) for job_id, line in end_lines(pod).items()}
        broken = (lines[fault["id"]][0], lines[fault["id"]][1]["instance"])
        failed = [job_id for job_id, state in outcomes.items() if state != "completed"]
        after = [j for j in failed if j != fault["id"] and (lines[j][0], lines[j][1]["instance"]) == broken]
        return {
            "failed": len(failed),
            "after": len(after),
            "recovery_s": fault.get("recovery_s"),
            "fault_code": lines[fault["id"]][1]["code"],
            "completed": sum(1 for state in outcomes.values() if state == "completed"),
        }
    finally:
        for pod in pods:
            pod.stop()
        redis.stop()


def main() -> None:
    runs = {"GPU_CHECKS=0 (baseline)": one_run(checks=False), "GPU_CHECKS=1": one_run(checks=True)}
    print(
        f"gpu_faults: 2 pods x 2 stand-in instances, {CLIENTS} clients, {JOBS} jobs, one poisoning fault at job {FAULT_AT}"
    )
    for name, run in runs.items():
        recovery = "not within 60 s" if run["recovery_s"] is None else f"{run['recovery_s']:.2f} s"
        print(
            f"  {name:24} fault answered {run['fault_code']:17} jobs failed per fault {run['failed']:3}  "
            f"answered by the broken instance after it {run['after']:3}  serving again after {recovery}  "
            f"completed {run['completed']}/{JOBS}"
        )
    base, checked = runs["GPU_CHECKS=0 (baseline)"], runs["GPU_CHECKS=1"]
    print(f"  jobs failed per fault: {checked['failed']} against {base['failed']} (target 1)")


if __name__ == "__main__":
    main()
