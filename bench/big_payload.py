"""A big image in and out: a random 2048x2048 PNG (~12.6 MB) through LoadImage -> SaveImage,
`/run` plain (JSON, and parts: bytes) and encrypted (envelope v1, JSON, and v2: bytes) against
the same done directly to the same ComfyUI (upload with POST /upload/image, websocket, POST
/prompt, wait for the end, GET /history, GET /view), same run, interleaved. Fresh pixels for
every call: ComfyUI answers a graph it has seen from its cache. The client's own work is timed
too (the project's client helpers): base64 of the image, sealing and opening, decoding the
output. Also the API process's peak memory during a job, above what it held before it, in
multiples of the payload. Targets: encrypted at most 1.25x, plain at most 1.15x (the bytes
forms; RunPod's queue, async and fleet jobs take JSON).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
import uuid

import requests
import websocket
from PIL import Image

from bench.run_workflow import settle
from client.envelope_client import (
    V2_MEDIA_TYPE,
    V2_PLAIN_MEDIA_TYPE,
    b64decode,
    b64encode_as_string,
    envelope_json,
    open_answer,
    open_answer_v2,
    payload_json,
    plain_request_v2,
    read_answer,
    seal_request,
    seal_request_v2,
)
from tests.stack import STANDIN, Backend, Stack, installed_real_backend

SIDE = 2048
JSON = {"Content-Type": "application/json"}


def fresh_png() -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (SIDE, SIDE), os.urandom(SIDE * SIDE * 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def workflow(name: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "big"}},
    }


def direct(comfy_url: str, png: bytes, session: requests.Session) -> bytes:
    name = f"{uuid.uuid4().hex}.png"
    files = {"image": (name, png, "image/png")}
    uploaded = session.post(
        comfy_url + "/upload/image", files=files, data={"type": "input", "overwrite": "true"}, timeout=60
    ).json()
    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(
        comfy_url.replace("http", "ws") + f"/ws?clientId={client_id}", timeout=60
    )
    prompt_id = session.post(
        comfy_url + "/prompt", json={"prompt": workflow(uploaded["name"]), "client_id": client_id}, timeout=60
    ).json()["prompt_id"]
    while True:
        raw = ws.recv()
        if isinstance(raw, str):
            data = json.loads(raw)["data"]
            if data.get("prompt_id") == prompt_id and data.get("node", "") is None:
                break
    ws.close()
    entry = session.get(comfy_url + f"/history/{prompt_id}", timeout=60).json()[prompt_id]
    image = entry["outputs"]["2"]["images"][0]
    output = session.get(comfy_url + "/view", params=image, timeout=60)
    assert output.status_code == 200
    return output.content


def through_run_v2(url: str, png: bytes, session: requests.Session, public_key: str | None) -> bytes:
    """In bytes: an envelope v2, or plain parts without a key."""
    payload = {"workflow": workflow("in.png"), "images": [{"name": "in.png", "image": png}]}
    if public_key:
        body, ephemeral = seal_request_v2(payload, public_key)
        media_type = V2_MEDIA_TYPE
    else:
        body, ephemeral, media_type = plain_request_v2(payload), None, V2_PLAIN_MEDIA_TYPE
    answer = session.post(url + "/run", data=body, headers={"Content-Type": media_type}, timeout=120)
    result = open_answer_v2(answer.content, ephemeral, public_key or "")
    assert result["status"] == "ok" and result["outputs"], str(result)[:300]
    return result["outputs"][0]["data"]


def through_run(url: str, png: bytes, session: requests.Session, public_key: str | None) -> bytes:
    payload = {
        "workflow": workflow("in.png"),
        "images": [{"name": "in.png", "image": b64encode_as_string(png)}],
    }
    if public_key:
        envelope, ephemeral = seal_request(payload, public_key)
        answer = read_answer(
            session.post(url + "/run", data=envelope_json(envelope), headers=JSON, timeout=120).content
        )
    else:
        answer = read_answer(
            session.post(url + "/run", data=payload_json(payload), headers=JSON, timeout=120).content
        )
        ephemeral = None
    result = open_answer(answer, ephemeral, public_key) if ephemeral else answer
    assert result["status"] == "ok" and result["outputs"], str(result)[:300]
    return b64decode(result["outputs"][0]["data"])


def memory_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--backend", choices=["real", "standin"], default="real")
    args = parser.parse_args()
    backend = installed_real_backend(True) if args.backend == "real" else STANDIN
    measure(backend, args.rounds)


def measure(backend: Backend, rounds: int) -> None:
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "LOG_SILENT": "1"}
    with Stack("api", env, backend=backend) as stack:
        stack.wait_http("/readyz", timeout=180)
        comfy_url = f"http://127.0.0.1:{stack.comfy_port}"
        [worker] = stack.api_processes()[1]
        session = requests.Session()
        kinds = {
            "direct ComfyUI (upload, prompt, view)": lambda png: direct(comfy_url, png, session),
            "/run plain (JSON)": lambda png: through_run(stack.url, png, session, None),
            "/run plain (parts)": lambda png: through_run_v2(stack.url, png, session, None),
            "/run encrypted (envelope v1)": lambda png: through_run(
                stack.url, png, session, stack.public_key
            ),
            "/run encrypted (envelope v2)": lambda png: through_run_v2(
                stack.url, png, session, stack.public_key
            ),
        }
        samples: dict[str, list[float]] = {name: [] for name in kinds}
        peaks: dict[str, list[float]] = {name: [] for name in kinds}
        size = 0
        for round_ in range(rounds + 1):
            for name, call in kinds.items():
                png = fresh_png()
                size = len(png)
                settle(comfy_url, session)
                ours = name != "direct ComfyUI (upload, prompt, view)"
                if ours:
                    with open(f"/proc/{worker}/clear_refs", "w") as handle:
                        handle.write("5")  # resets the peak (VmHWM) to what it holds now
                    before = memory_kb(worker, "VmRSS")
                started = time.perf_counter()
                output = call(png)
                elapsed = time.perf_counter() - started
                assert len(output) > size // 2
                if round_ == 0:
                    continue  # warm-up
                samples[name].append(elapsed)
                if ours:
                    peaks[name].append((memory_kb(worker, "VmHWM") - before) * 1024 / size)
        base = statistics.median(samples["direct ComfyUI (upload, prompt, view)"])
        print(
            f"backend: {backend.name} ComfyUI, a {size / 1e6:.1f} MB PNG in and out, median of {rounds} rounds"
        )
        for name, values in samples.items():
            median = statistics.median(values)
            print(
                f"  {name:38s} median {median * 1000:7.1f} ms   ratio {median / base:5.2f}   "
                f"{(median - base) * 1000:+7.1f} ms"
            )
        print("  API process peak above what it held before the job, in multiples of the payload:")
        for name, values in peaks.items():
            if values:
                print(f"    {name:36s} median {statistics.median(values):4.1f}x, max {max(values):4.1f}x")
        print("  targets: encrypted 1.25x, plain 1.15x")


if __name__ == "__main__":
    main()
