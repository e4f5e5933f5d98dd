"""Everything a worker process holds for its whole life: the model (loaded once), the batcher, the stores."""

from __future__ import annotations

from dataclasses import dataclass

from common.jobstore import JobStore
from common.settings import Settings
from common.storage import ObjectStorage
from worker.batching import DynamicBatcher
from worker.captioner import BlipCaptioner
from worker.pipeline import CaptionBatcher, PipelineDeps, make_batch_runner
from worker.sources import ImageSource


@dataclass(frozen=True)
class WorkerRuntime:
    settings: Settings
    captioner: BlipCaptioner
    deps: PipelineDeps

    def close(self) -> None:
        self.deps.batcher.stop(timeout=30)


def build_runtime(settings: Settings) -> WorkerRuntime:
    """Load the model and start the batcher. Raises ModelUnavailable with a fix when the model won't load."""
    captioner = BlipCaptioner.load(settings.model, settings.device)
    batcher: CaptionBatcher = DynamicBatcher(
        make_batch_runner(captioner), settings.batch_size, settings.batch_wait_ms / 1000
    ).start()
    storage = ObjectStorage.from_settings(settings)
    deps = PipelineDeps(
        jobs=JobStore.from_url(settings.redis_url, settings.job_ttl_seconds),
        source=ImageSource(storage, settings),
        batcher=batcher,
    )
    return WorkerRuntime(settings, captioner, deps)
