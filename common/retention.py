"""Uploaded images leave S3 once their job has ended: nothing a user sent is kept longer than its job needs it.

Small uploads live in the job's Redis record and go with it (common/jobstore.py). Large ones are S3 objects; the
script that ends a job queues their keys here, in the same step, so a process that dies right after ending a job
cannot leave them behind. A sweeper in each worker deletes what is queued (UploadSweeper), claiming keys with a
lease as webhook deliveries are claimed, so a sweeper that dies mid-delete only delays the deletion.

Layout:
- ``captioner:uploads:ended``  sorted set: S3 key of an ended job's upload, scored by when it may be deleted
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import redis

from common.webhooks import CLAIM_DUE_LUA

if TYPE_CHECKING:  # the job store includes this module's Lua, and need not load boto3 for it
    from common.storage import ObjectStorage

log = logging.getLogger(__name__)

ENDED_UPLOADS_KEY = "captioner:uploads:ended"

# For the scripts that end a job: queue its S3 uploads (the record's `s3_keys`) for deletion. Expects `job_key`
# and `now` locals in the including script.
QUEUE_UPLOADS_LUA = f"""
local s3_keys = redis.call('HGET', job_key, 's3_keys')
if s3_keys then
  for key in string.gmatch(s3_keys, '%S+') do redis.call('ZADD', '{ENDED_UPLOADS_KEY}', now, key) end
end
"""


class UploadJanitor:
    """Deletes ended jobs' uploads from S3. Safe to share between threads."""

    def __init__(self, client: redis.Redis, storage: ObjectStorage) -> None:
        self._redis = client
        self._storage = storage
        self._claim = client.register_script(CLAIM_DUE_LUA)

    def queue(self, keys: Sequence[str]) -> None:
        """Queue keys for deletion outside a job's end: uploads of a job that was never created."""
        if keys:
            self._redis.zadd(ENDED_UPLOADS_KEY, dict.fromkeys(keys, time.time()))

    def delete(self, keys: Sequence[str]) -> None:
        """Delete these objects now and take them off the queue; those S3 would not delete stay queued."""
        if not keys:
            return
        failed = set(self._storage.delete(keys))
        done = [key for key in keys if key not in failed]
        if done:
            self._redis.zrem(ENDED_UPLOADS_KEY, *done)
        if failed:
            log.warning("could not delete %d uploads yet (kept for the sweeper): %s", len(failed), sorted(failed)[:5])

    def sweep(self, limit: int = 1000, lease_s: float = 60.0) -> int:
        """Delete up to `limit` queued uploads; how many were claimed."""
        keys = cast(list[str], self._claim(keys=[ENDED_UPLOADS_KEY], args=[repr(time.time()), lease_s, limit]))
        self.delete(keys)
        return len(keys)


class UploadSweeper:
    """Runs UploadJanitor.sweep on a thread of its own until stopped: uploads go within a poll of their job's end."""

    def __init__(self, janitor: UploadJanitor, poll_interval_s: float = 1.0) -> None:
        self._janitor = janitor
        self._poll_interval_s = poll_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="upload-sweeper", daemon=True)

    def start(self) -> UploadSweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            swept = 0
            try:
                swept = self._janitor.sweep()
            except Exception:  # Redis or S3 away (their errors are many types): the queue keeps the keys
                log.exception("could not delete ended jobs' uploads")
            if not swept:
                self._stop.wait(self._poll_interval_s)
