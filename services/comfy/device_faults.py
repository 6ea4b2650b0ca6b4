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
import threading
import time
from collections.abc import Callable

from services.comfy import health
from services.core.config import Settings

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
    """DEVICE_FAULT, OUT_OF_MEMORY, or None: the workflow's own error (callers skip this with
    GPU_CHECKS=0, which reads every failure as the workflow's)."""
    kind = str(error.get("exception_type", ""))
    message = str(error.get("exception_message", ""))
    if kind in _OOM_TYPES or (kind == "RuntimeError" and _OOM.search(message)):
        return OUT_OF_MEMORY
    if kind in _RAISED_AS and _FAULTS.search(message):
        return DEVICE_FAULT
    return None


class GpuRecord:
    """What one instance's failed prompts say of its GPU: the ComfyUI process (the relay's pid)
    whose GPU failed, until a job ends well, the out-of-memory answers in a row, and when its
    device faults and failed pre-flights were (GPU_OUT_AFTER within GPU_OUT_WINDOW_S: out for
    good)."""

    ORDER_WAIT_S = 3.0  # how long a fault waits for the answers of prompts that ran before it
    POLL_S = 0.01

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.faulted_in: str | None = None
        self.ooms = 0
        self.failures: list[float] = []  # when device faults and failed pre-flights were (monotonic)
        self._lock = threading.Lock()

    def faulted(self, pid: str | None = None) -> bool:
        """A fault was seen in the ComfyUI process that runs now (`pid`: the relay's, read from
        its ready file when not given): its CUDA context is lost, so it takes no job and nothing
        it runs counts until it has restarted."""
        current = health.booted_pid(self.settings) if pid is None else pid
        return self.faulted_in is not None and self.faulted_in == current

    def restarting(self) -> bool:
        """A fault was seen and no job has ended well since: the ComfyUI that went away under a
        job was restarted for its GPU, not by the job."""
        return self.faulted_in is not None

    def first_fault(self, comfy: str, earlier: Callable[[], bool]) -> bool:
        """Whether a fault in process `comfy` is its first: every later prompt there failed
        for it. `earlier()`: a prompt ComfyUI ran before this one is still to be answered; its
        answer is waited for (a while), so that two jobs seeing faults at once agree which came
        first."""
        limit = time.monotonic() + self.ORDER_WAIT_S
        while True:
            with self._lock:
                if self.faulted_in == comfy:
                    return False
                if time.monotonic() >= limit or not earlier():
                    self.faulted_in = comfy
                    return True
            time.sleep(self.POLL_S)

    def preflight_failed(self, comfy: str) -> None:
        """The pre-flight of process `comfy` failed: it takes nothing until it has restarted."""
        with self._lock:
            self.faulted_in = comfy

    def failed_again(self, now: float | None = None) -> bool:
        """One more device fault or failed pre-flight; True when GPU_OUT_AFTER of them came
        within GPU_OUT_WINDOW_S: restarts do not mend this GPU, it is out for good."""
        now = time.monotonic() if now is None else now
        with self._lock:
            window = self.settings.gpu_out_window_s
            self.failures = [t for t in self.failures if now - t < window] + [now]
            return len(self.failures) >= self.settings.gpu_out_after

    def out_of_memory(self) -> bool:
        """One more out-of-memory answer; True when OOM_RESTART_AFTER came in a row (restart it;
        the count starts again)."""
        with self._lock:
            self.ooms += 1
            if self.ooms < self.settings.oom_restart_after:
                return False
            self.ooms = 0
            return True

    def went_well(self) -> None:
        with self._lock:
            self.faulted_in, self.ooms = None, 0
