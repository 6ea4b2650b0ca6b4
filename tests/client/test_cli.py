"""The client CLI and the seed's encrypted-run recipe against a live pod and the local queue."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from tests.stack import ROOT, Stack
from tests.workflows import empty_image, invert_upload, png_b64, with_knob

KEY = "cli-key"


@pytest.fixture(scope="module")
def pod():
    stack = Stack("api", {"DRY_RUN": "0", "API_KEY": KEY}).ready()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def serverless():
    stack = Stack("serverless", {"DRY_RUN": "0", "API_KEY": KEY}).ready()
    yield stack
    stack.stop()


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def workflow_file(tmp_path, workflow):
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(workflow))
    return str(path)


def test_keygen():
    result = cli("keygen")
    lines = result.stdout.splitlines()
    assert (
        result.returncode == 0
        and lines[0].startswith("WORKER_PRIVATE_KEY_B64=")
        and lines[1].startswith("SERVER_PUBLIC_KEY_B64=")
    )


def test_encrypted_run_on_a_pod_with_an_input_image_and_progress(pod, tmp_path):
    red = tmp_path / "red.png"
    red.write_bytes(__import__("base64").b64decode(png_b64(10, 6)))
    workflow = invert_upload("red.png")
    workflow["4"] = {"class_type": "StandinSlow", "inputs": {"image": ["2", 0], "seconds": 2, "steps": 4}}
    workflow["3"]["inputs"]["images"] = ["4", 0]
    result = cli(
        "run",
        workflow_file(tmp_path, workflow),
        "--url",
        pod.url,
        "--api-key",
        KEY,
        "--server-key",
        pod.public_key,
        "--image",
        f"red.png={red}",
        "--out",
        str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stderr
    [path] = result.stdout.split()
    assert Image.open(path).convert("RGB").getpixel((0, 0)) == (0, 255, 255)
    assert "%" in result.stderr and "####" in result.stderr  # an encrypted job's progress: a percentage
    assert "node 4" not in result.stderr


def test_failed_job_exits_1_with_the_code(pod, tmp_path):
    result = cli(
        "run",
        workflow_file(tmp_path, with_knob("StandinFail", message="bad")),
        "--url",
        pod.url,
        "--api-key",
        KEY,
        "--server-key",
        pod.public_key,
    )
    assert result.returncode == 1 and "execution_failed: node 2 (StandinFail): bad" in result.stderr


def test_wrong_api_key_exits_1_with_unauthorized(pod, tmp_path):
    result = cli("run", workflow_file(tmp_path, empty_image()), "--url", pod.url, "--api-key", "nope")
    assert result.returncode == 1 and "unauthorized" in result.stderr


def test_encrypted_run_on_the_local_runpod_queue(serverless, tmp_path):
    result = cli(
        "run",
        workflow_file(tmp_path, with_knob("StandinSlow", color=0xFFFFFF, seconds=2, steps=4)),
        "--endpoint",
        "LOCAL",
        "--runpod-url",
        f"{serverless.url}/v2",
        "--api-key",
        KEY,
        "--server-key",
        serverless.public_key,
        "--out",
        str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stderr
    [path] = result.stdout.split()
    assert Image.open(path).size == (16, 16)
    assert "%" in result.stderr and "node 2" not in result.stderr


def test_runpod_failure_exits_1(serverless, tmp_path):
    target = ("--endpoint", "LOCAL", "--runpod-url", f"{serverless.url}/v2", "--api-key", KEY)
    sealed = cli(
        "run",
        workflow_file(tmp_path, {"nodes": [], "links": []}),
        *target,
        "--server-key",
        serverless.public_key,
    )
    assert sealed.returncode == 1 and "invalid_workflow" in sealed.stderr
    plain = cli("run", workflow_file(tmp_path, empty_image()), *target)
    assert plain.returncode == 1 and "encryption_required" in plain.stderr


def test_seed_recipe_with_the_seed_environment(serverless):
    env = {
        **os.environ,
        "RUNPOD_SERVERLESS": "1",
        "RP_ENDPOINT_ID": "LOCAL",
        "RP_API_KEY": KEY,
        "SERVER_PUBLIC_KEY_B64": serverless.public_key,
        "RUNPOD_ENDPOINT_BASE_URL": f"{serverless.url}/v2",
    }
    result = subprocess.run(
        [sys.executable, "-m", "client.test_encrypted_run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "ok" and summary["outputs"][0]["mime"] == "image/png"
