"""What the key check costs a request: GET /ping (any known key) through the pod API's Flask
app in this process, with API_KEY alone (one compare, the baseline), and with API_KEYS_FILE of 1
and of 1,000 named keys (a stat of the file and a SHA-256 per request), and with no key at all.
Rounds alternate between the apps, so drift hits them alike; medians per request.
Target (issue 43): 1 and 1,000 keys within +0.1 ms of the baseline, and of each other.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from services.api.app import create_app
from services.core import config
from services.jobs import access

ROUNDS, PER_ROUND = 30, 300


def app(env: dict[str, str]):
    settings = config.load({"LAUNCH_MODE": "api", "DRY_RUN": "1", "ENCRYPTION_REQUIRED": "0", **env})
    return create_app(settings).test_client()


def keys_file(folder: str, count: int, token: str) -> str:
    path = os.path.join(folder, f"keys-{count}")
    lines = [f"k{n} sha256:{access.hash_of(access.new_token())} jobs\n" for n in range(count - 1)]
    lines.append(f"mine sha256:{access.hash_of(token)} jobs,metrics\n")
    with open(path, "w") as file:
        file.writelines(lines)
    return path


def main() -> None:
    folder, token = tempfile.mkdtemp(prefix="bench-access-"), access.new_token()
    apps = {
        "API_KEY alone (baseline)": (app({"API_KEY": token}), token),
        "no key (open)": (app({}), None),
        "1 named key": (app({"API_KEYS_FILE": keys_file(folder, 1, token)}), token),
        "1,000 named keys": (app({"API_KEYS_FILE": keys_file(folder, 1000, token)}), token),
    }
    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(ROUNDS):
        for name, (client, key) in apps.items():
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            started = time.perf_counter()
            for _ in range(PER_ROUND):
                assert client.get("/ping", headers=headers).status_code == 200
            samples[name].append((time.perf_counter() - started) / PER_ROUND * 1000)
    base = statistics.median(samples["API_KEY alone (baseline)"])
    print(f"GET /ping in-process, {ROUNDS} rounds x {PER_ROUND} requests, median ms per request:")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"  {name:26s} {median:.4f} ms  ({median - base:+.4f} ms vs API_KEY alone)")
    one, thousand = (statistics.median(samples[n]) for n in ("1 named key", "1,000 named keys"))
    print(f"  1,000 keys vs 1 key: {thousand - one:+.4f} ms (target: within +0.1 ms)")


if __name__ == "__main__":
    main()
