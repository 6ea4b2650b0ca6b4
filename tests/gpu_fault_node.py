"""A test-only custom node pack for the real ComfyUI: `GpuFault` raises what torch raises when a
GPU fails (torch.AcceleratorError with the CUDA runtime's message) or runs out of memory
(torch.OutOfMemoryError), on a CPU. With `poison`, every later torch computation on ComfyUI's
prompt thread fails the same way until the process restarts, as a lost CUDA context does. A
file `broken_gpu` in ComfyUI's user directory, holding one of FAULTS' names, poisons the
process from its first prompt (a GPU that stays broken, which fails the worker's pre-flight).
The stand-in has the same node built in (tests/comfy_standin/main.py); the product never loads
it."""

import os
import sys

import execution
import folder_paths
import torch
from torch.overrides import TorchFunctionMode

_TAIL = (
    "\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace "
    "below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\nCompile with "
    "`TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
)
FAULTS = {
    "illegal_memory_access": (torch.AcceleratorError, "CUDA error: an illegal memory access was encountered" + _TAIL),
    "device_side_assert": (torch.AcceleratorError, "CUDA error: device-side assert triggered" + _TAIL),
    "no_kernel_image": (
        torch.AcceleratorError, "CUDA error: no kernel image is available for execution on the device" + _TAIL
    ),
    "out_of_memory": (
        torch.OutOfMemoryError,
        "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 23.55 GiB of which "
        "3.12 GiB is free. Of the allocated memory 19.80 GiB is allocated by PyTorch, and 120.00 MiB is "
        "reserved by PyTorch but unallocated.",
    ),
}  # fmt: skip


def _in_a_node():
    """Whether a node's function is running (ComfyUI's execution.py calls it from
    `process_inputs`): a lost CUDA context fails the nodes' GPU work, not ComfyUI's own
    bookkeeping between prompts, which runs on the CPU."""
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "process_inputs" and os.path.basename(code.co_filename) == "execution.py":
            return True
        frame = frame.f_back
    return False


class _LostContext(TorchFunctionMode):
    """Every torch function and tensor method a node calls on this thread raises the fault."""

    def __init__(self, fault):
        super().__init__()
        self.fault = fault

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not _in_a_node():
            return func(*args, **(kwargs or {}))
        error, message = FAULTS[self.fault]
        raise error(message)


class GpuFault:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "fault": (sorted(FAULTS),),
                "poison": ("BOOLEAN", {"default": False}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "fail"
    CATEGORY = "testing"

    def fail(self, image, fault, poison):
        if poison:  # never left: ComfyUI runs every prompt on this one thread
            _LostContext(fault).__enter__()
        error, message = FAULTS[fault]
        raise error(message)


def _broken_from_start():
    """The fault the user directory's `broken_gpu` names: every prompt this process runs
    starts poisoned (ComfyUI runs them all on its prompt thread, through PromptExecutor)."""
    try:
        with open(os.path.join(folder_paths.get_user_directory(), "broken_gpu"), encoding="utf-8") as handle:
            fault = handle.read().strip()
    except OSError:
        return
    if fault not in FAULTS:
        return
    execute = execution.PromptExecutor.execute
    entered = []

    def poisoned(self, *args, **kwargs):
        if not entered:
            entered.append(_LostContext(fault).__enter__())
        return execute(self, *args, **kwargs)

    execution.PromptExecutor.execute = poisoned


_broken_from_start()
NODE_CLASS_MAPPINGS = {"GpuFault": GpuFault}
