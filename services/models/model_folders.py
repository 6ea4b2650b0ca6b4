"""ComfyUI's model folder types and the folders each one reads (docs/comfyui-protocol.md).

One table for everything that touches the model volume: the `extra_model_paths.yaml` given to
ComfyUI, and (later) downloads and listings, so a type name means the same folders everywhere.
"""

from __future__ import annotations

FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "configs": ("configs",),
    "loras": ("loras",),
    "vae": ("vae",),
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("diffusion_models", "unet"),
    "clip_vision": ("clip_vision",),
    "style_models": ("style_models",),
    "embeddings": ("embeddings",),
    "diffusers": ("diffusers",),
    "vae_approx": ("vae_approx",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "gligen": ("gligen",),
    "upscale_models": ("upscale_models",),
    "hypernetworks": ("hypernetworks",),
    "photomaker": ("photomaker",),
    "classifiers": ("classifiers",),
    "model_patches": ("model_patches",),
    "audio_encoders": ("audio_encoders",),
}


def extra_model_paths_yaml(model_dir: str, baked_dir: str | None = None, nodes: str | None = None) -> str:
    """The yaml that makes every folder under `model_dir` (where downloads go) and under the
    image's own `baked_dir` visible to ComfyUI's loaders, and `nodes` (the worker's own nodes)
    one of its custom_nodes folders."""
    lines = []
    if nodes is not None:
        lines += ["worker_nodes:", f"    custom_nodes: {_quote(nodes)}"]
    for section, base, default in (("worker_models", model_dir, True), ("image_models", baked_dir, False)):
        if base is None:
            continue
        lines += [f"{section}:", f"    base_path: {_quote(base)}", f"    is_default: {str(default).lower()}"]
        for key, folders in FOLDERS.items():
            if len(folders) == 1:
                lines.append(f"    {key}: {folders[0]}")
            else:
                lines.append(f"    {key}: |")
                lines.extend(f"        {folder}" for folder in folders)
    return "\n".join(lines) + "\n"


def _quote(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"
