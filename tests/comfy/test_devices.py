"""COMFY_INSTANCES=auto counts the GPUs this container can use. No GPU here: fake /dev folders."""

import os
import subprocess
import sys

import pytest

from services.comfy import devices
from services.core import config
from tests.stack import ROOT


@pytest.fixture
def dev(tmp_path):
    made = iter(range(100))

    def make(*names):
        root = tmp_path / f"dev{next(made)}"
        for name in names:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        return str(root)

    return make


def test_no_gpu_is_one_instance_on_the_cpu(dev):
    gpus = devices.visible({}, dev("null", "dri/card0"))
    assert gpus == devices.Gpus(None) and devices.instances(None, gpus) == 1
    assert gpus.describe(0) == "cpu" and gpus.environment(0, 2) == {}


def test_nvidia_devices_are_counted_and_each_instance_pinned(dev):
    gpus = devices.visible({}, dev("nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl", "nvidia-uvm"))
    assert gpus == devices.Gpus("nvidia", ("0", "1", "2", "3")) and devices.instances(None, gpus) == 4
    assert gpus.environment(2, 4) == {"CUDA_VISIBLE_DEVICES": "2"}
    assert gpus.environment(5, 6) == {"CUDA_VISIBLE_DEVICES": "1"}  # more instances than GPUs: shared
    assert gpus.environment(0, 1) == {}  # a single instance sees what it saw before the pool
    assert gpus.describe(3) == "nvidia GPU 3"


def test_cuda_visible_devices_narrows_and_names_them(dev):
    root = dev("nvidia0", "nvidia1", "nvidia2", "nvidia3")
    gpus = devices.visible({"CUDA_VISIBLE_DEVICES": "2,3"}, root)
    assert gpus.ids == ("2", "3") and gpus.environment(1, 2) == {"CUDA_VISIBLE_DEVICES": "3"}
    uuids = devices.visible({"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb"}, root)
    assert uuids.environment(1, 2) == {"CUDA_VISIBLE_DEVICES": "GPU-bb"}
    assert devices.visible({"CUDA_VISIBLE_DEVICES": ""}, root).ids == ("0", "1", "2", "3")
    assert devices.visible({"CUDA_VISIBLE_DEVICES": "-1"}, root).ids == ()


def test_nvidia_visible_devices_narrows_the_count(dev):
    root = dev("nvidia0", "nvidia1", "nvidia2")
    assert devices.visible({"NVIDIA_VISIBLE_DEVICES": "0,2"}, root).ids == ("0", "1")
    assert devices.visible({"NVIDIA_VISIBLE_DEVICES": "all"}, root).ids == ("0", "1", "2")
    assert devices.visible({"NVIDIA_VISIBLE_DEVICES": "none"}, root).ids == ()


def test_amd_render_nodes_are_counted_and_hip_pins_them(dev):
    root = dev("kfd", "dri/renderD128", "dri/renderD129", "dri/card0")
    gpus = devices.visible({}, root)
    assert gpus == devices.Gpus("rocm", ("0", "1"))
    assert gpus.environment(1, 2) == {"HIP_VISIBLE_DEVICES": "1"}
    assert devices.visible({"HIP_VISIBLE_DEVICES": "1"}, root).ids == ("1",)
    assert devices.visible({"ROCR_VISIBLE_DEVICES": "0"}, root).ids == ("0",)
    assert devices.visible({}, dev("dri/renderD128")) == devices.Gpus(None)  # no /dev/kfd: no ROCm


def test_a_number_of_instances_is_taken_as_given(dev):
    gpus = devices.visible({}, dev("nvidia0", "nvidia1"))
    assert devices.instances(3, gpus) == 3 and devices.instances(1, gpus) == 1


def test_cpu_device_means_no_gpu_whatever_is_visible():
    settings = config.load({"ENCRYPTION_REQUIRED": "0", "COMFY_DEVICE": "cpu"})
    assert devices.of(settings) == devices.Gpus(None)
    seen = config.load({"ENCRYPTION_REQUIRED": "0", "CUDA_VISIBLE_DEVICES": "1", "OTHER": "x"})
    assert seen.gpu_visibility == (("CUDA_VISIBLE_DEVICES", "1"),)


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "65", ""])
def test_a_bad_number_of_instances_names_the_variable(value):
    with pytest.raises(config.ConfigError, match="COMFY_INSTANCES="):
        config.load({"ENCRYPTION_REQUIRED": "0", "COMFY_INSTANCES": value})


def test_instances_get_their_own_port_folders_and_program(tmp_path):
    settings = config.load({"ENCRYPTION_REQUIRED": "0", "RUN_DIR": str(tmp_path), "COMFY_PORT": "9000"})
    second = settings.instance(1)
    assert (settings.comfy_program, second.comfy_program) == ("comfy", "comfy-1")
    assert (settings.comfy_url, second.comfy_url) == ("http://127.0.0.1:9000", "http://127.0.0.1:9001")
    assert settings.comfy_io_dir == str(tmp_path / "comfy") and second.comfy_io_dir == str(
        tmp_path / "comfy-1"
    )
    assert settings.comfy_starts_file != second.comfy_starts_file


@pytest.mark.parametrize("value", ["zero", "0"])
def test_a_bad_number_of_instances_stops_the_start_naming_the_variable(value, tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "ENCRYPTION_REQUIRED": "0",
        "RUN_DIR": str(tmp_path),
        "COMFY_INSTANCES": value,
    }
    started = subprocess.run(
        [sys.executable, "-m", "services.container.entrypoint"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2
    assert (
        f"configuration error: COMFY_INSTANCES={value!r} is not a number of ComfyUI instances"
        in started.stderr
    )
    assert "starting supervisord" not in started.stdout
