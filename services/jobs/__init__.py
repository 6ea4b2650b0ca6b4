"""What a job passes through, the same for both modes.

    worker.build_worker(settings) wires: shared state (STATE_URL) -> ComfyUI pool -> the model
    volume's downloads -> pipeline

    pipeline.run(body): envelopes.open_body (v1 JSON or v2 bytes; + the replay guard) -> the job:
    templates.prepare for a template call, else job_request.parse (both read their images with
    input_images) -> the job's models on the volume (quotas) -> (DRY_RUN stops here) -> ComfyUI
    (the pool) -> answer shape (worker_comfyui) -> result cap (output_store) ->
    envelopes.seal_answer

Three wings, each with one entry: `envelopes`, `templates`, `fleet`. Async jobs live in a job
store (`async_jobs.JobStore`): in this process, or in the fleet's Redis (`fleet`). The store
owns a job from its start to its end: its key's name, its quota slot (`quotas.Slot`, kept from
the request that took it), its drain piece and its trace; a job is `running` in either store
once its prompt left ComfyUI's queue (JobRequest.on_start). How a job
ended is named once in `outcome`; `access` reads the keys, `quotas` counts their limits;
`webhooks` tells a job's URL of its end; `metrics` observes jobs. Guarantees: the pipeline never
raises and never puts a workflow, prompt or output of an encrypted job into a log, a plaintext
answer or Redis.
"""
