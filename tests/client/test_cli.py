"""The `comfy-worker` command as a user installs it (the wheel of `make dist` in a fresh virtual
environment, run from a folder that is not the checkout), against a live pod and the local
queue; and the seed's encrypted-run recipe."""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from client import envelope_client
from client.cli import build_payload
from services.core import config
from services.jobs import envelopes
from tests.file_server import FileServer
from tests.stack import ROOT, Stack, copy_checkout, free_port
from tests.workflows import empty_image, invert_upload, png_b64, with_knob

KEY = "cli-key"
TEMPLATES = os.path.join(ROOT, "templates")


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    work = tmp_path_factory.mktemp("client")
    source, venv, elsewhere = work / "source", work / "venv", work / "elsewhere"
    copy_checkout(str(source))
    made = subprocess.run(
        ["make", "-C", str(source), "dist", f"VENV={ROOT}/.venv"], capture_output=True, text=True, timeout=600
    )
    assert made.returncode == 0, made.stdout + made.stderr
    [wheel] = glob.glob(str(source / "dist" / "comfy_worker-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q"]
    subprocess.run([*pip, wheel, "-c", os.path.join(ROOT, "requirements.lock")], check=True, timeout=600)
    elsewhere.mkdir()

    def run(*args, env=None):
        return subprocess.run(
            [str(venv / "bin" / "comfy-worker"), *args],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    return run


@pytest.fixture(scope="module")
def pod():
    env = {"DRY_RUN": "0", "API_KEY": KEY, "ALLOW_PRIVATE_DOWNLOADS": "1", "TEMPLATES_DIR": TEMPLATES}
    stack = Stack("api", env).ready()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def serverless():
    stack = Stack("serverless", {"DRY_RUN": "0", "API_KEY": KEY}).ready()
    yield stack
    stack.stop()


def workflow_file(tmp_path, workflow):
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(workflow))
    return str(path)


def test_a_key_the_pod_rotated_away_is_replaced_by_its_current_one(cli, pod, tmp_path):
    stale = envelopes.keypair()[1]  # a key the pod never held, as a client's cache after step 3
    workflow = workflow_file(tmp_path, empty_image(6, 4, 0x00FF00))
    out = str(tmp_path / "rotated")
    result = cli(
        "run", workflow, "--url", pod.url, "--api-key", KEY, "--server-key", stale, "--out", out, "--quiet"
    )
    assert result.returncode == 0, result.stderr
    [path] = result.stdout.split()
    assert Image.open(path).convert("RGB").getpixel((0, 0)) == (0, 255, 0)


def test_a_webhook_goes_into_the_payload_so_an_encrypted_job_seals_it(tmp_path):
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(empty_image()))
    payload = build_payload(str(path), [], None, webhook="https://hooks.example/job?token=t")
    assert payload["webhook"] == "https://hooks.example/job?token=t"
    assert "webhook" not in build_payload(str(path), [], None)


def test_keygen(cli):
    result = cli("keygen")
    lines = result.stdout.splitlines()
    assert (
        result.returncode == 0
        and lines[0].startswith("WORKER_PRIVATE_KEY_B64=")
        and lines[1].startswith("SERVER_PUBLIC_KEY_B64=")
    )
    [key_id] = [line.removeprefix("KEY_ID=") for line in lines if line.startswith("KEY_ID=")]
    assert key_id == envelope_client.key_id(lines[1].removeprefix("SERVER_PUBLIC_KEY_B64="))
    [secret] = [line.removeprefix("WEBHOOK_SECRET=") for line in lines if line.startswith("WEBHOOK_SECRET=")]
    assert config.load({"ENCRYPTION_REQUIRED": "0", "WEBHOOK_SECRET": secret}).webhook_secret == secret


def test_encrypted_run_on_a_pod_with_an_input_image_and_progress(cli, pod, tmp_path):
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


def test_failed_job_exits_1_with_the_code(cli, pod, tmp_path):
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


def test_a_run_brings_its_model_by_url_once(cli, pod, tmp_path):
    data = os.urandom(4096)
    server = FileServer()
    server.files = {"style.safetensors": data}
    spec = f"embeddings={server.url}/file/style.safetensors#{hashlib.sha256(data).hexdigest()}"
    args = ["--url", pod.url, "--api-key", KEY, "--server-key", pod.public_key, "--model", spec]
    try:
        for _ in range(2):
            result = cli("run", workflow_file(tmp_path, empty_image()), *args, "--out", str(tmp_path / "out"))
            assert result.returncode == 0, result.stderr
    finally:
        server.stop()
    assert len(server.requests) == 1  # the second run found it on the volume
    with open(os.path.join(pod.run_dir, "models", "embeddings", "style.safetensors"), "rb") as handle:
        assert handle.read() == data
    wrong = cli("run", workflow_file(tmp_path, empty_image()), "--url", pod.url, "--model", "loras")
    assert wrong.returncode == 2 and "TYPE=URL" in wrong.stderr


