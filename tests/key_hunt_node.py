"""A hostile custom node for the privacy tests: from inside ComfyUI it looks everywhere a
custom node could for the worker's secrets and reports where it found one. The tests copy it
into ComfyUI's custom_nodes/ (the stand-in's and the real one's); the product never loads it."""

import os


class KeyHunt:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"needles": ("STRING", {"default": ""}), "places": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "hunt"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def hunt(self, needles, places):
        wanted = [n for n in needles.split("|") if n]
        found = []

        def look(where, text):
            found.extend(f"{where}" for needle in wanted if needle in text)

        look("its own environment", "\n".join(f"{k}={v}" for k, v in os.environ.items()))
        for pid in filter(str.isdigit, os.listdir("/proc")):
            for part in ("environ", "cmdline"):
                try:
                    with open(f"/proc/{pid}/{part}", "rb") as handle:
                        look(f"/proc/{pid}/{part}", handle.read().decode("utf-8", "replace"))
                except OSError:
                    continue
        for place in filter(None, places.split("|")):
            paths = (
                [place]
                if os.path.isfile(place)
                else [os.path.join(folder, name) for folder, _, names in os.walk(place) for name in names]
            )
            for path in paths:
                try:
                    with open(path, "rb") as handle:
                        look(path, handle.read(1 << 20).decode("utf-8", "replace"))
                except OSError:
                    continue
        return {"ui": {"text": ["\n".join(sorted(set(found))) or "nothing"]}}


NODE_CLASS_MAPPINGS = {"KeyHunt": KeyHunt}
