"""`/download` of a 1 GiB file (sha256 on) against `curl -o` of the same file from the same
loopback server, in the same run; then a resume after the API worker is killed at about half.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time

import requests

from services import supervisor_state
from tests.file_server import FileServer
from tests.stack import Stack, wait_until

KEY = "bench"
AUTH = {"Authorization": f"Bearer {KEY}"}


def kill_api_worker(stack: Stack) -> None:
    master = supervisor_state.rpc(stack.socket).supervisor.getProcessInfo("api")["pid"]
    with open(f"/proc/{master}/task/{master}/children") as handle:
        for pid in map(int, handle.read().split()):
            os.kill(pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=1024)
    args = parser.parse_args()
    size = args.mib * 1024 * 1024
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    server = FileServer()
    server.files = {"big.safetensors": data}
    server.rate = 200 * 1024 * 1024  # pace for the resume run only (/slow/)
    scratch = tempfile.mkdtemp(prefix="bench-dl-")
    env = {
        "DRY_RUN": "1",
        "ENCRYPTION_REQUIRED": "0",
        "API_KEY": KEY,
        "ALLOW_PRIVATE_DOWNLOADS": "1",
        "LOG_SILENT": "1",
    }
    try:
        with Stack("api", env) as stack:
            stack.wait_http("/readyz", headers=AUTH)
            started = time.perf_counter()
            subprocess.run(
                [
                    "curl",
                    "-sS",
                    "-o",
                    os.path.join(scratch, "curl.bin"),
                    f"{server.url}/file/big.safetensors",
                ],
                check=True,
            )
            curl_s = time.perf_counter() - started

            item = {"type": "checkpoints", "url": f"{server.url}/file/big.safetensors", "sha256": digest}
            started = time.perf_counter()
            result = requests.post(
                stack.url + "/download", json={"items": [item], "wait": True}, headers=AUTH, timeout=900
            ).json()
            ours_s = time.perf_counter() - started
            assert result["downloads"][0]["state"] == "done", result
            print(f"curl -o                 {curl_s:6.2f} s  {size / curl_s / 1e6:7.1f} MB/s")
            print(f"/download (sha256 on)   {ours_s:6.2f} s  {size / ours_s / 1e6:7.1f} MB/s")
            print(f"ratio /download : curl = {ours_s / curl_s:.2f} ({args.mib} MiB, loopback)")

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
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
