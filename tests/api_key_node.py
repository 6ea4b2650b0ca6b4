"""A custom node for the worker-comfyui tests: it declares ComfyUI's hidden Comfy.org API key
input, as ComfyUI's API nodes do, and shows the sha256 of what it was handed (never the key).
The tests copy it into ComfyUI's custom_nodes/ (the stand-in's and the real one's)."""

import hashlib


class ApiKeyProbe:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"label": ("STRING", {"default": "probe"})},
            "hidden": {"api_key": "API_KEY_COMFY_ORG"},
        }

    RETURN_TYPES = ()
    FUNCTION = "probe"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def probe(self, label, api_key=None):
        seen = hashlib.sha256(api_key.encode()).hexdigest() if api_key else "no key"
        return {"ui": {"text": [seen]}}


NODE_CLASS_MAPPINGS = {"ApiKeyProbe": ApiKeyProbe}
