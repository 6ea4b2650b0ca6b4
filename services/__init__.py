"""comfy-worker: ComfyUI workflows served on rented GPUs, as a pod API or a RunPod serverless
worker, with ComfyUI supervised beside it.

Packages by kind, imports only downwards (checked by `make lint`, contracts in pyproject.toml):

    api | handler | container     the adapters (pod API, serverless handler) and the container's life
    jobs                          what a job passes through: envelope -> checks -> models -> ComfyUI -> seal
    comfy                         ComfyUI: install, launch, health, the pool, the protocol client
    models                        the model volume: downloads, cache, locks
    core                          settings, errors, logs, offload, codecs, job spec types, RUN_DIR layout
"""
