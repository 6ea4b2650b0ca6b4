"""The ComfyUI worker: one job pipeline behind a pod API and a RunPod serverless handler."""
