"""A tiny workflow through `/run` against the same calls made directly to the same ComfyUI
(websocket, POST /prompt, wait for the end, GET /history, GET /view), same run, for each
backend there is: the real ComfyUI (COMFYUI_DIR/COMFY_PYTHON or .comfyui/, as make test-real)
and the stand-in.

Each iteration varies the colour so that nothing is answered from ComfyUI's cache. Reports
medians, p90, the ratio and the difference in ms, plain and encrypted; targets: +2 ms and 1.3x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

import requests
import websocket

from client.envelope_client import open_answer, seal_request
from tests.stack import STANDIN, Backend, Stack, installed_real_backend
from tests.workflows import empty_image


def direct(comfy_url: str, workflow: dict, session: requests.Session) -> None:
    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(
        comfy_url.replace("http", "ws") + f"/ws?clientId={client_id}", timeout=30
    )
    prompt_id = session.post(
        comfy_url + "/prompt", json={"prompt": workflow, "client_id": client_id}, timeout=30
    ).json()["prompt_id"]
    while True:
        raw = ws.recv()
        if isinstance(raw, str):
            message = json.loads(raw)
            if (
                message["type"] == "executing"
                and message["data"].get("prompt_id") == prompt_id
                and message["data"]["node"] is None
            ):
                break
    ws.close()
    entry = session.get(comfy_url + f"/history/{prompt_id}", timeout=30).json()[prompt_id]
    image = entry["outputs"]["2"]["images"][0]
    assert session.get(comfy_url + "/view", params=image, timeout=30).status_code == 200


def settle(comfy_url: str, session: requests.Session) -> None:
    """Untimed: wait for the worker's clean-up of the last job (it owns ComfyUI's history and
    output folder, and would sweep a direct prompt's files)."""
    for _ in range(200):
        if session.get(comfy_url + "/history", timeout=30).json() == {}:
            return
        time.sleep(0.005)


def through_run(url: str, workflow: dict, session: requests.Session, public_key: str | None) -> None:
    body, ephemeral = (
        seal_request({"workflow": workflow}, public_key) if public_key else ({"workflow": workflow}, None)
    )
    answer = session.post(url + "/run", json=body, timeout=60).json()
    result = open_answer(answer, ephemeral, public_key) if ephemeral else answer
    assert result["status"] == "ok" and result["outputs"], result


def summary(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    return f"median {statistics.median(ms):6.2f} ms   p90 {ms[int(len(ms) * 0.9) - 1]:6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--backend", choices=["real", "standin", "both"], default="both")
    args = parser.parse_args()
    backends = []
    real = installed_real_backend(args.backend == "real") if args.backend != "standin" else None
    if real is not None:
        backends.append(real)
    if args.backend in ("standin", "both"):
        backends.append(STANDIN)
    for backend in backends:
        measure(backend, args.iterations)


def measure(backend: Backend, iterations: int) -> None:
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "LOG_SILENT": "1"}
    with Stack("api", env, backend=backend) as stack:
        stack.wait_http("/readyz", timeout=180)
        comfy_url = f"http://127.0.0.1:{stack.comfy_port}"
        session = requests.Session()
        kinds = {
            "direct ComfyUI (4 calls)": lambda wf: direct(comfy_url, wf, session),
            "/run plain": lambda wf: through_run(stack.url, wf, session, None),
            "/run encrypted": lambda wf: through_run(stack.url, wf, session, stack.public_key),
        }
        samples: dict[str, list[float]] = {name: [] for name in kinds}
        color = 0
        for i in range(iterations + 5):
            for name, call in kinds.items():  # interleaved: drift on a shared machine hits all three
                color += 1
                settle(comfy_url, session)
                started = time.perf_counter()
                call(empty_image(64, 64, color, prefix="bench"))
                if i >= 5:  # warm-up
                    samples[name].append(time.perf_counter() - started)
        base = statistics.median(samples["direct ComfyUI (4 calls)"])
        print(f"backend: {backend.name} ComfyUI")
        for name, values in samples.items():
            median = statistics.median(values)
            extra = (median - base) * 1000
            print(f"  {name:26s} {summary(values)}   ratio {median / base:5.2f}   {extra:+6.2f} ms")
        print(f"  ({iterations} iterations each, EmptyImage 64x64 -> SaveImage, 1 gevent worker)")


if __name__ == "__main__":
    main()
