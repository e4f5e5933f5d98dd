"""Webhooks end to end: a real worker signs and sends, a real receiver verifies with `standardwebhooks`.

The stack runs with a short retry budget (4 attempts, 0.2 s first retry, 2 s cap, 2 s timeout).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks.webhooks import Webhook
from werkzeug import Request, Response

from common.schemas import Job, JobStatus
from common.storage import ObjectStorage
from tests.fixtures.shapes import Scene, render
from tests.integration.conftest import Stack, worker_process

pytestmark = pytest.mark.integration


class Receiver:
    """Answers each delivery with the next planned status (the last one repeats); verifies every signature."""

    def __init__(self, server: HTTPServer, secret: str, statuses: list[int], headers: dict[str, str] | None = None,
                 delay_first_s: float = 0.0) -> None:
        self.secret = secret  # the stack's tenant's: a delivery signed with any other fails
        self.statuses = statuses
        self.headers = headers or {}
        self.delay_first_s = delay_first_s
        self.received: list[tuple[float, dict[str, str], dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.url = server.url_for("/hook")
        server.expect_request("/hook", method="POST").respond_with_handler(self.handle)

    def handle(self, request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        payload = Webhook(self.secret).verify(request.get_data(), headers)  # raises if the signature is bad
        with self.lock:
            self.received.append((time.monotonic(), headers, payload))
            count = len(self.received)
        if count == 1 and self.delay_first_s:
            time.sleep(self.delay_first_s)
        status = self.statuses[min(count, len(self.statuses)) - 1]
        return Response("", status=status, headers=self.headers if status == 429 else {})

    def ids(self) -> set[str]:
        return {headers["webhook-id"] for _, headers, _ in self.received}


def png() -> bytes:
    buffer = io.BytesIO()
    render(Scene("square", "green", "white"), (96, 96)).save(buffer, format="PNG")
    return buffer.getvalue()


def submit(stack: Stack, url: str, events: list[str] | None = None) -> Job:
    webhook: dict[str, Any] = {"url": url}
    if events:
        webhook["events"] = events
    return stack.client.submit([png()], webhook=webhook)


def deliveries(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    """The job's webhook deliveries, as the service answers them (the client has no call for them)."""
    found: list[dict[str, Any]] = stack.http.get(f"{stack.url}/v1/jobs/{job_id}/webhooks", timeout=10).json()[
        "deliveries"]
    return found


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def final_state(stack: Stack, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
    def done() -> bool:
        found = deliveries(stack, job_id)
        return bool(found) and all(d["state"] != "pending" for d in found)

    wait_for(done, timeout_s, "the deliveries to finish")
    (delivery,) = deliveries(stack, job_id)
    return delivery


def test_three_failures_then_success_is_four_signed_attempts_under_one_id(
    stack: Stack, httpserver: HTTPServer
) -> None:
    receiver = Receiver(httpserver, stack.webhook_secret, [500, 502, 503, 200])
    job = submit(stack, receiver.url)
    delivery = final_state(stack, job.id)
    assert delivery["state"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 502, 503, 200]
    assert len(receiver.received) == 4 and receiver.ids() == {delivery["id"]}
    bodies = {str(payload) for _, _, payload in receiver.received}
    assert len(bodies) == 1  # every retry carries the same event
    payload = receiver.received[-1][2]
    assert payload["type"] == "job.succeeded"
    polled = stack.wait(job.id)
    assert payload["data"]["results"] == polled.model_dump(mode="json")["results"]
    assert payload["data"]["status"] == "succeeded" and polled.status == JobStatus.SUCCEEDED


def test_a_receiver_that_always_fails_ends_dead_and_can_be_redelivered(
    stack: Stack, httpserver: HTTPServer
) -> None:
    receiver = Receiver(httpserver, stack.webhook_secret, [500, 500, 500, 500, 200])
    job = submit(stack, receiver.url)
    dead = final_state(stack, job.id)
    assert dead["state"] == "dead" and len(dead["attempts"]) == 4 and dead["next_attempt_at"] is None
    assert all(a["status_code"] == 500 for a in dead["attempts"])

    response = stack.http.post(f"{stack.url}/v1/jobs/{job.id}/webhooks/redeliver", timeout=10)
    assert response.status_code == 202
    delivered = final_state(stack, job.id)
    assert delivered["state"] == "delivered" and len(delivered["attempts"]) == 5
    assert receiver.ids() == {dead["id"]} and len(receiver.received) == 5


def test_410_gone_stops_retrying(stack: Stack, httpserver: HTTPServer) -> None:
    receiver = Receiver(httpserver, stack.webhook_secret, [410, 200])
    job = submit(stack, receiver.url)
    delivery = final_state(stack, job.id)
    assert delivery["state"] == "dead" and [a["status_code"] for a in delivery["attempts"]] == [410]
    time.sleep(1.5)  # several first-retry intervals: still nothing more
    assert len(receiver.received) == 1


def test_429_retry_after_is_honoured(stack: Stack, httpserver: HTTPServer) -> None:
    receiver = Receiver(httpserver, stack.webhook_secret, [429, 200], headers={"Retry-After": "3"})
    job = submit(stack, receiver.url)
    delivery = final_state(stack, job.id, timeout_s=40)
    assert delivery["state"] == "delivered"
    (first, _, _), (second, _, _) = receiver.received
    assert second - first >= 2.9  # the schedule alone would have waited 0.2 s (capped at 2 s)


def test_a_redirect_is_not_followed(stack: Stack, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook").respond_with_data("", status=307, headers={"Location": "/elsewhere"})
    httpserver.expect_request("/elsewhere").respond_with_data("")
    job = submit(stack, httpserver.url_for("/hook"))
    delivery = final_state(stack, job.id)
    assert delivery["state"] == "dead"
    assert [a["status_code"] for a in delivery["attempts"]] == [307] * 4
    assert not [r for r, _ in httpserver.log if r.path == "/elsewhere"]


def test_started_and_terminal_events_have_their_own_ids(stack: Stack, httpserver: HTTPServer) -> None:
    receiver = Receiver(httpserver, stack.webhook_secret, [204])
    job = submit(stack, receiver.url, events=["job.started", "job.succeeded"])
    wait_for(lambda: len(receiver.received) == 2, 30, "two events")
    types = [payload["type"] for _, _, payload in receiver.received]
    assert sorted(types) == ["job.started", "job.succeeded"]
    assert len(receiver.ids()) == 2
    assert {d["state"] for d in deliveries(stack, job.id)} == {"delivered"}


@pytest.fixture
def slow_receiver_server() -> Iterator[HTTPServer]:
    server = HTTPServer(threaded=True)  # the first delivery hangs; the retry must still get through
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


def test_a_worker_killed_before_the_webhook_went_out_still_delivers_it_once(
    stack: Stack, slow_receiver_server: HTTPServer
) -> None:
    # The first delivery attempt hangs past the worker's timeout; the worker is SIGKILLed while it waits.
    receiver = Receiver(slow_receiver_server, stack.webhook_secret, [200], delay_first_s=6)
    job = submit(stack, receiver.url)
    wait_for(lambda: len(receiver.received) == 1, 30, "the first attempt")
    stack.worker.kill()
    assert stack.client.get(job.id).status == JobStatus.SUCCEEDED
    stack.worker = worker_process(stack.settings, stack.worker.log_path.with_name("worker-2.log")).start()
    stack.worker.wait_ready(120)
    # The new worker claims the delivery once the dead one's lease runs out, under the same webhook-id.
    wait_for(lambda: deliveries(stack, job.id)[0]["state"] == "delivered", 60, "the redelivery")
    assert stack.wait(job.id).status == JobStatus.SUCCEEDED
    assert len(receiver.ids()) == 1 and len(receiver.received) == 2


def test_a_bulk_job_sends_signed_progress_and_completion(stack: Stack, httpserver: HTTPServer) -> None:
    s3, image = ObjectStorage.from_settings(stack.settings), png()
    with ThreadPoolExecutor(8) as pool:  # the service's own bucket, as a bulk source: two chunks of 256
        list(pool.map(lambda i: s3.put(f"bulk-hooks/{i:03d}.png", image, "image/png"), range(300)))
    receiver = Receiver(httpserver, stack.webhook_secret, [200])
    bulk_id = stack.client.bulk(stack.settings.s3_bucket, "bulk-hooks/", webhook={
        "url": receiver.url, "events": ["bulk.progress", "bulk.completed"]}).id
    wait_for(lambda: any(p["type"] == "bulk.completed" for _, _, p in receiver.received), 60, "bulk.completed")
    completed = next(p for _, _, p in receiver.received if p["type"] == "bulk.completed")
    assert completed["data"]["id"] == bulk_id and completed["data"]["status"] == "succeeded"
    assert completed["data"]["progress"]["captioned"] == 300
    assert completed["data"]["urls"]["get"].endswith(f"/v1/bulk/{bulk_id}")
    progress = [p for _, _, p in receiver.received if p["type"] == "bulk.progress"]

    def listed() -> list[tuple[str, str]]:
        found = stack.http.get(f"{stack.url}/v1/bulk/{bulk_id}/webhooks", timeout=10).json()["deliveries"]
        return [(d["event"], d["state"]) for d in found]

    # The attempt is recorded just after the receiver answers.
    wait_for(lambda: listed() == [("bulk.completed", "delivered")], 10, "the delivery to be recorded")
    # The first chunk to finish reports progress; the second is within the 30 s throttle.
    assert len(progress) == 1 and progress[0]["data"]["id"] == bulk_id, progress
