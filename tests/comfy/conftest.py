import os
import shutil

import pytest

from tests.stack import ROOT, STANDIN

GPU_FAULT_PACK = os.path.join(ROOT, "tests", "gpu_fault_node.py")


@pytest.fixture(scope="module")
def gpu_fault_pack(backend):
    """The backend, with the GPU-fault test node pack in the real ComfyUI's custom_nodes/ for
    the module (the stand-in has its nodes built in)."""
    placed = None
    if backend is not STANDIN:
        placed = os.path.join(backend.comfyui_dir, "custom_nodes", os.path.basename(GPU_FAULT_PACK))
        shutil.copy(GPU_FAULT_PACK, placed)
    yield backend
    if placed:
        os.remove(placed)
