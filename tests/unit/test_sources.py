"""Where a worker finds an image, on real Redis and S3: the job record, the bucket, a URL; and who fetches it."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
from PIL import Image
from pytest_httpserver import HTTPServer

from common.errors import ImageFetchError
from common.jobstore import JobStore
from common.schemas import GenerationOptions, ImageRef, JobStatus
from common.settings import Settings
from common.storage import ObjectStorage
from tests.fixtures.shapes import Scene, render
from tests.unit.test_captioner import model
from worker.decode.base import StoredObject
from worker.decode.processes import ProcessDecoding
from worker.jobs.sources import ImageSource
from worker.runtime import decode_pool_for, thread_decoding


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    render(Scene("circle", "red", "blue"), (120, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def jobs(settings: Settings) -> JobStore:
    return JobStore.from_url(settings.redis_url, 600)


def test_each_kind_of_reference_is_read_from_its_place(
    settings: Settings, jobs: JobStore, httpserver: HTTPServer
) -> None:
    source = ImageSource(ObjectStorage.from_settings(settings), jobs, settings)  # loopback URLs allowed
    job_id = uuid.uuid4().hex
    jobs.create(job_id, 3, None, GenerationOptions(), uploads={0: b"small"}, tenant="tests")
    ObjectStorage.from_settings(settings).put(f"uploads/{job_id}/1", b"large")
    httpserver.expect_request("/c.jpg").respond_with_data(b"remote")
    refs = [ImageRef(index=0, stored_with_job=True), ImageRef(index=1, key=f"uploads/{job_id}/1"),
            ImageRef(index=2, url=httpserver.url_for("/c.jpg"))]
    small, large, remote = (source.locate(job_id, ref) for ref in refs)
    assert (small, remote) == (b"small", b"remote")
    assert isinstance(large, StoredObject) and large.read() == b"large"  # left for the decoding to fetch
    gone = source.locate(job_id, ImageRef(index=1, key=f"uploads/{job_id}/gone"))
    assert isinstance(gone, StoredObject)
    with pytest.raises(ImageFetchError, match="no longer in storage"):
        gone.read()


def test_an_upload_of_an_ended_job_is_a_per_image_error(settings: Settings, jobs: JobStore) -> None:
    source = ImageSource(ObjectStorage.from_settings(settings), jobs, settings)
    job_id = uuid.uuid4().hex
    jobs.create(job_id, 1, None, GenerationOptions(), uploads={0: b"small"}, tenant="tests")
    jobs.finish(job_id, JobStatus.CANCELED)
    with pytest.raises(ImageFetchError, match="no longer stored"):
        source.locate(job_id, ImageRef(index=0, stored_with_job=True))


def test_with_decoding_processes_an_upload_in_the_bucket_is_fetched_and_decoded_there(
    settings: Settings, jobs: JobStore
) -> None:
    captioner = model()
    pool = decode_pool_for(captioner, 1)
    assert pool is not None
    processes = ProcessDecoding(pool)
    try:
        source = ImageSource(ObjectStorage.from_settings(settings), jobs, settings)
        job_id = uuid.uuid4().hex
        jobs.create(job_id, 2, None, GenerationOptions(), uploads={0: png_bytes()}, tenant="tests")
        ObjectStorage.from_settings(settings).put(f"uploads/{job_id}/1", png_bytes())
        small = processes.load(source.locate(job_id, ImageRef(index=0, stored_with_job=True)))
        large = processes.load(source.locate(job_id, ImageRef(index=1, key=f"uploads/{job_id}/1")))
        assert isinstance(large, np.ndarray)  # fetched and decoded by the process
        assert np.array_equal(large, np.asarray(small))
        upload = ImageRef(index=1, key=f"uploads/{job_id}/1")
        on_this_thread = thread_decoding(captioner).load(source.locate(job_id, upload))
        assert isinstance(on_this_thread, Image.Image)  # fetched with boto3 and decoded here
        assert np.array_equal(large, np.asarray(on_this_thread))
        with pytest.raises(ImageFetchError, match="no longer in storage"):
            processes.load(source.locate(job_id, ImageRef(index=1, key=f"uploads/{job_id}/gone")))
    finally:
        processes.close()
