"""Pipelines for in-process tests: wired as services.jobs.worker wires them, with a stand-in for
ComfyUI's pool where a test needs one (or none where DRY_RUN never reaches ComfyUI)."""

from services.core.config import Settings
from services.jobs.pipeline import Pipeline
from services.models.downloads import Downloads
from services.models.job_models import JobModels


class NoComfy:
    """In ComfyUI's place for DRY_RUN: reaching it is a failure."""

    def execute(self, job, progress, cancel):
        raise AssertionError("a DRY_RUN job reached ComfyUI")


def pipeline(settings: Settings, executor=None, **options) -> Pipeline:
    return Pipeline(settings, executor or NoComfy(), JobModels(settings, Downloads(settings)), **options)
