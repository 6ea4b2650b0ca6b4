"""Templates through the live worker (the stand-in in make test, the real ComfyUI in make test-real):
the repository's two examples and a few of the tests' own, on a pod and on the serverless local
queue, plain and encrypted."""

import base64
import io
import json
import os
import re
import shutil

import pytest
import requests
from PIL import Image

from client.envelope_client import open_answer, seal_request
from tests.jobs.templates.test_loading import EXAMPLES, renumbered, write
from tests.pod_jobs import ended
from tests.stack import STANDIN, Stack, wait_until
from tests.workflows import png_b64

CHECKPOINT_WORKFLOW = {
    "4": {
        "class_type": "CheckpointLoaderSimple",
        "inputs": {"ckpt_name": "base.safetensors"},
        "_meta": {"title": "Model"},
    },
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ckpt"}},
}
MODEL = [{"node": "Model", "input": "ckpt_name"}]


@pytest.fixture(scope="module")
def template_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("templates")
    for name in ("noise-card", "soft-webp"):
        shutil.copytree(os.path.join(EXAMPLES, name), folder / name)
    shutil.copytree(os.path.join(EXAMPLES, "noise-card"), folder / "noise-card-reexported")
    with open(os.path.join(EXAMPLES, "noise-card", "workflow.json")) as handle:
        original = json.load(handle)
    with open(folder / "noise-card-reexported" / "workflow.json", "w") as handle:
        json.dump(renumbered(original, 100), handle)
    write(
        folder,
        "pick-checkpoint",
        CHECKPOINT_WORKFLOW,
        {"model": {"type": "enum", "values": "object_info", "targets": MODEL}},
    )
    write(
        folder, "name-checkpoint", CHECKPOINT_WORKFLOW, {"checkpoint": {"type": "string", "targets": MODEL}}
    )
    write(
        folder,
        "broken",
        CHECKPOINT_WORKFLOW,
        {"model": {"type": "string", "targets": [{"node": "Gone", "input": "x"}]}},
    )
    return str(folder)


@pytest.fixture(scope="module", params=["api", "serverless"])
def stack(request, backend, template_dir):
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "TEMPLATES_DIR": template_dir, "JOB_TIMEOUT_S": "120"}
    stack = Stack(request.param, env, backend=backend).ready()
    try:
        yield stack
        if backend is STANDIN:  # the real ComfyUI logs its own optional nodes' import errors
            assert "Traceback" not in stack.log
    finally:
        stack.stop()


def call(stack, name: str, params, sealed: bool = False, route: str = "template"):
    """(HTTP status, or the serverless job's status, and the answer, opened when sealed)."""
    payload = {"template": name, "params": params}
    body, ephemeral = seal_request(payload, stack.public_key) if sealed else (payload, None)
    if stack.mode == "api":
        if route == "template":
            body = body if sealed else params
            response = requests.post(f"{stack.url}/templates/{name}/run", json=body, timeout=180)
        else:
            response = requests.post(f"{stack.url}/run", json=body, timeout=180)
        status, answer = response.status_code, response.json()
    else:
        job = requests.post(f"{stack.url}/v2/LOCAL/runsync", json={"input": body}, timeout=180).json()
        error = {"error": job["error"]} if job.get("error") else {}
        status, answer = job["status"], {**(job.get("output") or {}), **error}
    if sealed and "ciphertext" in answer:
        assert "params" not in json.dumps(answer)
        answer = open_answer(answer, ephemeral, stack.public_key)
    return status, answer


def ok(stack, status) -> bool:
    return status == (200 if stack.mode == "api" else "COMPLETED")


def pixels(answer: dict) -> bytes:
    (output,) = answer["outputs"]
    with Image.open(io.BytesIO(base64.b64decode(output["data"]))) as image:
        return image.convert("RGB").tobytes()


def details(stack, status, answer) -> list[dict]:
    """The invalid_params details, whichever mode answered."""
    assert answer["error"].startswith("invalid_params:"), answer
    assert status == (400 if stack.mode == "api" else "FAILED")
    if "details" in answer:
        return answer["details"]
    said = re.findall(r"(?:^|; )(\w+): (.*?) \[(\w+)\]", answer["error"].split(": ", 2)[2])
    return [{"param": p, "rule": r, "message": m} for p, m, r in said]  # RunPod keeps `error` alone


API_ONLY = pytest.mark.parametrize("stack", ["api"], indirect=True)  # the pod's routes


@API_ONLY
def test_the_good_templates_serve_and_the_broken_one_is_listed_with_its_reason(stack):
    wait_until(
        lambda: requests.get(stack.url + "/healthz", timeout=5).json()["templates"]["checked_with_comfyui"],
        120,
        "the templates' check against ComfyUI",
    )
    health = requests.get(stack.url + "/healthz", timeout=5).json()["templates"]
    assert health["serving"] == [
        "name-checkpoint",
        "noise-card",
        "noise-card-reexported",
        "pick-checkpoint",
        "soft-webp",
    ]
    assert health["rejected"] == [
        {
            "name": "broken",
            "reason": "broken: parameter 'model', target 'Gone'.x: no node has this title or id",
        }
    ]
    listing = requests.get(stack.url + "/templates", timeout=5).json()
    assert [t["name"] for t in listing["templates"]] == health["serving"]
    one = requests.get(stack.url + "/templates/soft-webp", timeout=5).json()
    assert one["schema"]["properties"]["scaling"]["enum"][:2] == ["nearest-exact", "bilinear"]
    assert one["schema"]["required"] == ["image"] and set(one["example"]) == set(one["schema"]["properties"])
    assert requests.get(stack.url + "/templates/broken", timeout=5).status_code == 404


