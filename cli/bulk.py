"""`captioner bulk s3://bucket/prefix`: start a bulk job on a running API, and follow it with a progress bar, with
the Python client (captioner/client.py)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from tqdm import tqdm

from captioner.client import APIConnectionError, APIError, Client
from common.bulk_schemas import BulkJob, BulkStatus


class UsageError(ValueError):
    pass


def parse_s3_url(url: str) -> dict[str, str]:
    """s3://bucket/prefix -> {"bucket", "prefix"}."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise UsageError(f"{url!r} is not an s3://bucket/prefix URL")
    return {"bucket": parts.netloc, "prefix": parts.path.lstrip("/")}


def build_request(
    source: str, *, output: str | None = None, prompt: str | None = None, include: list[str] | None = None,
    max_objects: int | None = None, full: bool = False, dry_run: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {"source": parse_s3_url(source), "incremental": not full, "dry_run": dry_run}
    if include:
        body["source"]["include"] = include
    if max_objects:
        body["source"]["max_objects"] = max_objects
    if output:
        body["output"] = parse_s3_url(output)
    if prompt:
        body["prompt"] = prompt
    return body


def run_bulk(api: str, body: dict[str, Any], wait: bool, key: str | None = None, poll_s: float = 1.0) -> int:
    """Submit; with wait, follow to the end. Exit status 0 when the job succeeded (or, partly, succeeded)."""
    try:
        with Client(api, key) as client:
            job = client.bulk(**body.pop("source"), **body)
            print(f"bulk job {job.id}: {job.status.value}, results under s3://{job.output.bucket}/"
                  f"{job.output.prefix}", file=sys.stderr)
            if wait:
                job = follow(client, job.id, poll_s)
    except (APIError, APIConnectionError) as exc:
        print(f"captioner bulk: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(job.model_dump(mode="json"), indent=2))
    return 0 if job.status in (BulkStatus.SUCCEEDED, BulkStatus.PARTIAL) or not wait else 1


def follow(client: Client, bulk_id: str, poll_s: float) -> BulkJob:
    """Poll the job, drawing a bar of images done (captioned, failed or skipped) out of those found so far."""
    with tqdm(unit="img", dynamic_ncols=True, file=sys.stderr) as bar:
        while True:
            job = client.bulk_status(bulk_id)
            progress = job.progress
            bar.total = progress.discovered if progress.listing_complete else None
            bar.n = progress.captioned + progress.failed + progress.skipped
            bar.set_postfix(status=job.status.value, failed=progress.failed, skipped=progress.skipped,
                            refresh=False)
            bar.refresh()
            if job.status.is_terminal():
                return job
            time.sleep(poll_s)
