"""ComfyUI, an untrusted neighbour: installed at a pinned commit (`install`, standard library
only), launched by supervisord as its own user with an allow-listed environment (`launch`, then
the `relay` copy that runs it), one instance per GPU (`devices`, `pool`), on a driver its torch
runs on (`driver`).

    pool.execute(job) -> an idle ready instance -> executor: upload -> POST /prompt -> websocket
    until the end -> history -> outputs -> cleanup (after the answer)

`health` is the one answer to "does instance i take jobs"; `client` is ComfyUI's wire protocol
(docs/comfyui-protocol.md) and the only user of websocket-client. Guarantees: ComfyUI never holds
the worker's secrets; nothing of a job stays in its folders or history after the job.
"""
