"""A ComfyUI stand-in for the tests: speaks the wire protocol of docs/comfyui-protocol.md.

It takes ComfyUI's command-line flags, so the real launcher and the real supervisord conf run
it unchanged (tests point COMFYUI_DIR here). It executes EmptyImage, LoadImage, ImageInvert,
ImageScale, SaveImage and PreviewImage for real with Pillow, caches like ComfyUI (identical
nodes of the last prompt are not run again), and offers knobs as extra node classes:

  StandinNoise {width, height}         random pixels: a large, incompressible PNG output
  StandinSlow {image, seconds, steps}  sleeps in `steps` ticks, sending `progress` (interruptible)
  StandinFail {image, message}         raises -> execution_error
  StandinCrash {image}                 the process dies (os._exit)
  GpuFault {image, fault, poison}      as tests/gpu_fault_node.py does in the real ComfyUI:
                                       raises what torch raises for `fault` (a CUDA fault:
                                       torch.AcceleratorError; out_of_memory:
                                       torch.OutOfMemoryError); with `poison`, every later node
                                       in this process fails the same way, as after a lost
                                       CUDA context
  WorkerPreflight {seed}               the worker's pre-flight node (services/comfy/nodes/), known
                                       as in ComfyUI only when the extra model paths' custom_nodes
                                       folder holds it; it computes nothing, and fails as every
                                       node does once poisoned
  StandinHang {image}                  the whole server stops answering (HTTP and websocket)
  StandinDropSockets {image, seconds, refuse_seconds}
                                       closes every websocket, refuses new ones for
                                       `refuse_seconds` (at most until the prompt ends),
                                       then sleeps `seconds`
  StandinSaveFile {image, kind, extension, seconds, named}
                                       an output node that runs `seconds` deaf to interrupts
                                       (one long node), then writes a file into output/files/
                                       and reports it under `kind` (a 3d model, a custom
                                       node's own kind), or under nothing when `named` is false

SaveLatent writes a safetensors file as ComfyUI does (`latents` output).

Environment knobs: STANDIN_BOOT_SECONDS (slow start-up before the port opens), STANDIN_HELPER=1
(start a child process, as custom nodes do, to show what a crash leaves behind),
STANDIN_PICKUP_SECONDS (how long a queued prompt waits before the prompt worker takes it, as
ComfyUI's clean-up between prompts takes on a GPU). A file `broken_gpu` in --user-directory,
holding one of GPU_FAULTS' names, poisons the process from its start (a GPU that stays broken),
as it does for tests/gpu_fault_node.py.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import heapq
import importlib.util
import json
import os
import random
import string
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import yaml
from aiohttp import web
from PIL import Image, ImageFilter, ImageOps, PngImagePlugin

VERSION = "0.3.64"
LEGACY = {"clip": "text_encoders", "unet": "diffusion_models"}
FOLDER_TYPES = [  # GET /models: ComfyUI's folder types, in its order (models.json)
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision", "style_models",
    "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models", "custom_nodes",
    "hypernetworks", "photomaker", "classifiers", "model_patches", "audio_encoders",
]  # fmt: skip
MODEL_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")
BARE_500 = "500 Internal Server Error\n\nServer got itself in trouble"


class Interrupted(Exception):
    pass


class NodeFailure(Exception):
    pass


class AcceleratorError(RuntimeError):  # torch.AcceleratorError (torch >= 2.8), as ComfyUI names it
    __module__ = "torch"


class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError
    __module__ = "torch"


_CUDA_TAIL = (
    "\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace "
    "below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\nCompile with "
    "`TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
)
GPU_FAULTS = {  # torch 2.14's messages (c10/cuda/CUDAException, the caching allocator)
    "illegal_memory_access": (
        AcceleratorError,
        "CUDA error: an illegal memory access was encountered" + _CUDA_TAIL,
    ),
    "device_side_assert": (AcceleratorError, "CUDA error: device-side assert triggered" + _CUDA_TAIL),
    "no_kernel_image": (
        AcceleratorError,
        "CUDA error: no kernel image is available for execution on the device" + _CUDA_TAIL,
    ),
    "out_of_memory": (
        OutOfMemoryError,
        "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 23.55 GiB of which "
        "3.12 GiB is free. Of the allocated memory 19.80 GiB is allocated by PyTorch, and 120.00 MiB is "
        "reserved by PyTorch but unallocated.",
    ),
}
OOM_TIPS = (  # what ComfyUI's execution.py appends to an OOM's message
    "This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might "
    "have accidentally set the batch_size to a large number."
)


def full_type_name(kind: type) -> str:
    """ComfyUI's name of an exception's type (execution.py full_type_name)."""
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


# --- node definitions (input specs as ComfyUI's object_info reports them) -----------------------
INT = "INT"


def spec(required: dict, output: list, output_node: bool = False) -> dict:
    return {"input": {"required": required}, "output": output, "output_node": output_node}


NODES: dict[str, dict] = {
    "EmptyImage": spec(
        {
            "width": [INT, {"default": 512, "min": 1, "max": 16384, "step": 1}],
            "height": [INT, {"default": 512, "min": 1, "max": 16384, "step": 1}],
            "batch_size": [INT, {"default": 1, "min": 1, "max": 4096}],
            "color": [INT, {"default": 0, "min": 0, "max": 16777215, "step": 1, "display": "color"}],
        },
        ["IMAGE"],
    ),
    "EmptyLatentImage": spec(
        {
            "width": [INT, {"default": 512, "min": 16, "max": 16384, "step": 8}],
            "height": [INT, {"default": 512, "min": 16, "max": 16384, "step": 8}],
            "batch_size": [INT, {"default": 1, "min": 1, "max": 4096}],
        },
        ["LATENT"],
    ),
    "LoadImage": spec({"image": [[], {"image_upload": True}]}, ["IMAGE", "MASK"]),
    "ImageInvert": spec({"image": ["IMAGE"]}, ["IMAGE"]),
    "ImageScale": spec(
        {
            "image": ["IMAGE"],
            "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]],
            "width": [INT, {"default": 512, "min": 0, "max": 16384, "step": 1}],
            "height": [INT, {"default": 512, "min": 0, "max": 16384, "step": 1}],
            "crop": [["disabled", "center"]],
        },
        ["IMAGE"],
    ),
    "SaveImage": spec(
        {
            "images": ["IMAGE", {"tooltip": "The images to save."}],
            "filename_prefix": ["STRING", {"default": "ComfyUI"}],
        },
        [],
        output_node=True,
    ),
    "PreviewImage": spec({"images": ["IMAGE"]}, [], output_node=True),
    # comfy_extras/nodes_images.py and nodes_post_processing.py at the pinned commit
    "ImageAddNoise": spec(
        {
            "image": ["IMAGE"],
            "seed": [
                INT,
                {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True},
            ],
            "strength": ["FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}],
        },
        ["IMAGE"],
    ),
    "ImageBlur": spec(
        {
            "image": ["IMAGE"],
            "blur_radius": [INT, {"default": 1, "min": 1, "max": 31, "step": 1}],
            "sigma": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}],
        },
        ["IMAGE"],
    ),
    "SaveAnimatedWEBP": spec(
        {
            "images": ["IMAGE"],
            "filename_prefix": ["STRING", {"default": "ComfyUI"}],
            "fps": ["FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}],
            "lossless": ["BOOLEAN", {"default": True}],
            "quality": [INT, {"default": 80, "min": 0, "max": 100}],
            "method": [["default", "fastest", "slowest"]],
        },
        [],
        output_node=True,
    ),
    "VAEDecode": spec({"samples": ["LATENT"], "vae": ["VAE"]}, ["IMAGE"]),
    # its list is the checkpoints on the volume, read anew at every ask (Server.inputs_of)
    "CheckpointLoaderSimple": spec(
        {"ckpt_name": [[], {"tooltip": "The name of the checkpoint (model) to load."}]},
        ["MODEL", "CLIP", "VAE"],
    ),
    "StandinSlow": spec(
        {
            "image": ["IMAGE"],
            "seconds": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0}],
            "steps": [INT, {"default": 4, "min": 1, "max": 10000}],
        },
        ["IMAGE"],
    ),
    "StandinSlowSubmit": spec(  # POST /prompt answers after `seconds` (a cold model listing)
        {"image": ["IMAGE"], "seconds": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0}]},
        ["IMAGE"],
    ),
    "StandinSaveFile": spec(
        {
            "image": ["IMAGE"],
            "kind": ["STRING", {"default": "3d"}],
            "extension": ["STRING", {"default": "glb"}],
            "seconds": ["FLOAT", {"default": 0.0, "min": 0.0, "max": 3600.0}],
            "named": ["BOOLEAN", {"default": True}],
        },
        [],
        output_node=True,
    ),
    "SaveLatent": spec(
        {"samples": ["LATENT"], "filename_prefix": ["STRING", {"default": "latents/ComfyUI"}]},
        [],
        output_node=True,
    ),
    "StandinNoise": spec(
        {
            "width": [INT, {"default": 512, "min": 1, "max": 16384}],
            "height": [INT, {"default": 512, "min": 1, "max": 16384}],
        },
        ["IMAGE"],
    ),
    "StandinFail": spec(
        {"image": ["IMAGE"], "message": ["STRING", {"default": "standin failure"}]}, ["IMAGE"]
    ),
    "StandinCrash": spec({"image": ["IMAGE"]}, ["IMAGE"]),
    "GpuFault": spec(
        {"image": ["IMAGE"], "fault": [sorted(GPU_FAULTS)], "poison": ["BOOLEAN", {"default": False}]},
        ["IMAGE"],
    ),
    "StandinHang": spec({"image": ["IMAGE"]}, ["IMAGE"]),
    "StandinDropSockets": spec(
        {
            "image": ["IMAGE"],
            "seconds": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0}],
            "refuse_seconds": ["FLOAT", {"default": 0.0, "min": 0.0, "max": 3600.0}],
        },
        ["IMAGE"],
    ),
}
SCALE = {
    "nearest-exact": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "area": Image.BOX,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def error_body(kind: str, message: str, details: str = "", node_errors: dict | None = None) -> dict:
    return {
        "error": {"type": kind, "message": message, "details": details, "extra_info": {}},
        "node_errors": node_errors or {},
    }


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.input_dir = os.path.abspath(args.input_directory or "input")
        self.output_dir = os.path.abspath(args.output_directory or "output")
        self.temp_dir = os.path.join(os.path.abspath(args.temp_directory or "."), "temp")
        for folder in (self.input_dir, self.output_dir, self.temp_dir):
            os.makedirs(folder, exist_ok=True)
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.outboxes: dict[web.WebSocketResponse, asyncio.Queue] = {}
        self.queue: list[tuple[int, str, dict, dict, list]] = []
        self.running: tuple[int, str, dict, dict, list] | None = None
        self.running_node: str | None = None
        self.refuse_sockets_until = 0.0
        self.history: dict[str, dict] = {}
        self.number = 0
        self.cache: dict[str, tuple[list, dict | None]] = {}
        self.interrupt = threading.Event()
        self.wake = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pickup_s = float(os.environ.get("STANDIN_PICKUP_SECONDS", "0"))
        self.poisoned = broken_gpu(args)  # the GPU fault every node now fails with (GpuFault)
        if any(
            os.path.isfile(os.path.join(f, "worker_preflight.py"))
            for f in self.model_folders().get("custom_nodes", [])
        ):
            # the worker's pre-flight node, loaded by ComfyUI from there; it needs torch, so imitated
            NODES["WorkerPreflight"] = spec(
                {"seed": ["INT", {"default": 0, "min": 0, "max": 2**31 - 1}]}, [], output_node=True
            )

    # --- messaging ---------------------------------------------------------------------------
    def send(self, kind: str, data: dict, sid: str | None) -> None:
        """Thread-safe: queue a message to one client (sid) or to every socket (None)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._send_now, kind, data, sid)

    def _send_now(self, kind: str, data: dict, sid: str | None) -> None:
        message = json.dumps({"type": kind, "data": data})
        targets = (
            list(self.sockets.values()) if sid is None else [self.sockets[sid]] if sid in self.sockets else []
        )
        for ws in targets:
            if ws in self.outboxes:
                self.outboxes[ws].put_nowait(message)

    def queue_remaining(self) -> int:
        return len(self.queue) + (1 if self.running else 0)

    def status(self, sid: str | None = None) -> None:
        self.send("status", {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}, sid)

    # --- validation --------------------------------------------------------------------------
    def validate(self, prompt: dict) -> tuple[int, dict, list[str]]:
        for node_id, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return (
                    400,
                    error_body(
                        "invalid_prompt",
                        "Cannot execute because a node is missing the class_type property.",
                        f"Node ID '#{node_id}'",
                    ),
                    [],
                )
            if node["class_type"] not in NODES:
                return (
                    400,
                    error_body(
                        "invalid_prompt",
                        f"Cannot execute because node {node['class_type']} does not exist.",
                        f"Node ID '#{node_id}'",
                    ),
                    [],
                )
        outputs = [nid for nid, node in prompt.items() if NODES[node["class_type"]]["output_node"]]
        if not outputs:
            return 400, error_body("prompt_no_outputs", "Prompt has no outputs"), []
        node_errors: dict[str, dict] = {}
        good = []
        for output in outputs:
            errors: dict[str, list] = {}
            self._validate_node(prompt, output, errors, set())
            if errors:  # ComfyUI logs these, input values included
                print(f"Failed to validate prompt for output {output}:", flush=True)
                for errs in errors.values():
                    for err in errs:
                        print(f"  - {err['message']}: {err['details']}", flush=True)
                for nid, errs in errors.items():
                    entry = node_errors.setdefault(
                        nid,
                        {"errors": errs, "dependent_outputs": [], "class_type": prompt[nid]["class_type"]},
                    )
                    entry["dependent_outputs"].append(output)
            else:
                good.append(output)
        if not good:
            own = node_errors.get(outputs[0], {}).get("errors")
            details = f"{own[0]['message']}: {own[0]['details']}" if own else ""
            body = error_body(
                "prompt_outputs_failed_validation", "Prompt outputs failed validation", details, node_errors
            )
            return 400, body, []
        return 200, node_errors, good

    def _validate_node(self, prompt: dict, node_id: str, errors: dict, seen: set) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        node = prompt[node_id]
        inputs = node.get("inputs", {})
        own = []
        for name, config in self.inputs_of(node["class_type"])["required"].items():
            kind, options = config[0], (config[1] if len(config) > 1 else {})
            if name not in inputs:
                own.append(
                    self._err(
                        "required_input_missing", "Required input is missing", name, {"input_name": name}
                    )
                )
                continue
            value = inputs[name]
            if is_link(value):
                source = value[0]
                if source not in prompt:
                    own.append(
                        self._err(
                            "exception_during_validation",
                            "Exception when validating node",
                            f"'{source}'",
                            {"exception_type": "KeyError", "traceback": []},
                        )
                    )
                    continue
                received = NODES.get(prompt[source].get("class_type"), {}).get("output", [])
                received_type = received[value[1]] if value[1] < len(received) else None
                if received_type != kind:
                    own.append(
                        self._err(
                            "return_type_mismatch",
                            "Return type mismatch between linked nodes",
                            f"{name}, received_type({received_type}) mismatch input_type({kind})",
                            {
                                "input_name": name,
                                "input_config": config,
                                "received_type": received_type,
                                "linked_node": value,
                            },
                        )
                    )
                    continue
                self._validate_node(prompt, source, errors, seen)
            elif kind in (INT, "FLOAT"):
                try:
                    number = int(value) if kind == INT else float(value)
                except (TypeError, ValueError) as exc:
                    own.append(
                        self._err(
                            "invalid_input_type",
                            f"Failed to convert an input value to a {kind} value",
                            f"{name}, {value}, {exc}",
                            {
                                "input_name": name,
                                "input_config": config,
                                "received_value": value,
                                "exception_message": str(exc),
                            },
                        )
                    )
                    continue
                if "min" in options and number < options["min"]:
                    own.append(
                        self._err(
                            "value_smaller_than_min",
                            f"Value {number} smaller than min of {options['min']}",
                            name,
                            {"input_name": name, "input_config": config, "received_value": value},
                        )
                    )
                if "max" in options and number > options["max"]:
                    own.append(
                        self._err(
                            "value_bigger_than_max",
                            f"Value {number} bigger than max of {options['max']}",
                            name,
                            {"input_name": name, "input_config": config, "received_value": value},
                        )
                    )
            elif node["class_type"] == "LoadImage" and name == "image":
                if self._input_path(value) is None:
                    own.append(
                        self._err(
                            "custom_validation_failed",
                            "Custom validation failed for node",
                            f"image - Invalid image file: {value}",
                            {"input_name": "image"},
                        )
                    )
            elif isinstance(kind, list) and value not in kind:
                own.append(
                    self._err(
                        "value_not_in_list",
                        "Value not in list",
                        f"{name}: '{value}' not in {kind}",
                        {"input_name": name, "input_config": config, "received_value": value},
                    )
                )
        if own:
            errors[node_id] = own

    @staticmethod
    def _err(kind: str, message: str, details: str, extra: dict) -> dict:
        return {"type": kind, "message": message, "details": details, "extra_info": extra}

    def _input_path(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return None
        name = value.removesuffix(" [input]")
        path = os.path.abspath(os.path.join(self.input_dir, name))
        if os.path.commonpath([path, self.input_dir]) != self.input_dir or not os.path.isfile(path):
            return None
        return path

    # --- execution (in a thread, like ComfyUI's prompt worker) --------------------------------
    async def worker(self) -> None:
        while True:
            while not self.queue:
                self.wake.clear()
                await self.wake.wait()
            if self.pickup_s:  # ComfyUI's prompt worker takes a while before its next get()
                await asyncio.sleep(self.pickup_s)
                if not self.queue:  # deleted meanwhile
                    continue
            item = heapq.heappop(self.queue)
            self.running = item
            self.interrupt.clear()
            await asyncio.to_thread(self.execute, item)
            self.running = None

    def execute(self, item: tuple) -> None:
        number, prompt_id, prompt, extra, outputs = item
        started = time.perf_counter()
        sid = extra.get("client_id")
        now = lambda: int(time.time() * 1000)  # noqa: E731
        messages: list = []

        def record(kind: str, data: dict, broadcast: bool = False) -> None:
            messages.append([kind, data])
            self.send(kind, data, None if broadcast else sid)

        self.status()
        record("execution_start", {"prompt_id": prompt_id, "timestamp": now()})
        order = self._order(prompt, outputs)
        signatures = {nid: self._signature(prompt, nid) for nid in order}
        cached = [nid for nid in order if signatures[nid] in self.cache]
        record("execution_cached", {"nodes": cached, "prompt_id": prompt_id, "timestamp": now()})
        values: dict[str, list] = {}
        ui_outputs: dict[str, dict] = {}
        executed: list[str] = []
        new_cache: dict[str, tuple[list, dict | None]] = {}
        status_str, current = "success", None
        try:
            for nid in order:
                current = nid
                if self.interrupt.is_set():
                    raise Interrupted
                sig = signatures[nid]
                cached = sig in self.cache
                if cached:  # only output nodes say anything: their old `executed`
                    result, ui = self.cache[sig]
                else:
                    if self.poisoned is not None:  # the lost context fails every computation
                        error, message = GPU_FAULTS[self.poisoned]
                        raise error(message)
                    self.running_node = nid
                    self._progress_state(prompt_id, nid, "running", sid)
                    self.send("executing", {"node": nid, "display_node": nid, "prompt_id": prompt_id}, sid)
                    result, ui = self._run_node(prompt, nid, values, prompt_id, extra)
                    executed.append(nid)
                values[nid], new_cache[sig] = result, (result, ui)
                if ui is not None:
                    ui_outputs[nid] = ui
                    executed_message = {
                        "node": nid,
                        "display_node": nid,
                        "output": ui,
                        "prompt_id": prompt_id,
                    }
                    self.send("executed", executed_message, sid)
                if ui is not None or not cached:
                    self._progress_state(prompt_id, nid, "finished", sid)
            record("execution_success", {"prompt_id": prompt_id, "timestamp": now()})
        except Interrupted:
            status_str, ui_outputs = "error", {}
            data = {
                "prompt_id": prompt_id,
                "node_id": current,
                "node_type": prompt[current]["class_type"],
                "executed": executed,
                "timestamp": now(),
            }
            record("execution_interrupted", data, broadcast=True)
        except Exception as exc:
            status_str, ui_outputs = "error", {}
            record(
                "execution_error",
                {
                    "prompt_id": prompt_id,
                    "node_id": current,
                    "node_type": prompt[current]["class_type"],
                    "executed": executed,
                    "exception_message": f"{exc}\n{OOM_TIPS if isinstance(exc, OutOfMemoryError) else ''}",
                    "exception_type": full_type_name(type(exc)),
                    "traceback": [f'  File "standin.py", in {prompt[current]["class_type"]}\n'],
                    "current_inputs": {},
                    "current_outputs": [],
                    "timestamp": now(),
                },
            )
        self.cache = new_cache
        self.refuse_sockets_until = 0.0
        print(f"Prompt executed in {time.perf_counter() - started:.2f} seconds", flush=True)
        for key in SENSITIVE_EXTRA_DATA_KEYS:  # ComfyUI keeps these out of its history
            extra.pop(key, None)
        self.history[prompt_id] = {
            "prompt": [number, prompt_id, prompt, extra, outputs],
            "outputs": ui_outputs,
            "status": {"status_str": status_str, "completed": status_str == "success", "messages": messages},
            "meta": {
                nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                for nid in ui_outputs
            },
        }
        self.running, self.running_node = None, None
        self.status()
        self.send("executing", {"node": None, "prompt_id": prompt_id}, sid)

    def _progress_state(self, prompt_id: str, nid: str, state: str, sid: str | None) -> None:
        value = 1.0 if state == "finished" else 0.0
        node = {
            "value": value,
            "max": 1.0,
            "state": state,
            "node_id": nid,
            "prompt_id": prompt_id,
            "display_node_id": nid,
            "parent_node_id": None,
            "real_node_id": nid,
        }
        self.send("progress_state", {"prompt_id": prompt_id, "nodes": {nid: node}}, sid)

    def _order(self, prompt: dict, outputs: list[str]) -> list[str]:
        order: list[str] = []

        def visit(nid: str) -> None:
            if nid in order:
                return
            for value in prompt[nid].get("inputs", {}).values():
                if is_link(value):
                    visit(value[0])
            order.append(nid)

        for output in outputs:
            visit(output)
        return order

    def _signature(self, prompt: dict, nid: str) -> str:
        node = prompt[nid]
        inputs = {
            k: (self._signature(prompt, v[0]), v[1]) if is_link(v) else v
            for k, v in node.get("inputs", {}).items()
        }
        return json.dumps([node["class_type"], inputs], sort_keys=True, default=str)

    def _run_node(
        self, prompt: dict, nid: str, values: dict, prompt_id: str, extra: dict
    ) -> tuple[list, dict | None]:
        node = prompt[nid]
        kind = node["class_type"]
        raw = node.get("inputs", {})
        inputs = {k: values[v[0]][v[1]] if is_link(v) else v for k, v in raw.items()}
        if kind == "EmptyImage":
            color = int(inputs["color"])
            rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
            size = (int(inputs["width"]), int(inputs["height"]))
            return [[Image.new("RGB", size, rgb) for _ in range(int(inputs["batch_size"]))]], None
        if kind == "EmptyLatentImage":
            return [{"samples": (int(inputs["width"]) // 8, int(inputs["height"]) // 8)}], None
        if kind == "LoadImage":
            path = self._input_path(inputs["image"])
            if path is None:
                raise NodeFailure(f"Invalid image file: {inputs['image']}")
            with Image.open(path) as img:
                image = img.convert("RGB")
            return [[image], [Image.new("L", image.size, 0)]], None
        if kind == "ImageInvert":
            return [[ImageOps.invert(img) for img in inputs["image"]]], None
        if kind == "ImageScale":
            size = (int(inputs["width"]), int(inputs["height"]))
            return [[img.resize(size, SCALE[inputs["upscale_method"]]) for img in inputs["image"]]], None
        if kind == "ImageAddNoise":  # seeded: the same seed gives the same pixels
            rng = random.Random(int(inputs["seed"]))
            return [
                [
                    Image.blend(
                        img,
                        Image.frombytes("RGB", img.size, rng.randbytes(img.width * img.height * 3)),
                        float(inputs["strength"]),
                    )
                    for img in inputs["image"]
                ]
            ], None
        if kind == "ImageBlur":
            blur = ImageFilter.GaussianBlur(radius=float(inputs["sigma"]))
            return [[img.filter(blur) for img in inputs["image"]]], None
        if kind == "SaveAnimatedWEBP":
            item = self._write(str(inputs["filename_prefix"]), ".webp", b"")
            path = os.path.join(self.output_dir, item["subfolder"], item["filename"])
            first, *rest = inputs["images"]
            first.save(
                path,
                save_all=True,
                append_images=rest,
                lossless=bool(inputs["lossless"]),
                quality=int(inputs["quality"]),
            )
            return [], {"images": [item], "animated": [True]}
        if kind == "VAEDecode":
            width, height = inputs["samples"]["samples"]
            return [[Image.new("RGB", (width * 8, height * 8), (128, 128, 128))]], None
        if kind == "CheckpointLoaderSimple":
            raise NodeFailure(f"Error while deserializing header: {inputs['ckpt_name']} is no checkpoint")
        if kind in ("SaveImage", "PreviewImage"):
            return [], {
                "images": self._save(inputs["images"], kind, inputs.get("filename_prefix", "ComfyUI"), prompt)
            }
        if kind == "StandinSlow":
            steps = int(inputs.get("steps", 4))
            for step in range(1, steps + 1):
                time.sleep(float(inputs.get("seconds", 1.0)) / steps)
                if self.interrupt.is_set():
                    raise Interrupted
                self.send(
                    "progress", {"value": step, "max": steps, "prompt_id": prompt_id, "node": nid}, None
                )
            return [inputs["image"]], None
        if kind == "StandinSlowSubmit":
            return [inputs["image"]], None
        if kind == "StandinSaveFile":
            time.sleep(float(inputs.get("seconds", 0.0)))  # deaf to interrupts, as one long node is
            item = self._write(f"files/{prompt_id[:8]}", "." + str(inputs["extension"]), b"standin file\n")
            return [], ({str(inputs["kind"]): [item]} if inputs.get("named", True) else None)
        if kind == "SaveLatent":
            width, height = inputs["samples"]["samples"]
            tensor = {
                "dtype": "F32",
                "shape": [1, 4, height, width],
                "data_offsets": [0, 16 * width * height],
            }
            header = {
                "latent_tensor": tensor,
                "latent_format_version_0": {
                    "dtype": "F32",
                    "shape": [0],
                    "data_offsets": [16 * width * height] * 2,
                },
            }
            if not self.args.disable_metadata:
                header["__metadata__"] = {"prompt": json.dumps(prompt)}
            head = json.dumps(header).encode()
            data = len(head).to_bytes(8, "little") + head + bytes(16 * width * height)
            return [], {
                "latents": [
                    self._write(str(inputs.get("filename_prefix", "latents/ComfyUI")), ".latent", data)
                ]
            }
        if kind == "StandinNoise":
            size = (int(inputs["width"]), int(inputs["height"]))
            return [[Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))]], None
        if kind == "StandinFail":
            raise NodeFailure(str(inputs.get("message", "standin failure")))
        if kind == "StandinCrash":
            os._exit(1)
        if kind == "GpuFault":
            if inputs.get("poison"):
                self.poisoned = str(inputs["fault"])
            error, message = GPU_FAULTS[str(inputs["fault"])]
            raise error(message)
        if kind == "WorkerPreflight":
            return [], None
        if kind == "StandinHang":
            assert self.loop is not None
            self.loop.call_soon_threadsafe(time.sleep, 3600)
            time.sleep(3600)
        if kind == "StandinDropSockets":
            assert self.loop is not None
            self.refuse_sockets_until = time.monotonic() + float(inputs.get("refuse_seconds", 0.0))
            for ws in list(self.sockets.values()):
                asyncio.run_coroutine_threadsafe(ws.close(), self.loop)
            time.sleep(float(inputs.get("seconds", 1.0)))
            return [inputs["image"]], None
        if kind in CUSTOM_NODES:  # ComfyUI's node API: FUNCTION returns a tuple or {"ui", "result"}
            node_class = CUSTOM_NODES[kind]
            declared = NODES[kind]["input"]["required"]  # inputs a node does not declare are not handed to it
            hidden = {  # what ComfyUI hands a node from the prompt's extra_data (execution.py)
                name: extra.get(HIDDEN_FROM_EXTRA[source])
                for name, source in node_class.INPUT_TYPES().get("hidden", {}).items()
                if source in HIDDEN_FROM_EXTRA
            }
            result = getattr(node_class(), node_class.FUNCTION)(
                **{k: v for k, v in inputs.items() if k in declared}, **hidden
            )
            if isinstance(result, dict):
                return list(result.get("result", ())), result.get("ui")
            return list(result), None
        raise NodeFailure(f"standin cannot execute {kind}")

    def _write(self, prefix: str, extension: str, data: bytes) -> dict:
        """One file in the output folder, named as ComfyUI names them (prefix_00001_.ext)."""
        full = os.path.abspath(os.path.join(self.output_dir, prefix))
        folder, stem = os.path.dirname(full), os.path.basename(full)
        os.makedirs(folder, exist_ok=True)
        counter = 1 + sum(1 for name in os.listdir(folder) if name.startswith(stem + "_"))
        name = f"{stem}_{counter:05}_{extension}"
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(data)
        subfolder = os.path.relpath(folder, self.output_dir)
        return {"filename": name, "subfolder": "" if subfolder == "." else subfolder, "type": "output"}

    def _save(self, images: list, kind: str, prefix: str, prompt: dict) -> list[dict]:
        if kind == "PreviewImage":
            base, folder_type = self.temp_dir, "temp"
            prefix = "ComfyUI_temp_" + "".join(random.choice(string.ascii_lowercase) for _ in range(5))
        else:
            base, folder_type = self.output_dir, "output"
        full = os.path.abspath(os.path.join(base, prefix))
        folder, stem = os.path.dirname(full), os.path.basename(full)
        if os.path.commonpath([folder, base]) != base:
            raise NodeFailure(
                "**** ERROR: Saving image outside the output folder is not allowed.\n"
                f" full_output_folder: {folder}\n         output_dir: {base}\n"
            )
        os.makedirs(folder, exist_ok=True)
        counter = 1 + max(
            (
                int(name[len(stem) + 1 : len(stem) + 6])
                for name in os.listdir(folder)
                if name.startswith(stem + "_") and name[len(stem) + 1 : len(stem) + 6].isdigit()
            ),
            default=0,
        )
        results = []
        subfolder = os.path.relpath(folder, base)
        for image in images:
            name = f"{stem}_{counter:05}_.png"
            info = None
            if not self.args.disable_metadata:
                info = PngImagePlugin.PngInfo()
                info.add_text("prompt", json.dumps(prompt))
            image.save(os.path.join(folder, name), pnginfo=info, compress_level=4)
            results.append(
                {"filename": name, "subfolder": "" if subfolder == "." else subfolder, "type": folder_type}
            )
            counter += 1
        return results

    # --- HTTP routes ---------------------------------------------------------------------------
    async def post_prompt(self, request: web.Request) -> web.Response:
        print("got prompt", flush=True)
        try:
            body = await request.json()
        except Exception:
            return web.Response(status=500, text=BARE_500)
        if not isinstance(body, dict) or "prompt" not in body:
            return web.json_response(
                error_body("no_prompt", "No prompt provided", "No prompt provided"), status=400
            )
        prompt = body["prompt"]
        if not isinstance(prompt, dict):
            return web.Response(status=500, text=BARE_500)
        slow = [
            n for n in prompt.values() if isinstance(n, dict) and n.get("class_type") == "StandinSlowSubmit"
        ]
        if slow:
            await asyncio.sleep(float(slow[0].get("inputs", {}).get("seconds", 1.0)))
        status, result, outputs = self.validate(prompt)
        if status != 200:
            return web.json_response(result, status=status)
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        number = -self.number if body.get("front") else self.number
        self.number += 1
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        heapq.heappush(self.queue, (number, prompt_id, prompt, extra, outputs))
        self.status()
        self.wake.set()
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": result})

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self.queue_remaining()}})

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "queue_running": [list(self.running)] if self.running else [],
                "queue_pending": [list(item) for item in self.queue],
            }
        )

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.queue = []
        if "delete" in body:
            self.queue = [item for item in self.queue if item[1] not in body["delete"]]
            heapq.heapify(self.queue)
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        target = body.get("prompt_id") if isinstance(body, dict) else None
        if self.running and (target is None or target == self.running[1]):
            self.interrupt.set()
        return web.Response(status=200)

    async def get_history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info.get("prompt_id")
        if prompt_id is not None:
            entry = self.history.get(prompt_id)
            return web.json_response({prompt_id: entry} if entry else {})
        items = list(self.history.items())
        if "max_items" in request.query:
            items = items[-int(request.query["max_items"]) :]
        return web.json_response(dict(items))

    async def post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.history.clear()
        for prompt_id in body.get("delete", []):
            self.history.pop(prompt_id, None)
        return web.Response(status=200)

    async def post_free(self, request: web.Request) -> web.Response:
        self.cache = {}
        return web.Response(status=200)

    async def get_view(self, request: web.Request) -> web.StreamResponse:
        name = request.query.get("filename")
        if not name:
            return web.Response(status=404)
        if name[0] == "/" or ".." in name:
            return web.Response(status=400)
        base = {"output": self.output_dir, "input": self.input_dir, "temp": self.temp_dir}.get(
            request.query.get("type", "output"), self.output_dir
        )
        folder = os.path.abspath(os.path.join(base, request.query.get("subfolder", "")))
        if os.path.commonpath([folder, base]) != base:
            return web.Response(status=403)
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return web.Response(status=404)
        return web.FileResponse(path, headers={"Content-Disposition": f'filename="{name}"'})

    async def post_upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        image = form.get("image")
        if image is None or not hasattr(image, "file"):
            return web.Response(status=400)
        base = {"output": self.output_dir, "temp": self.temp_dir}.get(
            str(form.get("type", "input")), self.input_dir
        )
        subfolder = str(form.get("subfolder", ""))
        folder = os.path.abspath(os.path.join(base, subfolder))
        if os.path.commonpath([folder, base]) != base:
            return web.Response(status=400)
        os.makedirs(folder, exist_ok=True)
        data = image.file.read()
        name = os.path.basename(image.filename)
        overwrite = str(form.get("overwrite", "")).lower() in ("true", "1")
        stem, ext = os.path.splitext(name)
        candidate, n = name, 1
        while not overwrite and os.path.exists(os.path.join(folder, candidate)):
            with open(os.path.join(folder, candidate), "rb") as existing:
                if existing.read() == data:
                    break
            candidate, n = f"{stem} ({n}){ext}", n + 1
        with open(os.path.join(folder, candidate), "wb") as handle:
            handle.write(data)
        return web.json_response(
            {"name": candidate, "subfolder": subfolder, "type": str(form.get("type", "input"))}
        )

    async def get_system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "system": {
                    "os": "posix",
                    "ram_total": 0,
                    "ram_free": 0,
                    "comfyui_version": VERSION,
                    "python_version": sys.version,
                    "pytorch_version": "standin",
                    "embedded_python": False,
                    "argv": sys.argv,
                },
                "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 0, "vram_free": 0}],
            }
        )

    async def get_object_info(self, request: web.Request) -> web.Response:
        name = request.match_info.get("node_class")
        if name is not None:
            return web.json_response({name: self._info(name)} if name in NODES else {})
        return web.json_response({name: self._info(name) for name in NODES})

    def inputs_of(self, name: str) -> dict:
        """A node's declared inputs; a model loader's list is the volume's files of its folder."""
        if name != "CheckpointLoaderSimple":
            return NODES[name]["input"]
        tooltip = NODES[name]["input"]["required"]["ckpt_name"][1]
        return {"required": {"ckpt_name": [self.model_names("checkpoints"), tooltip]}}

    def model_names(self, folder: str) -> list[str]:
        names = []
        for root in self.model_folders().get(folder, []):
            for current, _, files in os.walk(root):
                names.extend(
                    os.path.relpath(os.path.join(current, f), root)
                    for f in sorted(files)
                    if f.endswith(MODEL_EXTENSIONS)
                )
        return sorted(names)

    def _info(self, name: str) -> dict:
        info = NODES[name]
        return {
            "input": self.inputs_of(name),
            "output": info["output"],
            "name": name,
            "display_name": name,
            "output_node": info["output_node"],
        }

    def model_folders(self) -> dict[str, list[str]]:
        """Folder type -> directories, from --extra-model-paths-config (legacy names remapped)."""
        folders: dict[str, list[str]] = {}
        for config_path in self.args.extra_model_paths_config or []:
            with open(config_path) as handle:
                config = yaml.safe_load(handle) or {}
            for section in config.values():
                base = os.path.expandvars(os.path.expanduser(str(section.get("base_path", ""))))
                for key, value in section.items():
                    if key in ("base_path", "is_default"):
                        continue
                    key = LEGACY.get(key, key)
                    for line in str(value).split():
                        folders.setdefault(key, []).append(os.path.join(base, line))
        return folders

    async def get_models(self, request: web.Request) -> web.Response:
        folder = request.match_info.get("folder")
        folders = self.model_folders()
        if folder is None:
            return web.json_response(FOLDER_TYPES + sorted(set(folders) - set(FOLDER_TYPES)))
        if folder not in FOLDER_TYPES and folder not in folders:
            return web.Response(status=404)
        return web.json_response(self.model_names(folder))

    async def get_features(self, request: web.Request) -> web.Response:
        return web.json_response({"supports_preview_metadata": True, "max_upload_size": 104857600})

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if time.monotonic() < self.refuse_sockets_until:
            return web.Response(status=503)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        outbox: asyncio.Queue = asyncio.Queue()
        self.outboxes[ws] = outbox
        self.sockets[sid] = ws  # a reconnect with the same id replaces the old socket
        remaining = {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}, "sid": sid}
        outbox.put_nowait(json.dumps({"type": "status", "data": remaining}))
        # as ComfyUI's server.py: only while a node of this client's prompt runs, and only its id
        if self.running and self.running[3].get("client_id") == sid and self.running_node is not None:
            outbox.put_nowait(json.dumps({"type": "executing", "data": {"node": self.running_node}}))

        async def pump() -> None:
            while not ws.closed:
                await ws.send_str(await outbox.get())

        sender = asyncio.create_task(pump())
        try:
            async for _message in ws:
                continue
        finally:
            sender.cancel()
            self.outboxes.pop(ws, None)
            if self.sockets.get(sid) is ws:
                del self.sockets[sid]
        return ws


