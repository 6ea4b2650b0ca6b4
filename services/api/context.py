"""What the pod API's routes work with, built once by the app factory."""

from __future__ import annotations

from dataclasses import dataclass

from services.comfy.control import ComfyControl
from services.comfy.health import ComfyHealth
from services.core.config import Settings
from services.jobs.access import Keys
from services.jobs.async_jobs import JobStore
from services.jobs.metrics import Metrics
from services.jobs.quotas import Quotas
from services.jobs.worker import Worker


@dataclass(frozen=True)
class Api:
    worker: Worker
    jobs: JobStore  # async jobs: in this process, or the fleet's (STATE_URL)
    health: ComfyHealth
    metrics: Metrics
    controls: list[ComfyControl]  # one per ComfyUI instance
    public_key: str | None
    cuda: dict | None  # the NVIDIA driver and torch's CUDA build (services.comfy.driver); None without one
    keys: Keys  # who may call what (services.api.access_control)
    quotas: Quotas  # the limits of the keys

    @property
    def settings(self) -> Settings:
        return self.worker.settings

    def shared_state(self) -> dict | None:
        """Whether the fleet's Redis (STATE_URL) answered its last call; None without one."""
        return {"up": self.worker.state.up} if self.worker.state else None
