"""Every output kind ComfyUI reports is fetched through /view (or inlined, for text)."""

import base64

from services import config
from services.comfy.executor import ComfyExecutor


class FakeClient:
    def __init__(self):
        self.viewed = []

    def view(self, filename, subfolder, folder_type):
        self.viewed.append((filename, subfolder, folder_type))
        return f"bytes of {filename}".encode(), "application/octet-stream"


def test_images_gifs_videos_audio_and_text_are_all_returned():
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
        }
    }
    outputs = executor._fetch_outputs(entry)
    kinds = [(o["node_id"], o["type"], o["mime"]) for o in outputs]
    assert kinds == [
        ("9", "images", "image/png"),
        ("10", "gifs", "video/mp4"),
        ("11", "audio", "audio/flac"),
        ("12", "text", "text/plain"),
        ("13", "images", "image/png"),
    ]
    assert ("b.mp4", "vid", "output") in client.viewed and ("p.png", "", "temp") in client.viewed
    text = next(o for o in outputs if o["type"] == "text")
    assert base64.b64decode(text["data"]) == b"a caption" and text["filename"] is None
    assert all(o["size"] == len(base64.b64decode(o["data"])) for o in outputs)


class HistoryClient:
    def __init__(self, running):
        self.running = running
        self.deleted = []

    def queue(self):
        return {"queue_running": [[0, pid, {}, {}, []] for pid in self.running], "queue_pending": []}

    def delete_history(self, ids):
        self.deleted.append(list(ids))


def test_history_of_a_prompt_still_running_is_deleted_by_a_later_sweep():
    client = HistoryClient(running={"slow"})
    executor = ComfyExecutor(config.load({"ENCRYPTION_REQUIRED": "0"}), client)
    executor._unswept = {"slow", "done"}
    executor._sweep_history()
    assert client.deleted == [["done", "slow"]] and executor._unswept == {"slow"}
    client.running = set()
    executor._sweep_history()
    assert client.deleted[-1] == ["slow"] and executor._unswept == set()
