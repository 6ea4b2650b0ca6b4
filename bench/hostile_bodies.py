"""What the worst bodies at the body limit (MAX_REQUEST_MB, 64 MB) cost the pod's API process:
its peak resident memory while answering each, above what it held before, against an ordinary
body of the same size in the same run (plain parts carrying one ~60 MB image, which DRY_RUN
checks and answers). A DRY_RUN pod with the real gunicorn and gevent; nothing of ComfyUI.

Hostile bodies: one attachment named 200 times (2 GB before issue 40), 64 MB of empty parts,
1,024 attachments each named once (the most a body may carry), a v1 envelope of 64 MB that does
not open, and JSON of 64 MB made of empty lists or of numbers (JSON's own expansion, the same
for every JSON reader of the worker).
"""

from __future__ import annotations

import json
import os
import struct

import requests

from bench.big_payload import memory_kb
from services.jobs import envelopes
from services.jobs.envelopes import v2
from tests.stack import Stack

LIMIT_MB = 64
WORKFLOW = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}}
PNG_HEAD = b"\x89PNG\r\n\x1a\n"


def parts(head: dict, *attachments: bytes) -> bytes:
    chunks = (json.dumps(head).encode(), *attachments)
    return v2.PLAIN_MAGIC + b"".join(struct.pack(">Q", len(c)) + c for c in chunks)


def bodies() -> dict[str, tuple[bytes, str]]:
    room = LIMIT_MB * 2**20 - 64 * 1024
    image = PNG_HEAD + os.urandom(room - 4096)
    ten = PNG_HEAD + os.urandom(10 * 2**20)
    each = PNG_HEAD + os.urandom(room // 1024 - 1024)
    named = [{"name": f"{n}.png", "image": {"attachment": n}} for n in range(1024)]
    refs = [{"name": f"{n}.png", "image": {"attachment": 0}} for n in range(200)]
    empty_lists = (
        b'{"workflow": {"1": {"class_type": "X", "inputs": {"a": [' + b"[]," * (room // 3) + b"[]]}}}}"
    )
    numbers = b'{"workflow": {"1": {"class_type": "X", "inputs": {"a": [' + b"1.5," * (room // 4) + b"1]}}}}"
    v1 = {"encrypted": True, "epk": "A" * 44, "nonce": "A" * 32, "ciphertext": "A" * (room - 200)}
    parts_type = envelopes.PLAIN_MEDIA_TYPE
    return {
        "baseline: one ~60 MB image in parts": (
            parts({"workflow": WORKFLOW, "images": [named[0]]}, image),
            parts_type,
        ),
        "a 10 MB attachment named 200 times": (
            parts({"workflow": WORKFLOW, "images": refs}, ten),
            parts_type,
        ),
        "64 MB of empty parts": (v2.PLAIN_MAGIC + bytes(room), parts_type),
        "1,024 attachments, each named once": (
            parts({"workflow": WORKFLOW, "images": named}, *[each] * 1024),
            parts_type,
        ),
        "a 64 MB v1 envelope that does not open": (json.dumps(v1).encode(), "application/json"),
        "64 MB of JSON empty lists": (empty_lists, "application/json"),
        "64 MB of JSON numbers (1.5,1.5,...)": (numbers, "application/json"),
    }


def main() -> None:
    env = {"ENCRYPTION_REQUIRED": "0", "LOG_SILENT": "1", "MAX_REQUEST_MB": str(LIMIT_MB)}
    with Stack("api", env).ready() as stack:
        [worker] = stack.api_processes()[1]
        session = requests.Session()
        results = {}
        for name, (body, content_type) in bodies().items():
            with open(f"/proc/{worker}/clear_refs", "w") as handle:
                handle.write("5")  # resets the peak (VmHWM) to what it holds now
            before = memory_kb(worker, "VmRSS")
            answer = session.post(
                stack.url + "/run", data=body, headers={"Content-Type": content_type}, timeout=300
            )
            peak = (memory_kb(worker, "VmHWM") - before) * 1024
            error = (
                answer.json().get("error", "")
                if answer.headers["Content-Type"].startswith("application/json")
                else ""
            )
            results[name] = (len(body), peak, answer.status_code, error.split(":")[0])
        base = results["baseline: one ~60 MB image in parts"][1]
        print(f"API process peak above its resident memory before the request (body limit {LIMIT_MB} MB):")
        for name, (size, peak, status, code) in results.items():
            print(
                f"  {name:40s} body {size / 2**20:5.1f} MiB  peak +{peak / 2**20:7.1f} MiB "
                f"({peak / size:4.1f}x the body, {peak / base:4.2f}x baseline)  -> {status} {code}"
            )


if __name__ == "__main__":
    main()
