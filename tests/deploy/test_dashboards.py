"""The operators' starting points in deploy/ against a live pod: every metric the Grafana
dashboard and the Prometheus alert rules name is one the worker exports, and the fleet stream's
lag the KEDA example scales on rises with queued jobs and falls to 0 once pods take them."""

from __future__ import annotations

import json
import os
import re
import uuid

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.jobs.fleet import GROUP
from services.jobs.metrics import Metrics
from tests.jobs.fleet.test_store import DRY_JOB, shared_jobs
from tests.stack import ROOT, Stack, wait_until

DEPLOY = os.path.join(ROOT, "deploy")
NAME = re.compile(r"\bcomfy_worker_[a-z_]+")


def named_in_dashboard() -> set[str]:
    with open(os.path.join(DEPLOY, "grafana-dashboard.json"), encoding="utf-8") as handle:
        dashboard = json.load(handle)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return {name for expr in exprs for name in NAME.findall(expr)}


def named_in_rules() -> set[str]:
    with open(os.path.join(DEPLOY, "prometheus-rules.yaml"), encoding="utf-8") as handle:
        rules = [r for group in yaml.safe_load(handle)["groups"] for r in group["rules"]]
    assert all({"alert", "expr", "labels", "annotations"} <= set(r) for r in rules)
    return {name for rule in rules for name in NAME.findall(rule["expr"])}


def exported(page: str) -> set[str]:
    """Every series name the page declares, as PromQL names it (a counter's `_total`, a
    histogram's `_bucket`, `_sum`, `_count`), samples or not yet."""
    names = set()
    for family in text_string_to_metric_families(page):
        names.add(family.name)
        names |= {sample.name for sample in family.samples}
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


PREFIX = f"deploy-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def fleet_pod(redis_server):
    env = {"ENCRYPTION_REQUIRED": "0", "STATE_URL": redis_server.url, "STATE_PREFIX": PREFIX}
    with Stack("api", env).ready() as pod:
        yield pod


def metric(pod, name: str) -> float | None:
    page = requests.get(pod.url + "/metrics", timeout=10).text
    found = re.search(rf"^{name} (\S+)$", page, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_every_metric_of_the_dashboard_and_the_alert_rules_is_exported(fleet_pod):
    page = requests.get(fleet_pod.url + "/metrics", timeout=10).text
    wanted = named_in_dashboard() | named_in_rules()
    assert len(wanted) >= 15
    assert wanted - exported(page) == set()


def test_the_stream_lag_keda_reads_rises_with_queued_jobs_and_returns_to_0(redis_server):
    """KEDA's redis-streams scaler reads XINFO GROUPS' `lag` of the worker's stream and group
    (docs/deploy.md); pods export the same as comfy_worker_fleet_queue_lag. Jobs submitted
    while no pod takes any wait in the stream; a pod that comes takes them."""
    prefix = f"keda-{uuid.uuid4().hex[:8]}"
    client = redis_server.client()

    def lag() -> int:
        (group,) = [g for g in client.xinfo_groups(f"{prefix}:jobs") if g["name"] == GROUP.encode()]
        return group["lag"]

    submitter = shared_jobs(redis_server, prefix, lambda own: 0)  # a pod with no free ComfyUI
    exporter = Metrics(submitter.settings, lambda: [], lambda: 0)
    exporter.watch_shared(submitter)
    assert lag() == 0
    jobs = [submitter.start(DRY_JOB) for _ in range(3)]
    assert lag() == 3 and "comfy_worker_fleet_queue_lag 3.0" in exporter.render().decode()
    env = {"ENCRYPTION_REQUIRED": "0", "STATE_URL": redis_server.url, "STATE_PREFIX": prefix}
    with Stack("api", env).ready() as pod:
        wait_until(
            lambda: all(submitter.get(j.id).state == "completed" for j in jobs), 30, "the pod to run them"
        )
        assert lag() == 0 and metric(pod, "comfy_worker_fleet_queue_lag") == 0
        assert "comfy_worker_fleet_queue_lag 0.0" in exporter.render().decode()
