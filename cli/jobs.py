"""`captioner status ID`, `captioner cancel ID`, `captioner jobs`: a job's state, cancelling it, and the caller's
jobs, through a running API with the Python client (captioner/client.py). Exit codes as `captioner caption`'s."""

from __future__ import annotations

import itertools
import json
import sys
from typing import IO

from captioner.client import APIConnectionError, APIError, Client

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def run_job_command(
    command: str, *, api: str | None, key: str | None, job_id: str | None, limit: int, stdout: IO[str] = sys.stdout,
) -> int:
    try:
        with Client(api, key) as client:
            if command == "jobs":
                for job in itertools.islice(client.jobs(page_size=min(100, max(1, limit))), limit):
                    print(f"{job.id}\t{job.status.value}\t{job.created_at:%Y-%m-%d %H:%M:%S}\t{job.num_images} images",
                          file=stdout)
                return EXIT_OK
            assert job_id is not None
            job = client.cancel(job_id) if command == "cancel" else client.get(job_id)
    except APIConnectionError as exc:
        print(f"captioner {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except APIError as exc:
        print(f"captioner {command}: {exc.message} ({exc.code})", file=sys.stderr)
        return EXIT_USAGE if exc.status in (400, 401, 403) else EXIT_FAILED
    print(json.dumps(job.model_dump(mode="json"), indent=2), file=stdout)
    return EXIT_OK
