"""`/download` of a 1 GiB file (sha256 on) against `curl -o` of the same file from the same
loopback server, in the same run; then a resume after the API worker is killed at about half.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
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
    parser.add_argument("--rounds", type=int, default=5)
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
            curl_times, synced_times, our_times = [], [], []
            target = os.path.join(stack.run_dir, "models", "checkpoints", "big.safetensors")

            def with_curl() -> None:
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
                curl_times.append(time.perf_counter() - started)
                fd = os.open(os.path.join(scratch, "curl.bin"), os.O_RDONLY)
                os.fsync(fd)  # what /download does before the rename: the file survives a crash
                os.close(fd)
                synced_times.append(time.perf_counter() - started)

            def with_worker() -> None:
                item = {"type": "checkpoints", "url": f"{server.url}/file/big.safetensors", "sha256": digest}
                started = time.perf_counter()
                result = requests.post(
                    stack.url + "/download", json={"items": [item], "wait": True}, headers=AUTH, timeout=900
                ).json()
                our_times.append(time.perf_counter() - started)
                assert result["downloads"][0]["state"] == "done", result
                os.remove(target)  # as curl overwrites its one file: the same disk use for both

            for round_ in range(args.rounds):  # interleaved, order alternating: drift hits both
                for run in (with_curl, with_worker) if round_ % 2 == 0 else (with_worker, with_curl):
                    os.sync()  # the last transfer's writeback is not the next one's cost
                    run()
            curl_s, ours_s = statistics.median(curl_times), statistics.median(our_times)
            synced_s = statistics.median(synced_times)
            print(f"curl -o                 median {curl_s:6.2f} s  {size / curl_s / 1e6:7.1f} MB/s")
            print(f"curl -o, then fsync     median {synced_s:6.2f} s  {size / synced_s / 1e6:7.1f} MB/s")
            print(f"/download (sha256 on)   median {ours_s:6.2f} s  {size / ours_s / 1e6:7.1f} MB/s")
            print(
                f"speed /download : curl = {curl_s / ours_s:.2f}x, : curl+fsync = {synced_s / ours_s:.2f}x "
                f"({args.mib} MiB, loopback, median of {args.rounds} interleaved rounds, order alternating; target 0.9x)"
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
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
