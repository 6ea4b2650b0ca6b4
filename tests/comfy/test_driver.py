"""The NVIDIA driver against the CUDA build of ComfyUI's torch, with fake driver files and fake
torch installs: every branch, and the exact line the entrypoint says."""

import logging
import stat

import pytest

from services.comfy import devices, driver
from services.container import entrypoint
from services.core import config

PROC = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {}  Thu Oct 10 01:24:21 UTC 2024\nGCC version:  gcc 12\n"
)
OPEN_PROC = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {}  Release Build  (dvs-builder@U16)\n"


def fake_torch(root, cuda):
    """A ComfyUI environment whose torch says it was built for `cuda` (None: a CPU build)."""
    python = root / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    package = root / "venv" / "lib" / "python3.12" / "site-packages" / "torch"
    package.mkdir(parents=True)
    value = "None" if cuda is None else repr(cuda)
    (package / "version.py").write_text(
        f"__version__ = '2.14.1'\ndebug = False\ncuda: Optional[str] = {value}\n"
    )
    return str(python)


def fake_proc(root, version, template=PROC):
    path = root / "version"
    path.write_text(template.format(version))
    return str(path)


def settings(python, required):
    return config.load(
        {"ENCRYPTION_REQUIRED": "0", "COMFY_PYTHON": python, "CUDA_DRIVER_REQUIRED": "1" if required else "0"}
    )


NVIDIA = devices.Gpus("nvidia", ("0",))
TOO_OLD = (
    "[entrypoint] this image's torch is built for CUDA 13.0, which needs NVIDIA driver >= 580; this host has "
    "550.127.05: use the cuda12.8 image (TORCH_FLAVOR=cu128, tag -cu128) or a host with a newer driver"
)


def test_the_versions_are_read_from_the_files(tmp_path):
    assert driver.host_driver(fake_proc(tmp_path, "550.127.05")) == "550.127.05"
    assert driver.host_driver(fake_proc(tmp_path, "580.65.06", OPEN_PROC)) == "580.65.06"
    assert driver.torch_cuda(fake_torch(tmp_path / "a", "13.0")) == "13.0"
    assert driver.torch_cuda(fake_torch(tmp_path / "b", None)) is None
    assert driver.torch_cuda(str(tmp_path / "nowhere" / "bin" / "python")) is None


def test_without_the_proc_file_nvidia_smi_answers(tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 570.124.06\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    assert driver.host_driver(str(tmp_path / "absent"), str(smi)) == "570.124.06"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed'\nexit 9\n")
    assert driver.host_driver(str(tmp_path / "absent"), str(smi)) is None


@pytest.fixture(autouse=True)
def entrypoint_lines(caplog, monkeypatch):
    """The entrypoint's lines reach caplog, whatever an earlier main() in this process set up."""
    said_by = logging.getLogger("entrypoint")
    monkeypatch.setattr(said_by, "handlers", [])
    monkeypatch.setattr(said_by, "propagate", True)
    caplog.set_level(logging.INFO, logger="entrypoint")


def said(caplog) -> list[str]:
    """What the entrypoint said (its lines: services.core.logs.sayer, set up by its main)."""
    return [f"[entrypoint] {r.getMessage()}" for r in caplog.records if r.name == "entrypoint"]


def test_no_gpu_means_nothing_to_compare(tmp_path, caplog):
    entrypoint.check_driver(settings(fake_torch(tmp_path, "13.0"), True), devices.Gpus(None))
    assert said(caplog) == ["[entrypoint] no NVIDIA GPU: no driver to check"]


@pytest.mark.parametrize(("cuda", "host"), [("13.0", "580.65.06"), ("12.8", "550.127.05"), ("13.0", "590.1")])
def test_a_driver_new_enough_passes(tmp_path, caplog, cuda, host):
    entrypoint.check_driver(settings(fake_torch(tmp_path, cuda), True), NVIDIA, fake_proc(tmp_path, host))
    assert said(caplog) == [f"[entrypoint] NVIDIA driver {host} runs torch's CUDA {cuda}"]


def test_too_old_stops_the_image_with_one_line(tmp_path, capsys):
    with pytest.raises(entrypoint.StartError) as stopped:
        entrypoint.check_driver(
            settings(fake_torch(tmp_path, "13.0"), True), NVIDIA, fake_proc(tmp_path, "550.127.05")
        )
    assert f"[entrypoint] {stopped.value}" == TOO_OLD
    assert driver.check("525.60.12", "12.8").too_old and not driver.check("525.60.13", "12.8").too_old


def test_too_old_outside_the_image_is_a_warning(tmp_path, caplog):
    entrypoint.check_driver(
        settings(fake_torch(tmp_path, "13.0"), False), NVIDIA, fake_proc(tmp_path, "550.127.05")
    )
    assert said(caplog) == [TOO_OLD.replace("[entrypoint] ", "[entrypoint] warning: ")]


def test_an_unreadable_version_is_said_and_not_checked(tmp_path, caplog, monkeypatch):
    garbled = tmp_path / "garbled"
    garbled.write_text("NVRM version: something else entirely\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # and no nvidia-smi to ask
    entrypoint.check_driver(settings(fake_torch(tmp_path, "13.0"), True), NVIDIA, str(garbled))
    assert said(caplog) == [
        "[entrypoint] cannot read the NVIDIA driver's version; torch is built for CUDA 13.0: not checked"
    ]
