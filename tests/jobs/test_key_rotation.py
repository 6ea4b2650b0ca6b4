"""Rotating the worker key: several keys held, a `kid` in the envelope, the key list on /healthz,
and a rotation rehearsed across two pods on one Redis (real supervisord, gunicorn and PyNaCl)."""

import itertools
import re
import threading
import uuid

import requests

from client.envelope_client import key_id, open_answer, seal_request
from services.jobs import envelopes
from tests.stack import Stack, wait_until
from tests.workflows import empty_image

OLD, OLD_PUBLIC = envelopes.keypair()
NEW, NEW_PUBLIC = envelopes.keypair()
JOB = {"workflow": empty_image(8, 8)}


def keys(private, *previous):
    return {"WORKER_PRIVATE_KEY_B64": private, "WORKER_PREVIOUS_KEYS_B64": ",".join(previous)}


def test_a_pod_with_a_previous_key_lists_both_and_opens_both():
    with Stack("api", keys(NEW, OLD)).ready() as pod:
        health = requests.get(pod.url + "/healthz", timeout=10).json()
        assert health["server_public_key_b64"] == NEW_PUBLIC
        assert health["keys"] == [
            {"kid": key_id(NEW_PUBLIC), "public_key_b64": NEW_PUBLIC, "current": True},
            {"kid": key_id(OLD_PUBLIC), "public_key_b64": OLD_PUBLIC, "current": False},
        ]
        for public in (OLD_PUBLIC, NEW_PUBLIC):
            request, ephemeral = seal_request(JOB, public)
            answer = requests.post(pod.url + "/run", json=request, timeout=30).json()
            assert open_answer(answer, ephemeral, public)["dry_run"] is True
        stranger = seal_request(JOB, envelopes.keypair()[1])[0]
        refused = requests.post(pod.url + "/run", json=stranger, timeout=30)
        assert refused.status_code == 400 and refused.json()["error"].startswith("unknown_key")
        assert key_id(NEW_PUBLIC) in refused.json()["error"]
        assert OLD not in pod.log and NEW not in pod.log


class Client:
    """Encrypted jobs, one after another, to whichever pod answers (a load balancer's view): a
    refused connection or a 503 goes to the next pod. `cached` keeps the key it was given until a
    worker answers unknown_key (then it fetches the key list once and seals again); otherwise it
    fetches the current key before each job."""

    def __init__(self, pods, key, cached):
        self.pods, self.key, self.cached = pods, key, cached
        self.done, self.failed, self.refetched = 0, [], 0
        self.stop = threading.Event()
        self.turn = itertools.count()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            if not self.cached:
                self.key = self.ask("GET", "/healthz").json()["server_public_key_b64"]
            answer, ephemeral, key = self.job()
            if self.cached and answer.get("error", "").startswith("unknown_key"):
                self.refetched += 1
                self.key = self.ask("GET", "/healthz").json()["server_public_key_b64"]
                answer, ephemeral, key = self.job()
            if "ciphertext" in answer and open_answer(answer, ephemeral, key).get("dry_run"):
                self.done += 1
            else:
                self.failed.append(answer)

    def job(self):
        key = self.key
        request, ephemeral = seal_request(JOB, key)
        return self.ask("POST", "/run", json=request).json(), ephemeral, key

    def ask(self, method, path, **kwargs):
        while True:
            pod = self.pods[next(self.turn) % len(self.pods)]
            try:
                answer = requests.request(method, pod.url + path, timeout=30, **kwargs)
            except requests.ConnectionError:
                continue
            if answer.status_code != 503:
                return answer


def opened_by(pod, public):
    page = requests.get(pod.url + "/metrics", timeout=10).text
    found = re.search(rf'comfy_worker_envelopes_opened_total{{kid="{key_id(public)}"}} (\S+)', page)
    return float(found.group(1)) if found else 0.0


def test_a_rehearsed_rotation_across_two_pods_fails_no_job(redis_server):
    fleet = {"STATE_URL": redis_server.url, "STATE_PREFIX": f"rotation-{uuid.uuid4().hex[:8]}"}
    stages = [keys(OLD, NEW), keys(NEW, OLD), keys(NEW)]  # add the new key; make it current; drop the old
    pods = [Stack("api", {**fleet, **keys(OLD)}).start() for _ in range(2)]
    for pod in pods:
        pod.wait_ready()
    clients = [Client(pods, OLD_PUBLIC, cached=True), Client(pods, OLD_PUBLIC, cached=False)]
    stage_of = [0, 0]  # the stage each pod was started in (0: the old key alone)
    opened = [{"old": 0.0, "new": 0.0} for _ in range(len(stages) + 1)]  # by each stage's pods

    def count(index):
        """What a pod opened in its life, read before it stops (a restart starts at zero)."""
        tally = opened[stage_of[index]]
        tally["old"] += opened_by(pods[index], OLD_PUBLIC)
        tally["new"] += opened_by(pods[index], NEW_PUBLIC)

    try:
        for client in clients:
            client.thread.start()
        for number, stage in enumerate(stages, 1):
            for index in range(len(pods)):  # one pod at a time: the other serves meanwhile
                count(index)
                pods[index].stop()
                pods[index], stage_of[index] = Stack("api", {**fleet, **stage}).ready(), number
                done = sum(c.done for c in clients)
                wait_until(lambda d=done: sum(c.done for c in clients) >= d + 6, 60, "jobs on the new pod")
        for index in range(len(pods)):
            count(index)
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.thread.join(60)
        for pod in pods:
            pod.stop()
    assert [client.failed for client in clients] == [[], []]
    assert all(client.done > 10 for client in clients)
    assert clients[0].refetched == 1  # the cached client learnt of the new key once
    # across the rotation: the old key alone; still current; both (the fetching client moved to
    # the new key, the caching one not yet); the new key alone, which the caching one now uses
    assert opened[0]["old"] > 0 and opened[1]["old"] > 0
    assert opened[2]["old"] > 0 and opened[2]["new"] > 0
    assert opened[3]["new"] > 0 and opened[3]["old"] == 0
