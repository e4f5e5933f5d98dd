"""AsyncClient against the real stack: captions asked for all at once with asyncio.gather are the tiny model's and
the sync Client's, and an error answer is the same typed exception. Its retries, timeouts and paging are checked
against stand-in servers in tests/unit/test_client.py."""

from __future__ import annotations

import asyncio
import io
import random
from pathlib import Path

import pytest

from captioner.client import AsyncClient, AuthenticationError, Client, NotFoundError
from common.schemas import Job, JobStatus
from tests.fixtures.shapes import Scene, random_scene, render
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

KNOWN = [Scene("circle", "red", "white"), Scene("square", "blue", "white"), Scene("triangle", "green", "black")]


def png_of(scene: Scene) -> bytes:
    buffer = io.BytesIO()
    render(scene, (96, 96), random.Random(0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_async_captions_at_once_are_the_sync_client_s_and_errors_are_typed(stack: Stack, tmp_path: Path) -> None:
    rng = random.Random(19)
    scenes = KNOWN + [random_scene(rng) for _ in range(5)]
    images: list[bytes | Path] = [png_of(scene) for scene in scenes]
    for index in range(0, len(images), 2):  # every other one as a file, read in a thread
        path = tmp_path / f"{index}.png"
        path.write_bytes(png_of(scenes[index]))
        images[index] = path
    with Client(stack.url, stack.key.key) as client:
        one_by_one = [client.caption(image) for image in images]

    async def main() -> tuple[list[str], Job, list[str]]:
        async with AsyncClient(stack.url, stack.key.key) as client:
            captions = await asyncio.gather(*(client.caption(image) for image in images))
            job = await client.wait((await client.submit([png_of(KNOWN[0]), b"not an image"])).id, timeout_s=60)
            listed: list[str] = []
            async for newest in client.jobs(page_size=4):  # the tenant's jobs, this module's and any before
                listed.append(newest.id)
                if len(listed) == 20:
                    break
            await client.delete(job.id)
            with pytest.raises(NotFoundError):
                await client.get(job.id)
        async with AsyncClient(stack.url, "cap_not_a_key") as stranger:
            with pytest.raises(AuthenticationError) as refused:
                await stranger.get(job.id)
            assert (refused.value.status, refused.value.code) == (401, "unauthorized")
        return captions, job, listed

    captions, job, listed = asyncio.run(main())
    assert captions == one_by_one
    assert captions[:3] == [scene.caption for scene in KNOWN]
    assert job.status is JobStatus.SUCCEEDED and job.results[0].caption == KNOWN[0].caption
    assert job.results[1].error is not None and job.results[1].error.code == "invalid_image"
    assert job.id in listed and len(listed) == len(set(listed))
