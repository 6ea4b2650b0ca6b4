"""The image cannot be built here (no Docker engine): check everything that can be checked."""

import glob
import json
import os
import re
import subprocess
import sys
from dataclasses import fields

import pytest

from services.comfy import custom_nodes, install
from services.core import config
from tests.stack import ROOT

DOCKERFILE = os.path.join(ROOT, "Dockerfile")


def instructions():
    """(instruction, arguments) with line continuations joined and comments dropped."""
    with open(DOCKERFILE) as handle:
        text = re.sub(
            r"\\\n",
            " ",
            "\n".join(line for line in handle.read().splitlines() if not line.lstrip().startswith("#")),
        )
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip()
    ]


def test_hadolint_finds_nothing():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")
    result = subprocess.run([hadolint, DOCKERFILE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", (
        result.stdout + result.stderr
    )


def test_every_copy_source_exists():
    defaults = dict(args.split("=", 1) for name, args in instructions() if name == "ARG" and "=" in args)
    copies = [args.split() for name, args in instructions() if name == "COPY" and "--from" not in args]
    assert copies
    for parts in copies:
        for source in parts[:-1]:
            source = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], source)
            assert glob.glob(os.path.join(ROOT, source)), source


def test_each_torch_flavor_has_a_lock_made_for_the_pinned_comfyui():
    ref = dict(args.split("=", 1) for name, args in instructions() if name == "ARG" and "=" in args)[
        "COMFYUI_REF"
    ]
    for lock in ("comfyui-requirements.lock", "comfyui-requirements-cu128.lock"):
        assert install.read_lock(os.path.join(ROOT, lock))[0] == ref, lock


def test_entrypoint_and_healthcheck_run_modules_of_the_project():
    for name, args in instructions():
        if name in ("ENTRYPOINT", "CMD") or (name == "HEALTHCHECK" and "CMD" in args):
            argv = json.loads(args[args.index("[") :])
            module = argv[argv.index("-m") + 1]
            assert os.path.isfile(os.path.join(ROOT, *module.split(".")) + ".py"), module


def test_env_defaults_equal_the_configuration_defaults():
    env = {}
    for name, args in instructions():
        if name == "ENV":
            env.update(dict(pair.split("=", 1) for pair in args.split()))
    key = "A" * 43 + "="
    image = config.load(
        {**{k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"}, "WORKER_PRIVATE_KEY_B64": key}
    )
    defaults = config.Settings()
    differing = {f.name for f in fields(defaults) if getattr(image, f.name) != getattr(defaults, f.name)}
    # the image's own interpreter for ComfyUI and models, the key given above, the image
    # guarantees ComfyUI a user of its own and a driver its torch runs on, and serves its own
    # example templates after the volume's
    assert differing == {
        "comfy_python",
        "baked_model_dir",
        "private_key_b64",
        "comfy_user_required",
        "cuda_driver_required",
        "templates_dir",
    }
    assert env["COMFY_PYTHON"] == "/opt/comfyui-venv/bin/python"
    assert image.template_folders == ("/workspace/templates", "/app/templates")
    assert defaults.template_folders == ("/workspace/templates",)  # beside the volume


def test_comfyui_is_pinned_to_the_configured_commit():
    refs = [
        args.split("=", 1)[1]
        for name, args in instructions()
        if name == "ARG" and args.startswith("COMFYUI_REF=")
    ]
    assert refs == [config.Settings().comfyui_ref]
    assert re.fullmatch(r"[0-9a-f]{7,40}", refs[0])
    assert not any(name == "FROM" and args.endswith(":latest") for name, args in instructions())


def test_default_build_inputs_are_valid():
    with open(os.path.join(ROOT, "docker", "custom_nodes.txt")) as handle:
        assert custom_nodes.parse(handle.read()) == []
    with open(os.path.join(ROOT, "docker", "models.json")) as handle:
        assert json.load(handle) == []


@pytest.mark.parametrize(
    "line",
    [
        "https://github.com/a/b main",
        "https://github.com/a/b",
        "https://evil.example/a/b 0123456",
        "https://github.com/a/b v1.2",
    ],
)
def test_custom_nodes_must_be_pinned_to_a_commit(line):
    with pytest.raises(custom_nodes.NodeListError):
        custom_nodes.parse(line)


def test_custom_node_lines_parse():
    text = "# comment\nhttps://github.com/cubiq/ComfyUI_essentials.git 33ff89fd354d8ec3ab6affb605a79a931b445d99\n"
    assert custom_nodes.parse(text) == [
        ("cubiq", "ComfyUI_essentials", "33ff89fd354d8ec3ab6affb605a79a931b445d99")
    ]


def test_dockerignore_keeps_local_state_out_of_the_image():
    with open(os.path.join(ROOT, ".dockerignore")) as handle:
        ignored = handle.read().split()
    for path in (".venv", ".env.local", ".comfyui", ".git"):
        assert path in ignored
