"""Prometheus metrics: `GET /metrics` of the pod API and of the local queue, behind API_KEY.

Labels are outcomes and stable error codes only, never anything of a job. The job pipeline and
the downloads report through the small observer methods below (the local queue reports each job
it saw end); what can be read at any time (readiness, jobs in flight on the queue, ComfyUI's
starts) is read when Prometheus scrapes.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from services.comfy import starts
from services.core import drain, errors
from services.core.config import Settings
from services.jobs import outcome

if TYPE_CHECKING:
    from services.jobs.pipeline import Reply
    from services.models.job_models import JobModels

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JOB_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


def error_code(error: object) -> str:
    """The stable code in front of `<code>: <detail>`; "other" for anything else (an exception
    the runpod SDK reported as JSON)."""
    if not error:
        return ""
    code = str(error).split(":", 1)[0]
    return code if code.replace("_", "").replace(" ", "").isalpha() and len(code) <= 40 else "other"


Instances = Callable[[], list[dict]]  # each ComfyUI instance: {"id", "ready"} and, in the API, "busy"


class _JobMetrics:
    def __init__(self, settings: Settings, instances: Instances) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "comfy_worker_jobs", "Jobs by outcome and error code", ["outcome", "code"], registry=self.registry
        )
        self.duration = Histogram(
            "comfy_worker_job_duration_seconds",
            "Time to answer a job",
            buckets=JOB_SECONDS,
            registry=self.registry,
        )
        self.requests = Counter(
            "comfy_worker_requests",
            "Requests by the name of their API key (- for none known) and outcome: allowed, or the "
            "refusal's code (unauthorized, forbidden, quota_exceeded)",
            ["key_name", "outcome"],
            registry=self.registry,
        )
        self.key_jobs = Counter(
            "comfy_worker_key_jobs",
            "Jobs by the name of the API key that sent them and outcome",
            ["key_name", "outcome"],
            registry=self.registry,
        )
        self.registry.register(_Scraped(settings, instances))

    def ended(self, outcome: str, code: str, seconds: float, key: str = "-") -> None:
        self.duration.observe(seconds)
        self.jobs.labels(outcome, code).inc()
        self.key_jobs.labels(key, outcome).inc()

    def request_seen(self, key: str, outcome: str) -> None:
        self.requests.labels(key, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Metrics(_JobMetrics):
    """The pod API's: observer of the pipeline and of the downloads."""

    def __init__(self, settings: Settings, instances: Instances, waiting: Callable[[], int]) -> None:
        super().__init__(settings, instances)
        self.run_layout = settings.run_layout
        self.registry.register(_Waiting(waiting))
        self.in_flight = Gauge("comfy_worker_jobs_in_flight", "Jobs running now", registry=self.registry)
        self.envelopes = Counter(
            "comfy_worker_envelopes_opened",
            "Encrypted requests opened, by the id of the worker key that opened them",
            ["kid"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "comfy_worker_webhooks",
            "Webhook outcomes: delivered, failed for good, or retried (an attempt to be made again)",
            ["outcome"],
            registry=self.registry,
        )
        self.drained = Counter(
            "comfy_worker_drain_jobs",
            "Jobs that ended while the worker drained: finished, or cut by the drain's deadline",
            ["how"],
            registry=self.registry,
        )
        self.download_bytes = Counter(
            "comfy_worker_download_bytes", "Bytes received by model downloads", registry=self.registry
        )
        self.download_failures = Counter(
            "comfy_worker_download_failures",
            "Failed model downloads by error code",
            ["code"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "comfy_worker_job_queue_wait_seconds",
            "Time a job waited for a free ComfyUI instance",
            buckets=JOB_SECONDS,
            registry=self.registry,
        )
        self.run_time = Histogram(
            "comfy_worker_comfyui_run_seconds",
            "Time a job spent in its ComfyUI (with one instance, ComfyUI's own queue included)",
            buckets=JOB_SECONDS,
            registry=self.registry,
        )

    def watch_shared(self, jobs: SharedQueue) -> None:
        """The fleet's queue (STATE_URL): jobs waiting in it, taken over, lost with their pod."""
        self.registry.register(_Shared(jobs))

    def watch_models(self, models: JobModels) -> None:
        """On-demand models of jobs: cache hits, transfers, evictions (bytes: the downloads')."""
        self.registry.register(_Models(models))

    def job_started(self) -> None:
        self.in_flight.inc()

    def job_ended(self, reply: Reply, seconds: float, key: str) -> None:
        self.in_flight.dec()
        self.ended(outcome.of_reply(reply.status, reply.error_code), reply.error_code or "", seconds, key)
        if drain.since(self.run_layout) is not None:
            self.drained.labels("cut" if reply.error_code == errors.ShuttingDown.code else "finished").inc()

    def envelope_opened(self, kid: str) -> None:
        self.envelopes.labels(kid).inc()

    def job_timed(self, waited_s: float, ran_s: float) -> None:
        """From the pool (services.comfy.pool.ComfyPool.time_jobs)."""
        self.queue_wait.observe(waited_s)
        self.run_time.observe(ran_s)

    def webhook_attempted(self, outcome: str) -> None:
        self.webhooks.labels(outcome).inc()

    def received(self, size: int) -> None:
        self.download_bytes.inc(size)

    def download_failed(self, code: str) -> None:
        self.download_failures.labels(code).inc()


class QueueMetrics(_JobMetrics):
    """The local queue's (serverless off RunPod): jobs as the queue saw them end. An encrypted
    job's error travels sealed in its output, so there it counts as completed."""

    def __init__(
        self,
        settings: Settings,
        instances: Instances,
        in_flight: Callable[[], int],
    ) -> None:
        super().__init__(settings, instances)
        self.registry.register(_InFlight(in_flight))

    def job_ended(self, status: str, error: object, seconds: float, key: str = "-") -> None:
        self.ended(outcome.of_runpod(status), error_code(error), seconds, key)


class SharedQueue(Protocol):
    taken_over: int
    lost: int

    def queue(self) -> tuple[int | None, int] | None: ...


class _Shared:
    def __init__(self, jobs: SharedQueue) -> None:
        self.jobs = jobs

    def collect(self) -> Iterator[Metric]:
        queue = self.jobs.queue()
        if queue is not None:  # Redis does not answer: no sample rather than a wrong one
            lag, pending = queue
            yield GaugeMetricFamily(
                "comfy_worker_shared_jobs_waiting",
                "Async jobs in the fleet's queue that no pod has started",
                value=(lag or 0) + pending,
            )
            if lag is not None:
                yield GaugeMetricFamily(
                    "comfy_worker_fleet_queue_lag",
                    "Entries of the fleet's stream no pod has taken yet (XINFO GROUPS lag): what an "
                    "autoscaler scales on",
                    value=lag,
                )
        yield CounterMetricFamily(
            "comfy_worker_jobs_taken_over",
            "Jobs a silent pod took and never started, taken over by this pod",
            value=self.jobs.taken_over,
        )
        yield CounterMetricFamily(
            "comfy_worker_jobs_worker_lost",
            "Jobs this pod answered worker_lost for (their pod went silent)",
            value=self.jobs.lost,
        )


class _Models:
    def __init__(self, models: JobModels) -> None:
        self.models = models

    def collect(self) -> Iterator[Metric]:
        for name, value, what in (
            ("model_cache_hits", self.models.hits, "A job's model found on the volume (no transfer)"),
            ("model_transfers", self.models.transfers, "A job's model transferred by this worker"),
            (
                "model_evictions",
                self.models.cache.evictions,
                "On-demand models evicted by this worker (MODEL_CACHE_GB)",
            ),
        ):
            yield CounterMetricFamily(f"comfy_worker_{name}", what, value=value)


class _InFlight:
    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("comfy_worker_jobs_in_flight", "Jobs running now", value=self.count())


class _Waiting:
    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "comfy_worker_jobs_waiting", "Jobs waiting for a free ComfyUI instance", value=self.count()
        )


class _Scraped:
    """Values read when Prometheus asks; per ComfyUI instance under the label `comfy_instance`
    (Prometheus keeps `instance` for the scraped target)."""

    def __init__(self, settings: Settings, instances: Instances) -> None:
        self.settings = settings
        self.instances = instances

    def collect(self) -> Iterator[Metric]:
        views = self.instances()
        draining = drain.since(self.settings.run_layout) is not None
        ready = (self.settings.dry_run or any(view["ready"] for view in views)) and not draining  # as /readyz
        yield GaugeMetricFamily("comfy_worker_ready", "1 when a job would run now", value=int(ready))
        yield GaugeMetricFamily(
            "comfy_worker_draining", "1 while the worker takes no new work (POST /drain)", value=int(draining)
        )
        each_ready = GaugeMetricFamily(
            "comfy_worker_comfyui_ready", "1 when the ComfyUI instance takes jobs", labels=["comfy_instance"]
        )
        each_busy = GaugeMetricFamily(
            "comfy_worker_comfyui_busy", "1 while the ComfyUI instance runs a job", labels=["comfy_instance"]
        )
        broken = GaugeMetricFamily(
            "comfy_worker_comfyui_broken",
            "1 when the ComfyUI instance is out for good: its GPU kept failing (GPU_OUT_AFTER)",
            labels=["comfy_instance"],
        )
        restarts = CounterMetricFamily(
            "comfy_worker_comfyui_restarts", "ComfyUI (re)starts after its first", labels=["comfy_instance"]
        )
        for view in views:
            label = [str(view["id"])]
            each_ready.add_metric(label, int(view["ready"]))
            broken.add_metric(label, int(view.get("broken") is not None))
            if "busy" in view:
                each_busy.add_metric(label, int(view["busy"]))
            count = starts.read(self.settings.instance(view["id"]).comfy_starts_file)
            restarts.add_metric(label, max(count - 1, 0))
        yield each_ready
        yield broken
        if each_busy.samples:
            yield each_busy
        yield restarts
        yield from _volume(self.settings.model_dir)


def _volume(folder: str) -> Iterator[Metric]:
    """The model volume's size and free space (nothing while it is not there)."""
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return
    yield GaugeMetricFamily(
        "comfy_worker_model_volume_size_bytes", "Size of the model volume", value=usage.total
    )
    yield GaugeMetricFamily(
        "comfy_worker_model_volume_free_bytes", "Free space on the model volume", value=usage.free
    )
