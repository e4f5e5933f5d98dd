"""`captioner bulk s3://bucket/prefix`: start a bulk job on a running API, and follow it with a progress bar."""

from __future__ import annotations

import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import requests
from tqdm import tqdm

TERMINAL = ("succeeded", "partial", "failed", "canceled")


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
    api = api.rstrip("/")
    session = requests.Session()
    if key:
        session.headers["Authorization"] = f"Bearer {key}"
    response = session.post(f"{api}/v1/bulk", json=body, timeout=60)
    if response.status_code != 202:
        print(f"captioner bulk: {response.status_code} {response.text.strip()}", file=sys.stderr)
        return 2
    job: dict[str, Any] = response.json()
    print(f"bulk job {job['id']}: {job['status']}, results under s3://{job['output']['bucket']}/"
          f"{job['output']['prefix']}", file=sys.stderr)
    if not wait:
        print(json.dumps(job, indent=2))
        return 0
    job = follow(session, api, job["id"], poll_s)
    print(json.dumps(job, indent=2))
    return 0 if job["status"] in ("succeeded", "partial") else 1


def follow(session: requests.Session, api: str, bulk_id: str, poll_s: float) -> dict[str, Any]:
    """Poll the job, drawing a bar of images done (captioned, failed or skipped) out of those found so far."""
    with tqdm(unit="img", dynamic_ncols=True, file=sys.stderr) as bar:
        while True:
            job: dict[str, Any] = session.get(f"{api}/v1/bulk/{bulk_id}", timeout=30).json()
            progress = job["progress"]
            done = progress["captioned"] + progress["failed"] + progress["skipped"]
            bar.total = progress["discovered"] if progress["listing_complete"] else None
            bar.n = done
            bar.set_postfix(status=job["status"], failed=progress["failed"], skipped=progress["skipped"],
                            refresh=False)
            bar.refresh()
            if job["status"] in TERMINAL:
                return job
            time.sleep(poll_s)
