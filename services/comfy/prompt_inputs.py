"""The prompt a job posts: its workflow with the job's images written into its own subfolder of
ComfyUI's input folder (the worker owns that folder, and a write costs ~30 ms less per 12 MB than
ComfyUI's upload route, multipart both ways), and every output node made to run anew."""

from __future__ import annotations

import copy
import os

from services.comfy.client import ComfyClient
from services.core.config import Settings
from services.core.job_spec import JobRequest
from services.core.offload import offload

NONCE_INPUT = "worker_job_nonce"  # an input ComfyUI ignores but caches on, see Prompts.isolate


class Prompts:
    def __init__(self, settings: Settings, client: ComfyClient) -> None:
        self.settings = settings
        self.client = client
        self._output_nodes: dict[str, bool] = {}

    def prompt(self, request: JobRequest, tag: str, prompt_id: str) -> dict:
        """The prompt to post, the job's images written into the input subfolder `tag` first.
        Names were checked as plain."""
        prompt = copy.deepcopy(request.workflow)
        names = {}
        folder = os.path.join(self.settings.comfy_folder("input"), tag)
        for image in request.images:
            offload(_write_input, folder, image.name, image.data, size=len(image.data))
            names[image.name] = f"{tag}/{image.name}"
        if names:
            _replace_image_names(prompt, names)
        self._isolate(prompt, prompt_id)
        return prompt

    def _isolate(self, prompt: dict, prompt_id: str) -> None:
        """Give every output node a per-job input so ComfyUI runs it again instead of answering
        from its cache with a file an earlier job's clean-up deleted. Upstream nodes (model
        loaders, samplers) stay cached; ComfyUI ignores inputs its nodes do not declare."""
        for node in prompt.values():
            if self._is_output_node(node["class_type"]):
                node.setdefault("inputs", {})[NONCE_INPUT] = prompt_id

    def _is_output_node(self, class_type: str) -> bool:
        if class_type not in self._output_nodes:
            self._output_nodes[class_type] = bool(self.client.node_info(class_type).get("output_node"))
        return self._output_nodes[class_type]


def _write_input(folder: str, name: str, data: bytes) -> None:
    """Readable by ComfyUI's own user, whatever the umask (the input folder above is that
    user's alone, mode 0700)."""
    os.makedirs(folder, exist_ok=True)
    os.chmod(folder, 0o755)
    fd = os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _replace_image_names(prompt: dict, names: dict[str, str]) -> None:
    """Point inputs that name an uploaded image at its per-job subfolder."""
    for node in prompt.values():
        inputs = node.get("inputs", {})
        for key, value in inputs.items():
            if isinstance(value, str):
                bare = value.removesuffix(" [input]")
                if bare in names:
                    inputs[key] = names[bare]
