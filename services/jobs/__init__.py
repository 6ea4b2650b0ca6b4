"""What a job passes through, the same for both modes.

    worker.build_worker(settings) wires: shared state (STATE_URL) -> ComfyUI pool -> the model
    volume's downloads -> pipeline

    pipeline.run(body): envelope (v1 JSON or envelope_v2 bytes; + replay guard) -> a template call filled in (templates,
    template_params, template_catalog) -> payload checks (job_request, image_fetch) ->
    the job's models on the volume -> (DRY_RUN stops here) -> ComfyUI (the pool) -> answer shape
    (worker_comfyui) -> result cap (output_store) -> seal

Async jobs live in a job store (`async_jobs.JobStore`): in this process, or in the fleet's Redis
(`shared_jobs`, `state_store`). How a job ended is named once in `outcome`, RunPod's protocol in
`runpod_protocol`; `webhooks` tells a job's URL of its end; `metrics` observes jobs. Guarantees: the pipeline never raises and never puts a
workflow, prompt or output of an encrypted job into a log, a plaintext answer or Redis.
"""
