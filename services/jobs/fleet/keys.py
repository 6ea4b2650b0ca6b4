"""The fleet's Redis keys, each named here once, all under STATE_PREFIX (several fleets may
share one Redis). The scripts (scripts/*.lua) build the per-job and per-key names from `root`.

    job:<id>               hash    a job's record: state, key, created, traceparent, slot; owner
                                   and started once it runs; finished, result, http_status at its
                                   end; progress, cancel, webhook_* while it lives
    body:<id>              string  its request as sent (an envelope stays sealed), until it starts
    waiting:<key>          list    a key's jobs that wait, first come first
    waiting                set     the keys with jobs waiting
    inflight:<key>         zset    a key's jobs taken across the fleet, scored by when they stop counting
                                   (JOB_TIMEOUT_S and JOB_CLAIM_TIMEOUT_S after they were taken)
    served                 hash    key -> its turn (the turn it was last served at)
    turns                  string  the turn counter
    jobs                   stream  one ticket per waiting job, read in the consumer group `workers`
    tickets                hash    stream entry -> the job it was bound to
    running                set     the jobs running on some pod
    webhooks               set     the jobs whose webhook is still pending
    pod:<name>             string  a pod process's proof of life, expiring after JOB_CLAIM_TIMEOUT_S
    seen:<sha256>          string  an envelope seen within REPLAY_WINDOW_S (services.jobs.envelopes)
    quota:slots:<key>      hash    slot -> the pod process holding it (services.jobs.quotas)
    quota:bytes:<key>:<d>  string  the bytes a key's downloads wrote on UTC day <d>
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Names:
    prefix: str

    def _name(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def root(self) -> str:
        """What every name begins with: the scripts build per-job and per-key names from it."""
        return self._name("")

    def job(self, job_id: str) -> str:
        return self._name("job", job_id)

    def body(self, job_id: str) -> str:
        return self._name("body", job_id)

    def waiting(self, key: str) -> str:
        return self._name("waiting", key)

    @property
    def waiting_keys(self) -> str:
        return self._name("waiting")

    @property
    def served(self) -> str:
        return self._name("served")

    @property
    def turns(self) -> str:
        return self._name("turns")

    @property
    def stream(self) -> str:
        return self._name("jobs")

    @property
    def tickets(self) -> str:
        return self._name("tickets")

    @property
    def running(self) -> str:
        return self._name("running")

    @property
    def webhooks(self) -> str:
        return self._name("webhooks")

    def pod(self, name: str) -> str:
        return self._name("pod", name)

    def seen(self, digest: str) -> str:
        return self._name("seen", digest)

    def quota_slots(self, key: str) -> str:
        return self._name("quota", "slots", key)

    def quota_bytes(self, key: str, day: int) -> str:
        return self._name("quota", "bytes", key, str(day))
