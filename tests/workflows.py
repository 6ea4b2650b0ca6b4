"""Workflows and image helpers shared by the tests."""

from __future__ import annotations

import base64
import io

from PIL import Image


def empty_image(width: int = 64, height: int = 48, color: int = 0xFF0000, prefix: str = "test") -> dict:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def invert_upload(name: str = "red.png") -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"}},
    }


def invalid_workflow() -> dict:
    """Two validation errors ComfyUI words alike: a missing input and a value not in its list."""
    workflow = empty_image()
    del workflow["1"]["inputs"]["color"]
    workflow["3"] = {
        "class_type": "ImageScale",
        "inputs": {"image": ["1", 0], "upscale_method": "magic", "width": 8, "height": 8, "crop": "disabled"},
    }
    workflow["4"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}}
    return workflow


def with_knob(knob: str, color: int = 1, **inputs: object) -> dict:
    """EmptyImage -> <stand-in knob node> -> SaveImage."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": color},
        },
        "2": {"class_type": knob, "inputs": {"image": ["1", 0], **inputs}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "knob"}},
    }


def slow_workflow(steps: int = 6, color: int = 7) -> dict:
    """Seconds of lanczos scaling on this CPU, one node after another (interruptible between them).
    Another `color` is another graph, which ComfyUI's cache cannot shorten."""
    workflow = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 2048, "height": 2048, "batch_size": 1, "color": color},
        }
    }
    for n in range(2, steps + 2):
        size = 3072 if n % 2 else 2048
        workflow[str(n)] = {
            "class_type": "ImageScale",
            "inputs": {
                "image": [str(n - 1), 0],
                "upscale_method": "lanczos",
                "width": size,
                "height": size,
                "crop": "disabled",
            },
        }
    last = str(steps + 1)
    workflow["90"] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": [last, 0],
            "upscale_method": "nearest-exact",
            "width": 64,
            "height": 64,
            "crop": "disabled",
        },
    }
    workflow["91"] = {"class_type": "SaveImage", "inputs": {"images": ["90", 0], "filename_prefix": "slow"}}
    return workflow


def png_b64(width: int = 32, height: int = 24, rgb: tuple[int, int, int] = (255, 0, 0)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode_png(output: dict) -> Image.Image:
    assert output["mime"] == "image/png"
    data = base64.b64decode(output["data"])
    assert len(data) == output["size"]
    return Image.open(io.BytesIO(data))
