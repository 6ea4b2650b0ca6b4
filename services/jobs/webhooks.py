"""Webhooks: a POST to the URL a job named in its `webhook` field when the job ends, signed the
Standard Webhooks way when WEBHOOK_SECRET is set, delivered at least once from the background.

The body is `{"type": "job.completed" | "job.failed" | "job.cancelled", "timestamp", "data"}`,
`data` being what polling the job returns (sealed for an encrypted job); above WEBHOOK_MAX_KB the
result is left out (`"result_omitted": "too_large"`) and stays fetchable. Attempts follow
WEBHOOK_RETRY_S after the job's end (with jitter, or later when the receiver's Retry-After says
so), each within WEBHOOK_TIMEOUT_S and freshly signed under the same `webhook-id`: a 2xx is
delivered; a refused connection, 408, 429 and 5xx are tried again; 410, any other 4xx and a
redirect (never followed) end it. The URL is checked like a download's (services.models.url_guard,
the checked address is the one connected to) and never appears in a log, a status or an error;
the receiver's answer is not read.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from standardwebhooks.webhooks import Webhook

from services.core import background, errors, json_text, tracing
from services.core.config import Settings
from services.core.in_hand import InHand
from services.core.offload import offload
from services.models import url_guard

log = logging.getLogger("worker.webhooks")
MAX_URL = 2048
RETRY_AFTER_MAX_S = 600  # a receiver's Retry-After is honoured up to this
RETRIED = (408, 429)
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def requested(payload: Any, settings: Settings) -> str | None:
    """The `webhook` a job's payload asks for, checked; None when it asks for none."""
    url = payload.get("webhook") if isinstance(payload, dict) else None
    if url is None:
        return None
    try:
        parts = url_guard.split(url if isinstance(url, str) and len(url) <= MAX_URL else None)
    except errors.UrlNotAllowed:
        raise errors.InvalidWebhook(
            f"'webhook' must be a well-formed http(s) URL of at most {MAX_URL} characters"
        ) from None
    try:
        url_guard.resolve(parts.hostname, url_guard.port_of(parts), settings.allow_private_webhooks)
    except errors.UrlNotAllowed:
        raise errors.InvalidWebhook(
            "the webhook's host does not resolve, or to a private, loopback or link-local address "
            "(ALLOW_PRIVATE_WEBHOOKS=1 allows private ones)"
        ) from None
    return url


def event(state: str, data: dict, settings: Settings) -> str:
    """The body of a job's webhook, as sent: the result left out above WEBHOOK_MAX_KB."""
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = {"type": f"job.{state}", "timestamp": stamp, "data": data}
    size, cap = json_text.size_hint(body), settings.webhook_max_kb * 1024
    if size <= 2 * cap:  # a result far over the cap is not encoded at all
        text = offload(json_text.dumps, body, size=size)
        if len(text) <= cap:
            return text
    kept = {k: v for k, v in data.items() if k not in ("result", "output")}
    return json_text.dumps({**body, "data": {**kept, "result_omitted": "too_large"}})


@dataclass
class Delivery:
    """What a job's record shows of its webhook: never the URL."""

    state: str = PENDING
    attempts: int = 0
    last_status: int | None = None
    ended: threading.Event = field(default_factory=threading.Event, repr=False)

    def view(self) -> dict:
        return {"state": self.state, "attempts": self.attempts, "last_status": self.last_status}


class WebhookObserver(Protocol):
    """What the pod API's metrics learn of deliveries (services.jobs.metrics)."""

    def webhook_attempted(self, outcome: str) -> None:
        """`delivered`, `failed` (for good) or `retried` (an attempt to be made again)."""


class Webhooks:
    def __init__(
        self, settings: Settings, in_hand: InHand | None = None, observer: WebhookObserver | None = None
    ) -> None:
        """`in_hand`: a delivery is held there, so a drain waits for it."""
        self.settings = settings
        self.in_hand = in_hand
        self.observer = observer
        self.signers = [Webhook(key) for key in (settings.webhook_secret or "").split()]

    def send(
        self,
        url: str,
        body: str,
        message_id: str,
        delivery: Delivery | None = None,
        on_change: Callable[[Delivery], None] | None = None,
        hold: bool = True,
        trace: Mapping[str, str] | None = None,
    ) -> Delivery:
        """Deliver `body` to `url` in the background, from `delivery.attempts` on; `on_change`
        after each attempt; `hold`: a drain waits for it (a fleet's pods take it over instead);
        `trace`: the job's span, which each attempt's span continues."""
        delivery = delivery or Delivery()
        held = self.in_hand.hold("webhook") if self.in_hand and hold else None
        background.start("webhook", self._deliver, url, body, message_id, delivery, held, on_change, trace)
        return delivery

    def headers(self, message_id: str, body: str) -> dict[str, str]:
        """Signed now: a late retry carries a fresh timestamp the receiver accepts."""
        now = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "comfy-worker-webhooks",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
        }
        if self.signers:
            headers["webhook-signature"] = " ".join(s.sign(message_id, now, body) for s in self.signers)
        return headers

    def _deliver(
        self,
        url: str,
        body: str,
        message_id: str,
        delivery: Delivery,
        held: Any,
        on_change: Callable[[Delivery], None] | None,
        trace: Mapping[str, str] | None,
    ) -> None:
        try:
            schedule = self.settings.webhook_retry_s
            wait = 0.0 if delivery.attempts else schedule[0]  # a delivery taken over goes at once
            while True:
                time.sleep(wait * random.uniform(0.9, 1.1))
                with tracing.span("webhook.attempt", trace, **{"job.id": message_id}) as attempt:
                    outcome, retry_after = self._attempt(url, body, message_id, delivery)
                    attempt.set(
                        **{
                            "webhook.attempt": delivery.attempts,
                            "webhook.outcome": outcome,
                            "http.response.status_code": delivery.last_status,
                        }
                    )
                if outcome == "retry" and delivery.attempts < len(schedule):
                    self._observed("retried")
                    if on_change is not None:
                        on_change(delivery)
                    step = schedule[delivery.attempts] - schedule[delivery.attempts - 1]
                    wait = max(step, retry_after or 0.0)
                    continue
                delivery.state = DELIVERED if outcome == "delivered" else FAILED
                self._observed(delivery.state)
                log.info(
                    "webhook of job %s %s after %d attempt(s)",
                    message_id,
                    delivery.state,
                    delivery.attempts,
                    extra={"event": f"webhook.{delivery.state}", "job_id": message_id},
                )
                return
        finally:
            if delivery.state == PENDING:
                delivery.state = FAILED
            if on_change is not None:
                on_change(delivery)
            delivery.ended.set()
            if held is not None:
                held.release()

    def _attempt(self, url: str, body: str, message_id: str, delivery: Delivery) -> tuple[str, float | None]:
        """One POST: `delivered`, `retry` (with the receiver's Retry-After, if any) or `stop`."""
        delivery.attempts += 1
        try:
            response = url_guard.post(
                url,
                body.encode(),
                self.headers(message_id, body),
                self.settings.allow_private_webhooks,
                self.settings.webhook_timeout_s,
            )
        except (errors.DownloadFailed, errors.UrlNotAllowed):
            delivery.last_status = None
            return "retry", None
        with response:
            delivery.last_status = code = response.status_code
        if 200 <= code < 300:
            return "delivered", None
        if code in RETRIED or code >= 500:
            return "retry", _retry_after(response.headers.get("Retry-After"))
        return "stop", None

    def _observed(self, outcome: str) -> None:
        if self.observer is not None:
            self.observer.webhook_attempted(outcome)


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value), RETRY_AFTER_MAX_S)
