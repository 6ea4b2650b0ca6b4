"""Which failed prompts are the GPU's fault, not the workflow's: read from ComfyUI's
`execution_error` (`exception_type`, `exception_message`), inside the worker only.

A CUDA fault leaves the process's CUDA context unusable until it restarts, so every later
prompt in that ComfyUI fails too; out-of-memory is usually the job's own size. The messages are
the CUDA runtime's, cuBLAS's and the caching allocator's as torch 2.14 raises them (found in
torch's and NVIDIA's libraries in ComfyUI's environment); ComfyUI names the exception by its
module and class (`torch.AcceleratorError`, `torch.OutOfMemoryError`, `RuntimeError` for older
torch).
"""

from __future__ import annotations

import re

DEVICE_FAULT = "device_fault"
OUT_OF_MEMORY = "out_of_memory"

_RAISED_AS = ("torch.AcceleratorError", "RuntimeError", "torch.cuda.CudaError")
_FAULTS = re.compile(
    "|".join(
        re.escape(text)
        for text in (
            "an illegal memory access was encountered",
            "device-side assert triggered",
            "unspecified launch failure",
            "uncorrectable ECC error encountered",
            "CUBLAS_STATUS_EXECUTION_FAILED",
            "no kernel image is available for execution on the device",
            "CUDA driver version is insufficient for CUDA runtime version",
        )
    )
)
_OOM_TYPES = ("torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError")
_OOM = re.compile(r"(CUDA|HIP|XPU) out of memory\. Tried to allocate")


def kind_of(error: dict) -> str | None:
    """DEVICE_FAULT, OUT_OF_MEMORY, or None: the workflow's own error."""
    kind = str(error.get("exception_type", ""))
    message = str(error.get("exception_message", ""))
    if kind in _OOM_TYPES or (kind == "RuntimeError" and _OOM.search(message)):
        return OUT_OF_MEMORY
    if kind in _RAISED_AS and _FAULTS.search(message):
        return DEVICE_FAULT
    return None
