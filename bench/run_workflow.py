"""A tiny workflow through `/run` against the same calls made directly to the same ComfyUI
stand-in (websocket, POST /prompt, wait for the end, GET /history, GET /view), same run.

Each iteration varies the colour so that nothing is answered from ComfyUI's cache. Reports
medians, p90 and the ratio, plain and encrypted.
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
from tests.stack import Stack
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
    args = parser.parse_args()
    with Stack("api", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "LOG_SILENT": "1"}) as stack:
        stack.wait_http("/readyz", timeout=60)
        comfy_url = f"http://127.0.0.1:{stack.comfy_port}"
        session = requests.Session()
        kinds = {
            "direct ComfyUI (4 calls)": lambda wf: direct(comfy_url, wf, session),
            "/run plain": lambda wf: through_run(stack.url, wf, session, None),
            "/run encrypted": lambda wf: through_run(stack.url, wf, session, stack.public_key),
        }
        samples: dict[str, list[float]] = {name: [] for name in kinds}
        color = 0
        for i in range(args.iterations + 5):
            for name, call in kinds.items():  # interleaved: drift on a shared machine hits all three
                color += 1
                started = time.perf_counter()
                call(empty_image(64, 64, color, prefix="bench"))
                if i >= 5:  # warm-up
                    samples[name].append(time.perf_counter() - started)
        base = statistics.median(samples["direct ComfyUI (4 calls)"])
        for name, values in samples.items():
            print(f"{name:26s} {summary(values)}   ratio {statistics.median(values) / base:5.2f}")
        print(f"({args.iterations} iterations each, EmptyImage 64x64 -> SaveImage, 1 gevent worker)")


if __name__ == "__main__":
    main()
