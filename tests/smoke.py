"""`make smoke`: both launch modes answer encrypted DRY_RUN requests, end to end.

Starts the real entrypoint -> supervisord -> gunicorn / runpod worker with a key made for the
run, sends the same payloads to each mode, exits non-zero on the first failure, and stops
everything it started.
"""

from __future__ import annotations

import sys

import requests

from client.envelope_client import open_answer, seal_request
from tests.stack import Stack

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "smoke"}},
}


def check(label: str, ok: bool, detail: object = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {label} {detail if not ok else ''}".rstrip(), flush=True)
    if not ok:
        raise SystemExit(1)


def payloads(public_key: str):
    """(label, body to send, ephemeral key or None, expectation on the opened answer)."""
    sealed, ephemeral = seal_request({"workflow": WORKFLOW}, public_key)
    tampered, _ = seal_request({"workflow": WORKFLOW}, public_key)
    tampered["ciphertext"] = tampered["ciphertext"][:-8] + "AAAAAAA="
    return [
        (
            "encrypted run opens",
            sealed,
            ephemeral,
            lambda r: r.get("status") == "ok" and r.get("dry_run") is True,
        ),
        (
            "plaintext refused",
            {"workflow": WORKFLOW},
            None,
            lambda r: r.get("error", "").startswith("encryption_required"),
        ),
        ("tampered refused", tampered, None, lambda r: r.get("error", "").startswith("invalid ciphertext")),
    ]


def smoke_api() -> None:
    with Stack("api", {"ENCRYPTION_REQUIRED": "1"}) as stack:
        stack.wait_http("/healthz")
        health = requests.get(stack.url + "/healthz", timeout=5).json()
        check(
            "api /healthz",
            health.get("ok") is True and health["server_public_key_b64"] == stack.public_key,
            health,
        )
        for label, body, ephemeral, expect in payloads(stack.public_key):
            answer = requests.post(stack.url + "/run", json=body, timeout=30).json()
            result = open_answer(answer, ephemeral, stack.public_key) if ephemeral else answer
            check(f"api {label}", expect(result), result)


def smoke_serverless() -> None:
    with Stack("serverless", {"ENCRYPTION_REQUIRED": "1"}) as stack:
        stack.wait_http("/v2/LOCAL/health")
        for label, body, ephemeral, expect in payloads(stack.public_key):
            job = requests.post(stack.url + "/v2/LOCAL/runsync", json={"input": body}, timeout=60).json()
            result = (
                job.get("output") if job.get("status") == "COMPLETED" else {"error": job.get("error", "")}
            )
            if ephemeral:
                result = open_answer(result, ephemeral, stack.public_key)
            check(f"serverless {label}", expect(result), job)


def main() -> int:
    smoke_api()
    smoke_serverless()
    print("smoke passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
