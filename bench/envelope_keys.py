"""The cost of holding several worker keys: opening an envelope without `kid` against three keys
where the key it was sealed to is tried last, against one key; and with `kid` against three.
Same process, interleaved, median of many; the envelope carries a small workflow. Target: at
most +0.2 ms without `kid`.
"""

from __future__ import annotations

import statistics
import time

from client.envelope_client import seal_request
from services.jobs import envelopes
from services.jobs.envelopes import v1
from tests.workflows import empty_image

ROUNDS = 3000


def timed(body: dict, keyring: envelopes.Keyring) -> float:
    started = time.perf_counter()
    v1.open_request(body, keyring)
    return time.perf_counter() - started


def main() -> None:
    (sealed_to, public), others = envelopes.keypair(), [envelopes.keypair()[0] for _ in range(2)]
    one = envelopes.Keyring.from_keys(sealed_to)
    three_last = envelopes.Keyring.from_keys(*others, sealed_to)  # current and one previous fail first
    request, _ = seal_request({"workflow": empty_image()}, public)
    no_kid = {k: v for k, v in request.items() if k != "kid"}
    runs: dict[str, list[float]] = {"one key": [], "three keys, no kid": [], "three keys, kid": []}
    for _ in range(ROUNDS):
        runs["one key"].append(timed(no_kid, one))
        runs["three keys, no kid"].append(timed(no_kid, three_last))
        runs["three keys, kid"].append(timed(request, three_last))
    medians = {name: 1000 * statistics.median(times) for name, times in runs.items()}
    base = medians["one key"]
    print(f"opening an envelope (small workflow), median of {ROUNDS} interleaved")
    for name, value in medians.items():
        print(f"  {name}: {value:.3f} ms ({value - base:+.3f} ms)")
    extra = medians["three keys, no kid"] - base
    print(f"target: at most +0.2 ms without kid -> {'met' if extra <= 0.2 else 'NOT met'} ({extra:+.3f} ms)")


if __name__ == "__main__":
    main()
