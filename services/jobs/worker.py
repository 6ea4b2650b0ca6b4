"""One wiring for both modes: the settings become a worker, built the same way by the pod API
and by the serverless handler.

    settings -> shared state (STATE_URL only) -> ComfyUI pool (one executor and warm-up per
    instance) -> downloads and a job's models on the volume -> the pipeline

What differs by mode is said by the caller: the pod API observes jobs for its metrics; the
serverless worker caps answers (MAX_RESULT_MB, RunPod refuses large results) and moves large
outputs to the bucket.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from services.comfy.pool import ComfyPool
from services.comfy.warmup import start_warmup
from services.core import background, tracing
from services.core.config import Settings
from services.core.in_hand import InHand
from services.jobs.access import Keys
from services.jobs.async_jobs import AsyncJobs, JobStore
from services.jobs.output_store import OutputStore
from services.jobs.pipeline import JobObserver, Pipeline
from services.jobs.quotas import JobModelLimits, Quotas
from services.jobs.templates import Catalog, Templates
from services.jobs.webhooks import WebhookObserver, Webhooks
from services.models.downloads import DownloadObserver, Downloads
from services.models.job_models import JobModels

if TYPE_CHECKING:  # redis is imported only by workers that set STATE_URL
    from services.jobs.fleet.state_store import StateStore


@dataclass(frozen=True)
class Worker:
    settings: Settings
    pool: ComfyPool
    downloads: Downloads
    models: JobModels
    pipeline: Pipeline
    state: StateStore | None  # the fleet's Redis, with STATE_URL
    in_hand: InHand  # the work a drain waits for
    webhooks: Webhooks
    templates: Templates
    quotas: Quotas  # the limits of the API keys


class Observer(JobObserver, DownloadObserver, WebhookObserver, Protocol):
    """What the pod API's metrics watch: jobs, downloads and webhooks."""


def build_worker(
    settings: Settings,
    observer: Observer | None = None,
    cap_results: bool = False,
    keys: Keys | None = None,
) -> Worker:
    """`keys`: the API keys of the pod API, whose scopes and limits a job's models answer to."""
    tracing.setup(settings, "api" if observer is not None else "handler")
    state = None
    if settings.state_url:
        from services.jobs.fleet.state_store import StateStore

        state = StateStore(settings)
    pool = ComfyPool.of(settings, start_warmup)
    in_hand = InHand(settings.run_layout)
    downloads = Downloads(settings, observer=observer, in_hand=in_hand)
    models = JobModels(settings, downloads)
    templates = _templates(settings, pool)
    quotas = Quotas(settings, state)
    pipeline = Pipeline(
        settings,
        pool,
        models,
        observer=observer,
        shared=state,
        in_hand=in_hand,
        templates=templates,
        result_limit_bytes=int(settings.max_result_mb * 1024 * 1024) if cap_results else None,
        output_store=OutputStore.from_settings(settings) if cap_results else None,
        model_limits=JobModelLimits(keys, quotas) if keys is not None else None,
    )
    webhooks = Webhooks(settings, in_hand=in_hand, observer=observer)
    return Worker(settings, pool, downloads, models, pipeline, state, in_hand, webhooks, templates, quotas)


def _templates(settings: Settings, pool: ComfyPool) -> Templates:
    """TEMPLATES_DIR, checked against the first instance's ComfyUI once it answers (every
    instance runs the same ComfyUI on the same volume); under DRY_RUN structurally only."""
    if settings.dry_run:
        return Templates(settings.template_folders, None)
    executor = pool.instances[0].executor
    templates = Templates(settings.template_folders, Catalog(executor.client.node_info))
    if templates.serving():
        background.loop(
            "templates-check",
            lambda: templates.check_with_comfyui(lambda: executor.until_answers(time.monotonic() + 30)),
            pause=1.0,
            until=lambda: templates.checked,
        )
    return templates


def job_store(worker: Worker) -> JobStore:
    """Async jobs: in this process, or in the fleet's Redis taken by whichever pod has a free
    ComfyUI instance."""
    if worker.state is None:
        return AsyncJobs(worker.pipeline, worker.webhooks)
    from services.jobs.fleet import SharedJobs

    return SharedJobs(
        worker.settings,
        worker.pipeline,
        worker.state,
        worker.pool.spare,
        worker.quotas,
        worker.webhooks,
        at_once=lambda own: worker.pool.spare(own, depth=1),
    )
