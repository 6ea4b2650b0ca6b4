"""One gevent worker serves many requests at once: a long /run does not hold up the others."""

import threading

import requests

from tests.stack import Stack, wait_until
from tests.workflows import with_knob


def test_many_requests_are_answered_while_long_jobs_run():
    stack = Stack("api", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0"}).start(wait_for=("api", "comfy"))
    try:
        stack.wait_http("/readyz")
        long_answers = []

        def long_job(color):
            workflow = with_knob("StandinSlow", color=color, seconds=3, steps=6)
            long_answers.append(
                requests.post(stack.url + "/run", json={"workflow": workflow}, timeout=120).status_code
            )

        long_jobs = [threading.Thread(target=long_job, args=(c,)) for c in (11, 12)]
        for thread in long_jobs:
            thread.start()
        queue = f"http://127.0.0.1:{stack.comfy_port}/queue"
        wait_until(
            lambda: requests.get(queue, timeout=5).json()["queue_running"] != [], 20, "a long job to run"
        )

        quick = []

        def quick_request(index):
            if index % 2:
                quick.append(requests.get(stack.url + "/readyz", timeout=30).status_code)
            else:
                quick.append(
                    requests.post(stack.url + "/run", json={"nodes": [], "links": []}, timeout=30).status_code
                )

        quick_threads = [threading.Thread(target=quick_request, args=(i,)) for i in range(30)]
        for thread in quick_threads:
            thread.start()
        for thread in quick_threads:
            thread.join(60)
        assert sorted(set(quick)) == [200, 400] and len(quick) == 30
        assert all(thread.is_alive() for thread in long_jobs)  # the quick ones did not wait for them
        for thread in long_jobs:
            thread.join(120)
        assert long_answers == [200, 200]
    finally:
        stack.stop()
