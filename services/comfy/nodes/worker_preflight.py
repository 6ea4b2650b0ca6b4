"""The worker's pre-flight node, loaded by ComfyUI from the worker's own custom_nodes path (the
launcher copies this file there; the worker never imports it): a small matrix product on the
device ComfyUI computes on, checked against the CPU. It runs as a prompt after every start,
in the process that will run the jobs, so a GPU that cannot compute (no kernel image for it, a
driver too old, a lost context) fails it before any job is given to it."""

import comfy.model_management
import torch

SIZE = 64


class WorkerPreflight:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    RETURN_TYPES = ()
    FUNCTION = "check"
    OUTPUT_NODE = True
    CATEGORY = "worker"

    def check(self, seed: int) -> dict:
        device = comfy.model_management.get_torch_device()
        matrix = torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
        expected = matrix @ matrix
        on_device = matrix.to(device)
        computed = (on_device @ on_device).to("cpu")  # the copy back waits for the device's kernels
        if not torch.allclose(computed, expected, rtol=1e-3, atol=1e-3):
            raise RuntimeError(f"the device {device} computed a wrong matrix product")
        return {}


NODE_CLASS_MAPPINGS = {"WorkerPreflight": WorkerPreflight}