def test_wrong_api_key_exits_1_with_unauthorized(cli, pod, tmp_path):
    result = cli("run", workflow_file(tmp_path, empty_image()), "--url", pod.url, "--api-key", "nope")
    assert result.returncode == 1 and "unauthorized" in result.stderr


def test_encrypted_run_on_the_local_runpod_queue(cli, serverless, tmp_path):
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


def test_runpod_failure_exits_1(cli, serverless, tmp_path):
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


def test_the_command_only_from_the_wheel_has_no_checkout_to_lean_on(cli):
    result = cli("--help")
    assert result.returncode == 0 and "comfy-worker" in result.stdout
    for command in ("run", "download", "models", "keygen", "templates"):
        assert command in result.stdout
    checked = cli("templates", "check", TEMPLATES)
    assert checked.returncode == 2 and "runs where the worker is installed" in checked.stderr


def test_an_encrypted_template_run_with_parameters_and_an_image_file(cli, pod, tmp_path):
    picture = tmp_path / "in.png"
    picture.write_bytes(__import__("base64").b64decode(png_b64(30, 20)))
    out = str(tmp_path / "webp")
    result = cli(
        "run",
        *("--template", "soft-webp", "-p", f"image=@{picture}", "-p", "width=24", "-p", "height=16"),
        *("-p", "lossless=true", "-p", "effort=fastest"),
        *("--url", pod.url, "--api-key", KEY, "--server-key", pod.public_key, "--out", out, "--quiet"),
    )
    assert result.returncode == 0, result.stderr
    [path] = result.stdout.split()
    assert path.endswith(".webp") and Image.open(path).size == (24, 16)
    used = json.loads(result.stderr.strip().splitlines()[-1])["params"]
    assert used["lossless"] is True and used["width"] == 24 and used["effort"] == "fastest"


def test_a_template_run_with_a_bad_parameter_exits_1_naming_it(cli, pod):
    sealed = ("--server-key", pod.public_key, "--quiet")
    result = cli(
        "run", "--template", "noise-card", "-p", "width=5000", "--url", pod.url, "--api-key", KEY, *sealed
    )
    assert result.returncode == 1
    assert "invalid_params: template 'noise-card': width: must be at most 1024 [maximum]" in result.stderr
    usage = cli("run", "--template", "noise-card", "--image", "x.png", "--url", pod.url)
    assert usage.returncode == 2 and "-p NAME=@PATH" in usage.stderr


def test_templates_check_says_a_line_per_template_where_the_worker_is(pod, tmp_path):
    """Run from the checkout (the image has the same code): the examples pass, a template that
    widens a bound ComfyUI declares is named with why, and no ComfyUI is exit 2."""
    folder = tmp_path / "templates"
    shutil.copytree(TEMPLATES, folder)
    spec = json.loads((folder / "noise-card" / "template.json").read_text())
    spec["params"]["width"]["min"] = 0
    shutil.copytree(folder / "noise-card", folder / "wide")
    (folder / "wide" / "template.json").write_text(json.dumps(spec))
    command = [sys.executable, "-m", "client.cli", "templates", "check", str(folder)]
    comfy = f"http://127.0.0.1:{pod.comfy_port}"
    result = subprocess.run(
        [*command, "--comfy", comfy], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        "ok        noise-card: 5 parameters",
        "ok        soft-webp: 9 parameters",
        "rejected  wide: parameter 'width': min 0 is outside ComfyUI's min 1 of EmptyImage.width",
    ]
    nobody = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [*command, "--comfy", nobody], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and f"no ComfyUI answers at {nobody}" in result.stderr


def test_download_then_models_on_a_pod(cli, pod):
    server = FileServer()
    server.files = {"tiny.safetensors": b"weights" * 1000}
    try:
        digest = hashlib.sha256(server.files["tiny.safetensors"]).hexdigest()
        target = ("--url", pod.url, "--api-key", KEY)
        url = f"{server.url}/file/tiny.safetensors"
        fetched = cli("download", *target, "--type", "loras", "--from", url, "--sha256", digest)
        assert fetched.returncode == 0, fetched.stderr
        assert fetched.stdout.strip() == "loras/tiny.safetensors done"
        listed = cli("models", *target, "--type", "loras")
        assert listed.returncode == 0 and listed.stdout.splitlines() == ["loras/tiny.safetensors\t7000"]
        wrong = cli("download", *target, "--type", "vae", "--from", url, "--sha256", "0" * 64)
        assert wrong.returncode == 1 and "checksum_mismatch" in wrong.stderr
    finally:
        server.stop()
