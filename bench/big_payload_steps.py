"""Where an encrypted 12.6 MB round trip spends the time bench/big_payload.py measures as a
whole: each step the client and the worker do beside ComfyUI, timed alone in this process with
the project's own functions (median of a few rounds, fresh random pixels each), against the
baseline the direct ComfyUI round trip also pays: writing the input file and reading the output.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable

from bench.big_payload import fresh_png, workflow
from client.envelope_client import b64decode, b64encode, envelope_json, open_answer, read_answer, seal_request
from services.core import json_text
from services.core.codec import b64, unb64
from services.jobs import envelopes
from services.jobs.envelopes import v1

ROUNDS = 5


def timed(step: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    value = step()
    return time.perf_counter() - started, value


def one_round(
    note: Callable[[str, Callable[[], object]], object], folder: str, public: str, keyring: envelopes.Keyring
) -> int:
    """Each step of one round trip, in order; returns the PNG's size."""
    png = fresh_png()
    image = note("client: base64 of the image", lambda: b64encode(png).decode())
    payload = {"workflow": workflow("in.png"), "images": [{"name": "in.png", "image": image}]}
    request, ephemeral = note("client: seal the payload", lambda: seal_request(payload, public))
    body = note("client: envelope to JSON", lambda: envelope_json(request))
    parsed = note("worker: JSON of the request body", lambda: json_text.loads(body))
    opened = note("worker: open the envelope (b64, decrypt, JSON)", lambda: v1.open_request(parsed, keyring))
    data = note("worker: base64 of the input image", lambda: unb64(opened.payload["images"][0]["image"]))
    path = os.path.join(folder, "in.png")
    note("both: write the input file", lambda: _write(path, data))
    output = note("both: read the output file", lambda: _read(path))
    encoded = note("worker: base64 of the output", lambda: b64(output))
    result = {
        "status": "ok",
        "outputs": [{"node_id": "2", "mime": "image/png", "size": len(output), "data": encoded}],
    }
    sealed = note("worker: seal the result (JSON, encrypt, b64)", lambda: v1.seal(result, opened.box))
    text = note("worker: JSON of the answer", lambda: json_text.dumps(sealed).encode())
    answer = note("client: JSON of the answer", lambda: read_answer(text))
    opened_answer = note("client: open the answer", lambda: open_answer(answer, ephemeral, public))
    note("client: base64 of the output", lambda: b64decode(opened_answer["outputs"][0]["data"]))
    os.remove(path)
    return len(png)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def main() -> None:
    private, public = envelopes.keypair()
    keyring = envelopes.Keyring.from_keys(private)
    steps: dict[str, list[float]] = {}

    def note(name: str, step: Callable[[], object]) -> object:
        seconds, value = timed(step)
        steps.setdefault(name, []).append(seconds)
        return value

    folder = tempfile.mkdtemp(prefix="big-steps-")
    size = 0
    for _ in range(ROUNDS + 1):
        size = one_round(note, folder, public, keyring)
    os.rmdir(folder)
    print(f"an encrypted {size / 1e6:.1f} MB PNG in and out, each step alone, median of {ROUNDS}")
    total = 0.0
    for name, values in steps.items():
        median = 1000 * statistics.median(values[1:])
        total += 0.0 if name.startswith("both:") else median
        print(f"  {name:50s} {median:7.1f} ms")
    print(f"  {'steps the direct round trip does not pay':50s} {total:7.1f} ms")


if __name__ == "__main__":
    main()