def test_a_drawn_seed_comes_back_and_gives_the_same_pixels_after_a_re_export(stack):
    status, first = call(stack, "noise-card", {"width": 48, "height": 32})
    assert ok(stack, status), first
    seed = first["params"]["seed"]
    assert first["params"] == {"width": 48, "height": 32, "color": 3355545, "seed": seed, "strength": 0.35}
    status, again = call(stack, "noise-card-reexported", {"width": 48, "height": 32, "seed": seed})
    assert ok(stack, status) and pixels(again) == pixels(first)
    status, other = call(stack, "noise-card", {"width": 48, "height": 32, "seed": (seed + 1) % 2**53})
    assert ok(stack, status) and pixels(other) != pixels(first)


def test_an_image_parameter_lands_runs_and_is_gone_afterwards(stack):
    status, answer = call(
        stack, "soft-webp", {"image": png_b64(40, 30), "width": 24, "height": 20, "lossless": True}
    )
    assert ok(stack, status), answer
    (output,) = answer["outputs"]
    assert output["mime"] == "image/webp"
    with Image.open(io.BytesIO(base64.b64decode(output["data"]))) as image:
        assert image.size == (24, 20)
    assert answer["params"]["image"]["bytes"] > 0 and answer["params"]["lossless"] is True
    inputs = os.path.join(stack.comfy_dir(), "input")
    # the clean-up takes a job's inputs right after its answer (services.comfy.cleanup)
    wait_until(
        lambda: not [f for _, _, files in os.walk(inputs) for f in files if f.startswith("image-")],
        10,
        "the image parameter's file to be removed",
    )


def test_values_at_their_bounds_run_and_past_them_are_all_listed(stack):
    edge = {"image": png_b64(8, 8), "width": 16, "height": 2048, "radius": 15, "sigma": 10.0, "quality": 1}
    status, answer = call(stack, "soft-webp", {**edge, "scaling": "nearest-exact", "effort": "fastest"})
    assert ok(stack, status), answer
    past = {
        "image": "not base64!",
        "width": 15,
        "height": 2049,
        "radius": 16,
        "sigma": 10.01,
        "quality": 0,
        "lossless": "yes",
    }
    status, answer = call(stack, "soft-webp", {**past, "scaling": "sideways", "effort": "max"})
    found = sorted((d["param"], d["rule"]) for d in details(stack, status, answer))
    assert found == [
        ("effort", "enum"),
        ("height", "maximum"),
        ("lossless", "type"),
        ("quality", "minimum"),
        ("radius", "maximum"),
        ("scaling", "enum"),
        ("sigma", "maximum"),
        ("width", "minimum"),
    ]


def test_an_enum_from_comfyui_takes_a_checkpoint_placed_on_the_volume_after_start(stack):
    name = f"late-{stack.mode}.safetensors"
    status, answer = call(stack, "pick-checkpoint", {"model": name})
    assert [d["param"] for d in details(stack, status, answer)] == ["model"]
    folder = os.path.join(stack.env["COMFYUI_MODEL_DIR"], "checkpoints")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as handle:
        handle.write(b"not really a checkpoint")
    status, answer = call(stack, "pick-checkpoint", {"model": name})
    assert answer["error"].startswith("execution_failed:"), answer  # taken; ComfyUI then fails to load it


def test_a_comfyui_node_error_comes_back_under_the_parameters_name(stack):
    status, answer = call(stack, "name-checkpoint", {"checkpoint": "missing.safetensors"})
    (detail,) = details(stack, status, answer)
    assert detail["param"] == "checkpoint" and detail["rule"] == "comfyui"
    assert "not in" in detail["message"]


def test_an_encrypted_call_runs_and_answers_sealed(stack):
    sealed_call(stack, "run")


@API_ONLY
def test_an_encrypted_call_to_the_templates_own_route(stack):
    sealed_call(stack, "template")


def sealed_call(stack, route: str) -> None:
    status, answer = call(
        stack, "noise-card", {"width": 32, "height": 16, "seed": 5}, sealed=True, route=route
    )
    assert ok(stack, status), answer
    assert answer["params"]["seed"] == 5 and len(answer["outputs"]) == 1
    status, refused = call(stack, "noise-card", {"width": 1}, sealed=True, route=route)
    assert refused["error"].startswith("invalid_params:") and refused["details"][0]["param"] == "width"


@API_ONLY
def test_an_async_template_call_is_polled_like_a_job(stack):
    answer = requests.post(
        stack.url + "/templates/noise-card/run", params={"async": "1"}, json={"seed": 9}, timeout=30
    )
    assert answer.status_code == 202
    job = ended(stack, answer.json()["id"], timeout=120)
    assert job["state"] == "completed" and job["result"]["params"]["seed"] == 9


def test_an_unknown_template_is_404_or_a_failed_job(stack):
    status, answer = call(stack, "nope", {}, route="run")
    assert answer["error"] == "unknown_template: no template 'nope'"
    assert status == (404 if stack.mode == "api" else "FAILED")
