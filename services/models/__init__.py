"""The model volume (COMFYUI_MODEL_DIR), shared by every worker that mounts it.

    /download items and a job's `models` -> downloads.plan (names, SSRF guard) -> volume lock
    beside the target -> `.part`, resumed, checked, fsynced -> rename -> cache record

Guarantees: a file appears under its final name whole or not at all; no name leaves the model
root; one transfer per file across processes and machines (lock files with a heartbeat, taken
over when stale); the on-demand cache never evicts a file a running job uses or the operator
placed; errors never name a URL's credentials.
"""
