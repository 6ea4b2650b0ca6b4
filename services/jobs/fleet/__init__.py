"""The fleet's job store: async jobs of pods sharing one Redis (STATE_URL), submitted, polled
and cancelled on any pod, run by whichever pod has a free ComfyUI; when jobs wait, the API keys
take turns.

    store.SharedJobs    what the routes call: submit (a record, the request, the key's line, a
                        ticket in one stream), poll, cancel, the queue's length, close
    taking              a pod with room reads tickets and binds each to a job (turns by key)
    running             the job runs; it starts when its prompt leaves ComfyUI's queue, once, on
                        one pod; its outcome is written, or it goes back to the queue
    liveness            proof of life, tickets kept, silent pods' jobs answered worker_lost,
                        a dead API process's jobs released, tickets handed back
    deliveries          webhooks kept in the record, taken over from a silent pod
    keys, scripts/      every Redis key named once; the Lua scripts, each headed by its keys
    state_store         the connection, the scripts loaded by name, whether Redis answers

Records are kept JOB_KEEP_S after they end. Only `state_store` imports redis.
"""

from services.jobs.fleet.liveness import GROUP, release
from services.jobs.fleet.state_store import StateStore
from services.jobs.fleet.store import SharedJobs

__all__ = ["GROUP", "SharedJobs", "StateStore", "release"]
