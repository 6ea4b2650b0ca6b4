"""A fleet job's webhook: sent by the pod that ran the job, kept in its record while it is
pending (its URL sealed to the worker's key, services.jobs.envelopes), and taken over from the
attempt where it left off when that pod goes silent or stops."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from services.core import errors, tracing
from services.jobs import envelopes
from services.jobs.fleet.records import Records, text
from services.jobs.fleet.state_store import Error
from services.jobs.fleet.taken import Part, Pod
from services.jobs.webhooks import FAILED, PENDING, Delivery, Webhooks

log = logging.getLogger("worker.jobs")


class Deliveries(Part):
    def __init__(
        self, pod: Pod, records: Records, keyring: envelopes.Keyring | None, webhooks: Webhooks | None
    ) -> None:
        super().__init__(pod)
        self.records = records
        self.keyring = keyring
        self.webhooks = webhooks
        self.delivering: set[str] = set()  # job ids whose webhook this pod delivers
        self._claim = pod.store.script("claim_webhook")
        self._kept = pod.store.script("webhook_kept")
        self._changed = pod.store.script("webhook_changed")

    def send(
        self,
        job_id: str,
        url: str,
        body: str,
        delivery: Delivery | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> None:
        """`delivery`: where a delivery taken over left off (None: a new one, kept in the
        record first); `trace`: the job's span, or its submission's for a delivery taken over."""
        if self.webhooks is None:
            return
        if delivery is None:
            kept_url = envelopes.keep_secret(url, self.keyring) if self.keyring else url
            try:  # not when the record expired: a key written anew would never expire
                self._kept(
                    keys=[self.names.job(job_id), self.names.webhooks],
                    args=[kept_url, body, self.name, job_id],
                )
            except Error as exc:
                self.store.reached(False, exc)  # delivered all the same, by this pod only
        self.delivering.add(job_id)
        self.webhooks.send(
            url, body, job_id, delivery, lambda d: self._changed_to(job_id, d), hold=False, trace=trace
        )

    def _changed_to(self, job_id: str, delivery: Delivery) -> None:
        try:  # the record keeps its TTL: an expired one is not written anew
            self._changed(
                keys=[self.names.job(job_id), self.names.webhooks],
                args=[delivery.state, delivery.attempts, delivery.last_status or "", job_id],
            )
        except Error as exc:
            self.store.reached(False, exc)
        if delivery.state != PENDING:
            self.delivering.discard(job_id)

    def take_over(self) -> None:
        """Deliveries whose pod went silent or stopped, from the attempt where it left off."""
        if self.webhooks is None:
            return
        for job_id in map(text, self.store.redis.smembers(self.names.webhooks)):
            if job_id in self.delivering:
                continue
            claimed = self._claim(
                keys=[self.names.job(job_id), self.names.webhooks],
                args=[self.name, job_id, self.names.pod("")],
            )
            if not claimed:
                continue
            record = self.records.read(job_id)
            attempts = int(record.get("webhook_attempts") or 0)
            try:
                url = (
                    envelopes.open_secret(record["webhook_url"], self.keyring)
                    if self.keyring
                    else record["webhook_url"]
                )
            except (errors.InvalidCiphertext, KeyError):
                log.warning(
                    "the pending webhook of job %s is sealed to none of this pod's keys: it fails",
                    job_id,
                    extra={"event": "webhook.failed", "job_id": job_id},
                )
                self._changed_to(job_id, Delivery(FAILED, attempts))
                continue
            log.info(
                "took over the pending webhook of job %s from a pod that went silent or stopped",
                job_id,
                extra={"event": "webhook.taken_over", "job_id": job_id},
            )
            self.send(
                job_id, url, record["webhook_body"], Delivery(attempts=attempts), tracing.carried(record)
            )

    def hand_back(self) -> None:
        """Webhooks still pending here go to whichever pod looks next (at least once: one this
        pod is sending may be sent again)."""
        try:
            for job_id in list(self.delivering):
                self.records.set_kept(job_id, "webhook_owner", "")
        except Error as exc:
            log.warning(
                "could not hand back pending webhooks (%s); taken over once this pod is silent",
                type(exc).__name__,
            )
