"""Serverless (LAUNCH_MODE=serverless): the runpod SDK's worker loop calling the pipeline
(`main`), and off RunPod a local RunPod-style queue for it to poll (`local_queue`, `job_queue`).

Guarantees: a job's failure is `{"error": ...}` (a FAILED job), never a traceback; a cancel
interrupts ComfyUI; progress of an encrypted job is a bare percentage.
"""
