"""Cold start: worker start -> its first encrypted job done, against ComfyUI alone started ->
its first prompt done, alternating rounds in the same run (median). Also how long after
ComfyUI first answered the worker's job finished (target: within 50 ms of the direct client's
own gap), the moment taken from the relay's ready file. The real ComfyUI when installed
(--standin to use the stand-in)."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid

import requests

from client.envelope_client import open_answer, seal_request
from tests.stack import STANDIN, Backend, Stack, free_port, installed_real_backend
from tests.workflows import empty_image

TICK_S = 0.01


def until(check, timeout: float = 300) -> float:
    """Poll `check` every TICK_S; the wall-clock moment it first held."""
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        try:
            if check():
                return time.time()
        except requests.RequestException:
            pass
        time.sleep(TICK_S)
    raise TimeoutError("cold start did not finish")


def direct(backend: Backend) -> tuple[float, float]:
    """ComfyUI alone: (start -> prompt done, first answer -> prompt done)."""
    folder = tempfile.mkdtemp(prefix="cold-")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [backend.python, "-u", os.path.join(backend.comfyui_dir, "main.py"), "--port", str(port), "--cpu"]
    args += ["--disable-metadata", "--disable-auto-launch", "--database-url", "sqlite:///:memory:"]
    for kind in ("input", "output", "temp", "user"):
        os.makedirs(os.path.join(folder, kind))
        args += [f"--{kind}-directory", os.path.join(folder, kind)]
    started = time.time()
    proc = subprocess.Popen(
        args, cwd=backend.comfyui_dir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        answered = until(lambda: requests.get(url + "/system_stats", timeout=1).status_code == 200)
        prompt_id = str(uuid.uuid4())
        body = {"prompt": empty_image(8, 8, color=uuid.uuid4().int % 0xFFFFFF), "prompt_id": prompt_id}
        requests.post(url + "/prompt", json=body, timeout=30).raise_for_status()
        done = until(lambda: prompt_id in requests.get(f"{url}/history/{prompt_id}", timeout=5).json())
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
    return done - started, done - answered


def worker(backend: Backend) -> tuple[float, float]:
    """The pod API: (entrypoint start -> first encrypted job answered, ComfyUI's first answer
    (the relay's ready file) -> that job answered)."""
    stack = Stack("api", {"DRY_RUN": "0", "LOG_SILENT": "1"}, backend=backend)
    started = time.time()
    stack.start()
    try:
        until(lambda: requests.get(stack.url + "/ping", timeout=1).status_code == 200)
        request, ephemeral = seal_request({"workflow": empty_image(8, 8)}, stack.public_key)
        answer = requests.post(stack.url + "/run", json=request, timeout=600).json()
        done = time.time()
        assert open_answer(answer, ephemeral, stack.public_key)["status"] == "ok", answer
        answered = os.stat(os.path.join(stack.comfy_dir(0), "ready")).st_mtime
    finally:
        stack.stop()
    return done - started, done - answered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--standin", action="store_true")
    args = parser.parse_args()
    backend = STANDIN if args.standin else installed_real_backend(required=False) or STANDIN
    ours, theirs = [], []
    for _ in range(args.rounds):
        theirs.append(direct(backend))
        ours.append(worker(backend))
    total_ours, total_theirs = (statistics.median(t for t, _ in runs) for runs in (ours, theirs))
    gap_ours, gap_theirs = (statistics.median(g for _, g in runs) for runs in (ours, theirs))
    print(
        f"cold start ({backend.name}, median of {args.rounds}): worker start -> first encrypted job "
        f"{total_ours:.2f} s, ComfyUI alone -> first prompt {total_theirs:.2f} s: "
        f"{total_ours / total_theirs:.2f}x (+{total_ours - total_theirs:.2f} s)"
    )
    print(
        f"first answer of ComfyUI -> job done: worker {gap_ours * 1000:.0f} ms, direct client "
        f"{gap_theirs * 1000:.0f} ms (+{(gap_ours - gap_theirs) * 1000:.0f} ms; target +50 ms)"
    )


if __name__ == "__main__":
    main()
