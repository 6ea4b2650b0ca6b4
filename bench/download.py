"""`/download` of a 1 GiB file (sha256 on) against `curl -o` of the same file from the same
loopback server sending with sendfile, in the same run; the same file as a Hugging Face download against
huggingface_hub's own `hf_hub_download` (its HTTP path: its Xet path needs the real Hub); then a
resume after the API worker is killed at about half.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import requests

from tests.file_server import FileServer
from tests.stack import Stack, wait_until

KEY = "bench"
AUTH = {"Authorization": f"Bearer {KEY}"}


def kill_api_worker(stack: Stack) -> None:
    for pid in stack.api_processes()[1]:
        os.kill(pid, signal.SIGKILL)


def hub_download(endpoint: str, folder: str) -> float:
    """huggingface_hub's own download of the same file, timed inside its own process (the
    library's import is not counted); returns seconds."""
    code = (
        "import sys, time\n"
        "from huggingface_hub import hf_hub_download\n"
        "started = time.perf_counter()\n"
        "hf_hub_download('org/model', 'big.safetensors', revision='main', local_dir=sys.argv[1], "
        "endpoint=sys.argv[2], force_download=True)\n"
        "print(time.perf_counter() - started)\n"
    )
    env = {**os.environ, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": folder}
    done = subprocess.run(
        [sys.executable, "-c", code, folder, endpoint], env=env, capture_output=True, text=True, check=True
    )
    shutil.rmtree(folder, ignore_errors=True)
    return float(done.stdout.split()[-1])


def against_curl(
    stack: Stack, models: str, server: FileServer, digest: str, scratch: str, args: Any, where: str
) -> None:
    """`/download` into `models` (the stack's model folder) against curl into `scratch` (the same
    file system), from the server's sendfile route; curl is also timed with an fsync after it."""
    size = args.mib * 1024 * 1024
    curl_times, synced_times, our_times = [], [], []
    target = os.path.join(models, "checkpoints", "big.safetensors")
    copy = os.path.join(scratch, "curl.bin")

    def with_curl() -> None:
        started = time.perf_counter()
        subprocess.run(["curl", "-sS", "-o", copy, f"{server.url}/disk/big.safetensors"], check=True)
        curl_times.append(time.perf_counter() - started)
        fd = os.open(copy, os.O_RDONLY)
        os.fsync(fd)  # what /download does before the rename: the file survives a crash
        os.close(fd)
        synced_times.append(time.perf_counter() - started)
        os.remove(copy)  # each starts from no file

    def with_worker() -> None:
        item = {"type": "checkpoints", "url": f"{server.url}/disk/big.safetensors", "sha256": digest}
        started = time.perf_counter()
        result = requests.post(
            stack.url + "/download", json={"items": [item], "wait": True}, headers=AUTH, timeout=900
        ).json()
        our_times.append(time.perf_counter() - started)
        assert result["downloads"][0]["state"] == "done", result
        os.remove(target)

    for round_ in range(args.rounds):  # interleaved, order alternating: drift hits both
        for run in (with_curl, with_worker) if round_ % 2 == 0 else (with_worker, with_curl):
            os.sync()  # the last transfer's writeback is not the next one's cost
            run()
    curl_s, ours_s = statistics.median(curl_times), statistics.median(our_times)
    synced_s = statistics.median(synced_times)
    print(f"[{where}] curl -o                 median {curl_s:6.2f} s  {size / curl_s / 1e6:7.1f} MB/s")
    print(f"[{where}] curl -o, then fsync     median {synced_s:6.2f} s  {size / synced_s / 1e6:7.1f} MB/s")
    print(f"[{where}] /download (sha256 on)   median {ours_s:6.2f} s  {size / ours_s / 1e6:7.1f} MB/s")
    print(
        f"[{where}] speed /download : curl = {curl_s / ours_s:.2f}x, : curl+fsync = {synced_s / ours_s:.2f}x "
        f"({args.mib} MiB, loopback sendfile, median of {args.rounds} interleaved rounds; target 0.9x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    size = args.mib * 1024 * 1024
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    server = FileServer()
    server.files = {"big.safetensors": data, "org/model@main/big.safetensors": data}
    server.rate = 200 * 1024 * 1024  # pace for the resume run only (/slow/)
    scratch = tempfile.mkdtemp(prefix="bench-dl-")
    source = os.path.join(scratch, "source.bin")
    with open(source, "wb") as handle:
        handle.write(data)
    server.on_disk = {"big.safetensors": source}  # /disk/: sent with sendfile, as nginx would
    env = {
        "DRY_RUN": "1",
        "ENCRYPTION_REQUIRED": "0",
        "API_KEY": KEY,
        "ALLOW_PRIVATE_DOWNLOADS": "1",
        "LOG_SILENT": "1",
        "HF_ENDPOINT": server.url,
    }
    try:
        with Stack("api", env) as stack:
            stack.wait_http("/readyz", headers=AUTH)
            target = os.path.join(stack.run_dir, "models", "checkpoints", "big.safetensors")
            against_curl(stack, os.path.join(stack.run_dir, "models"), server, digest, scratch, args, "disk")
            hub_times, hf_times = [], []
            hf_item = {
                "type": "checkpoints",
                "repo_id": "org/model",
                "filename": "big.safetensors",
                "revision": "main",
                "sha256": digest,
            }

            def with_hub_library() -> None:
                hub_times.append(hub_download(server.url, os.path.join(scratch, "hub")))

            def with_worker_from_hub() -> None:
                started = time.perf_counter()
                result = requests.post(
                    stack.url + "/download",
                    json={"items": [hf_item], "wait": True},
                    headers=AUTH,
                    timeout=900,
                ).json()
                hf_times.append(time.perf_counter() - started)
                assert result["downloads"][0]["state"] == "done", result
                os.remove(target)

            for round_ in range(args.rounds):
                for run in (
                    (with_hub_library, with_worker_from_hub)
                    if round_ % 2
                    else (with_worker_from_hub, with_hub_library)
                ):
                    os.sync()
                    run()
            hub_s, hf_s = statistics.median(hub_times), statistics.median(hf_times)
            print(
                f"huggingface_hub hf_hub_download (HTTP path)  median {hub_s:6.2f} s  {size / hub_s / 1e6:7.1f} MB/s"
            )
            print(
                f"/download of the same Hugging Face file      median {hf_s:6.2f} s  {size / hf_s / 1e6:7.1f} MB/s"
            )
            print(
                f"speed /download : huggingface_hub = {hub_s / hf_s:.2f}x (same server; the library neither checks "
                "sha256 nor fsyncs; its Xet path needs the real Hub)"
            )

            slow = {
                "type": "checkpoints",
                "url": f"{server.url}/slow/big.safetensors",
                "filename": "resumed.safetensors",
                "sha256": digest,
            }
            download_id = requests.post(
                stack.url + "/download", json=[slow], headers=AUTH, timeout=30
            ).json()["downloads"][0]["id"]

            def half() -> bool:
                status = requests.get(stack.url + f"/download/{download_id}", headers=AUTH, timeout=5).json()
                return status["bytes_done"] >= size // 2

            wait_until(half, 600, "half of the file")
            before = server.bytes_sent("big.safetensors")
            kill_api_worker(stack)
            time.sleep(0.5)
            stack.wait_http("/healthz")
            result = requests.post(
                stack.url + "/download", json={"items": [slow], "wait": True}, headers=AUTH, timeout=900
            ).json()
            assert result["downloads"][0]["state"] == "done", result
            second = server.bytes_sent("big.safetensors") - before
            print(
                f"resume after a kill at ~half: second transfer {second / 1e6:.1f} MB of {size / 1e6:.1f} MB ({second / size:.1%})"
            )
        memory = tempfile.mkdtemp(prefix="bench-dl-", dir="/dev/shm")  # where the disk does not limit
        try:
            with Stack("api", {**env, "COMFYUI_MODEL_DIR": os.path.join(memory, "models")}) as stack:
                stack.wait_http("/readyz", headers=AUTH)
                against_curl(stack, os.path.join(memory, "models"), server, digest, memory, args, "tmpfs")
        finally:
            shutil.rmtree(memory, ignore_errors=True)
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