@web.middleware
async def origin_check(request: web.Request, handler):
    origin = request.headers.get("Origin")
    host = request.headers.get("Host", "")
    if origin and origin.split("://", 1)[-1] != host and host.split(":")[0] in ("127.0.0.1", "localhost"):
        return web.Response(status=403)
    return await handler(request)


def build_app(server: Server) -> web.Application:
    app = web.Application(middlewares=[origin_check], client_max_size=100 * 1024 * 1024)
    routes = [
        ("GET", "/ws", server.websocket),
        ("GET", "/system_stats", server.get_system_stats),
        ("GET", "/prompt", server.get_prompt),
        ("POST", "/prompt", server.post_prompt),
        ("GET", "/queue", server.get_queue),
        ("POST", "/queue", server.post_queue),
        ("POST", "/interrupt", server.post_interrupt),
        ("POST", "/free", server.post_free),
        ("GET", "/history", server.get_history),
        ("GET", "/history/{prompt_id}", server.get_history),
        ("POST", "/history", server.post_history),
        ("GET", "/view", server.get_view),
        ("POST", "/upload/image", server.post_upload),
        ("GET", "/object_info", server.get_object_info),
        ("GET", "/object_info/{node_class}", server.get_object_info),
        ("GET", "/features", server.get_features),
        ("GET", "/models", server.get_models),
        ("GET", "/models/{folder}", server.get_models),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, "/api" + path, handler)
    return app


