"""The HTTP pieces both Flask apps use, the pod API (services.api) and the local queue of
serverless mode (services.handler.local_queue), which may not import each other:

    answers          JSON answers, the error mapping (a `WorkerError` to its status, a bug to a
                     code, never a traceback) and the body limit (MAX_REQUEST_MB)
    key_checks       which key calls and whether it has a route's scope, and a refusal's line
    runpod_protocol  RunPod's public job protocol, as both RunPod-style servers speak it
"""
