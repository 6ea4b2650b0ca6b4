"""Every output kind ComfyUI reports is fetched through /view (or inlined, for text)."""

import base64
import os
import time

from services.comfy.executor import ComfyExecutor
from services.core import config


class FakeClient:
    def __init__(self):
        self.viewed = []

    def view(self, filename, subfolder, folder_type):
        self.viewed.append((filename, subfolder, folder_type))
        return f"bytes of {filename}".encode(), "application/octet-stream"


def test_every_kind_with_files_or_text_is_returned_whatever_its_name():
    client = FakeClient()
    executor = ComfyExecutor(config.load({"ENCRYPTION_REQUIRED": "0"}), client)
    entry = {
        "outputs": {
            "9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]},
            "10": {
                "gifs": [
                    {"filename": "b.mp4", "subfolder": "vid", "type": "output", "format": "video/h264-mp4"}
                ]
            },
            "11": {"audio": [{"filename": "c.flac", "subfolder": "", "type": "output"}]},
            "12": {"text": ["a caption"]},
            "13": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}], "animated": [False]},
            "14": {"latents": [{"filename": "l_00001_.latent", "subfolder": "latents", "type": "output"}]},
            "15": {"3d": [{"filename": "m.glb", "subfolder": "mesh", "type": "output"}]},
            "16": {"result": ["mesh/m.glb", None]},
            "17": {"point_clouds": [{"filename": "p.ply", "subfolder": "", "type": "output"}]},
        }
    }
    outputs = executor.outputs.read(entry)
    kinds = [(o["node_id"], o["type"], o["mime"]) for o in outputs]
    assert kinds == [
        ("9", "images", "image/png"),
        ("10", "gifs", "video/mp4"),
        ("11", "audio", "audio/flac"),
        ("12", "text", "text/plain"),
        ("13", "images", "image/png"),
        ("14", "latents", "application/octet-stream"),
        ("15", "3d", "model/gltf-binary"),
        ("16", "result", "text/plain"),
        ("17", "point_clouds", "application/octet-stream"),
    ]
    assert ("b.mp4", "vid", "output") in client.viewed and ("p.png", "", "temp") in client.viewed
    text = next(o for o in outputs if o["type"] == "text")
    assert base64.b64decode(text["data"]) == b"a caption" and text["filename"] is None
    assert all(o["size"] == len(base64.b64decode(o["data"])) for o in outputs)


class BootingClient:
    """ComfyUI whose port answers once the relay has written its ready file."""

    def __init__(self, ready_file):
        self.ready_file = ready_file
        self.asked = 0

    def ready(self, timeout=2.0):
        self.asked += 1
        return os.path.exists(self.ready_file)


def test_a_waiting_job_asks_comfyui_the_moment_the_relay_says_it_booted(tmp_path):
    import threading

    settings = config.load({"ENCRYPTION_REQUIRED": "0", "RUN_DIR": str(tmp_path)})
    ready_file = settings.run_layout.ready_file(settings.comfy_program)
    os.makedirs(os.path.dirname(ready_file))
    client = BootingClient(ready_file)
    executor = ComfyExecutor(settings, client)
    assert not executor.until_answers(time.monotonic() + 1.2)
    assert client.asked <= 4  # a booting ComfyUI is not hammered over HTTP

    asked_before = []

    def boot():
        asked_before.append(client.asked)
        with open(ready_file, "w") as handle:
            handle.write("1234")

    threading.Timer(0.3, boot).start()
    assert executor.until_answers(time.monotonic() + 60)
    assert client.asked <= asked_before[0] + 2  # asked when the file appeared (a tick may fall between)
