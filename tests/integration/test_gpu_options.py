"""The worker with the options meant for GPU hosts, on the CPU: batches prepared ahead (CAPTIONER_PREPARE_AHEAD=on,
the GPU default: the batching thread stacks the next batch's pixels while a second thread runs the model) and
images decoded in processes of their own (CAPTIONER_DECODE_PROCESSES), which also fetch bulk objects themselves,
and CAPTIONER_COMPILE_ENCODER and CAPTIONER_DECODE_JPEG_ON_GPU, which the CPU ignores (tests/unit/test_device_jpeg.py
runs the latter's decoding with a stand-in for nvJPEG).
The end-to-end test of every job form and the whole-bucket bulk test run again on such a worker: every caption
must still be the model's caption for that image alone, and corrupt images still fail alone."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import settings_for
from tests.fixtures.shapes import Scene, render
from tests.integration.conftest import Stack, running_stack
from tests.integration.test_bulk import (  # noqa: F401 - the bucket fixture and the test, on this module's stack
    bucket,
    test_every_image_of_the_bucket_gets_one_result_line,
)
from tests.integration.test_end_to_end import (  # noqa: F401 - collected here, on this module's stack
    test_concurrent_jobs_in_every_form_get_the_captions_of_images_alone,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = settings_for(
        services, batch_size=4, batch_wait_ms=50, prepare_ahead="on", redis_upload_max_bytes=16 * 1024,
        decode_processes=2, compile_encoder=True, decode_jpeg_on_gpu=True,
    )
    with running_stack(settings, tmp_path_factory.mktemp("gpu-options")) as stack:
        yield stack


@pytest.fixture(scope="module")
def bulk_stack(stack: Stack) -> Stack:
    """The bulk test's stack is this one: its decoding processes fetch each object themselves."""
    return stack


def test_the_worker_prepared_its_batches_ahead_and_decoded_in_processes(stack: Stack) -> None:
    image = io.BytesIO()
    render(Scene("square", "green", "white"), (64, 64)).save(image, format="PNG")
    with ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(lambda _: stack.wait(stack.client.submit([image.getvalue()]).id), range(8)))
    assert [job.results[0].caption for job in jobs] == ["a green square on a white background"] * 8
    log = stack.worker.log_path.read_text(errors="replace")
    assert "prepared ahead" in log, stack.worker.log_tail()
    assert "decoding and resizing images, and fetching bulk objects, in 2 processes" in log, stack.worker.log_tail()
    # CAPTIONER_WORKER_CONCURRENCY=auto: twice the batch size, at least 32.
    assert "batches of up to 4 images, from up to 32 jobs at once" in log, stack.worker.log_tail()
    # GPU only: on this CPU the worker says it ignores the setting, and runs (the captions above are right).
    assert "CAPTIONER_COMPILE_ENCODER: ignored on cpu" in log, stack.worker.log_tail()
    assert "CAPTIONER_DECODE_JPEG_ON_GPU: ignored on cpu (GPU only)" in log, stack.worker.log_tail()
