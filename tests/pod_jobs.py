"""A pod's async jobs as a client sees them: submit, read, wait for the end."""

import requests

from tests.stack import Stack, wait_until

FINAL = ("completed", "failed", "cancelled")


def submit(pod: Stack, payload: dict) -> str:
    answer = requests.post(pod.url + "/run", params={"async": "1"}, json=payload, timeout=30)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def status(pod: Stack, job_id: str) -> dict:
    return requests.get(pod.url + f"/jobs/{job_id}", timeout=10).json()


def ended(pod: Stack, job_id: str, timeout: float = 60) -> dict:
    wait_until(lambda: status(pod, job_id).get("state") in FINAL, timeout, f"job {job_id} to end")
    return status(pod, job_id)