CUSTOM_NODES: dict[str, type] = {}
HIDDEN_FROM_EXTRA = {"API_KEY_COMFY_ORG": "api_key_comfy_org", "AUTH_TOKEN_COMFY_ORG": "auth_token_comfy_org"}
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


def load_custom_nodes(folder: str) -> None:
    """Like ComfyUI: every module in custom_nodes/ beside main.py adds its NODE_CLASS_MAPPINGS,
    run inside this process."""
    for path in sorted(glob.glob(os.path.join(folder, "*.py"))):
        module_spec = importlib.util.spec_from_file_location(
            f"custom_nodes.{os.path.basename(path)[:-3]}", path
        )
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        for name, node_class in getattr(module, "NODE_CLASS_MAPPINGS", {}).items():
            required = node_class.INPUT_TYPES().get("required", {})
            NODES[name] = spec(
                {key: list(value) for key, value in required.items()},
                list(node_class.RETURN_TYPES),
                output_node=getattr(node_class, "OUTPUT_NODE", False),
            )
            CUSTOM_NODES[name] = node_class
        print(f"[standin] loaded custom nodes from {path}", flush=True)


def broken_gpu(args: argparse.Namespace) -> str | None:
    """The fault a `broken_gpu` file in the user directory names: this process's GPU is broken
    from its start."""
    try:
        with open(os.path.join(args.user_directory or "", "broken_gpu"), encoding="utf-8") as handle:
            fault = handle.read().strip()
    except OSError:
        return None
    return fault if fault in GPU_FAULTS else None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ComfyUI stand-in")
    parser.add_argument("--listen", default="127.0.0.1", nargs="?", const="0.0.0.0")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--input-directory")
    parser.add_argument("--output-directory")
    parser.add_argument("--temp-directory")
    parser.add_argument("--user-directory")
    parser.add_argument("--extra-model-paths-config", action="extend", nargs="+")
    parser.add_argument("--disable-metadata", action="store_true")
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--disable-auto-launch", action="store_true")
    args, _unknown = parser.parse_known_args(argv)  # ComfyUI has many more flags; accept them
    return args


async def serve(args: argparse.Namespace) -> None:
    server = Server(args)
    server.loop = asyncio.get_running_loop()
    runner = web.AppRunner(build_app(server), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.listen, args.port, backlog=256).start()
    print(f"To see the GUI go to: http://{args.listen}:{args.port}", flush=True)
    await server.worker()


def main() -> None:
    args = parse_args(sys.argv[1:])
    load_custom_nodes(os.path.join(os.path.dirname(os.path.abspath(__file__)), "custom_nodes"))
    print(f"[standin] ComfyUI stand-in {VERSION} argv={sys.argv[1:]}", flush=True)
    if os.environ.get("STANDIN_HELPER") == "1":
        helper = subprocess.Popen(["sleep", "3600"])
        print(f"[standin] helper pid {helper.pid}", flush=True)
    time.sleep(float(os.environ.get("STANDIN_BOOT_SECONDS", "0")))
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:  # SIGINT, supervisord's stop signal: ComfyUI exits cleanly too
        print("\nStopped server", flush=True)


if __name__ == "__main__":
    main()
