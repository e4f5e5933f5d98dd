"""Keys at the edge and tenants in the stores, through the real API on real Redis and S3: who gets 401, who sees
what, and that another tenant's ids answer exactly as ids that never existed."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Callable

import pytest
import redis
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.test import TestResponse

from api import NoKeys, create_app
from common.settings import Settings
from common.storage import ObjectStorage
from common.tenants import KeyLimits, TenantStore
from tests.conftest import api_client


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def new_tenant(settings: Settings, limits: KeyLimits | None = None) -> tuple[FlaskClient, str]:
    """A client of a new tenant, and its key."""
    made = TenantStore.from_url(settings.redis_url).create_key(f"t-{uuid.uuid4().hex[:10]}", limits=limits)
    return api_client(settings, made.key), made.key


def resource_headers(response: TestResponse) -> dict[str, str]:
    """The headers that describe the answer, not the caller's own request budget (RateLimit-*, which count
    down from one request to the next) nor the request's own id (X-Request-ID, fresh for each)."""
    return {name: value for name, value in response.headers.items()
            if not name.startswith("RateLimit-") and name != "X-Request-ID"}


def bare(settings: Settings) -> FlaskClient:
    """A client that sends no key."""
    api_client(settings)  # a key exists in this Redis, so the app starts
    return create_app(settings).test_client()


@pytest.mark.parametrize("authorization", [
    None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer not-a-key", "Bearer cap_" + "A" * 43,
    "cap_" + "A" * 43,
])
def test_missing_malformed_and_unknown_keys_get_401_on_every_v1_endpoint(
    settings: Settings, authorization: str | None
) -> None:
    client = bare(settings)
    headers = {} if authorization is None else {"Authorization": authorization}
    some_id = uuid.uuid4().hex
    for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", f"/v1/jobs/{some_id}"),
                         ("POST", f"/v1/jobs/{some_id}/cancel"), ("GET", f"/v1/jobs/{some_id}/webhooks"),
                         ("POST", f"/v1/jobs/{some_id}/webhooks/redeliver"), ("GET", "/v1/bulk"),
                         ("POST", "/v1/bulk"), ("GET", f"/v1/bulk/{some_id}"), ("POST", f"/v1/bulk/{some_id}/cancel"),
                         ("GET", "/v1/nothing-here")]:
        response = client.open(path, method=method, headers=headers, json={"images": [png_b64()]})
        assert response.status_code == 401, (method, path, response.get_data(as_text=True))
        assert response.get_json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/healthz").status_code == 200  # health needs no key
    assert client.get("/readyz").get_json()["auth"] == "on"


def test_a_key_in_the_url_is_refused_even_beside_a_good_header(settings: Settings) -> None:
    client, key = new_tenant(settings)
    assert client.get("/v1/jobs").status_code == 200
    for query in ({"key": key}, {"api_key": key}, {"access_token": "x"}, {"wait": key}):
        response = client.get("/v1/jobs", query_string=query)
        assert response.status_code == 401 and "URL" in response.get_json()["error"]["message"]


def test_a_revoked_key_stops_working_on_the_next_request(settings: Settings) -> None:
    store = TenantStore.from_url(settings.redis_url)
    made = store.create_key(f"t-{uuid.uuid4().hex[:10]}")
    client = api_client(settings, made.key)
    assert client.get("/v1/jobs").status_code == 200
    store.revoke(made.record.key_id)
    assert client.get("/v1/jobs").status_code == 401


def test_another_tenant_s_ids_answer_exactly_as_ids_that_never_existed(settings: Settings) -> None:
    owner, _ = new_tenant(settings, KeyLimits(bulk_buckets=("*",)))
    stranger, _ = new_tenant(settings)
    job = owner.post("/v1/jobs", json={"images": [png_b64()]}).get_json()
    ObjectStorage.from_settings(settings).ensure_bucket()
    bulk = owner.post("/v1/bulk", json={"source": {"bucket": settings.s3_bucket}, "dry_run": True})
    assert bulk.status_code == 202, bulk.get_data(as_text=True)
    bulk_id = bulk.get_json()["id"]
    for kind, theirs in (("jobs", job["id"]), ("bulk", bulk_id)):
        never = uuid.uuid4().hex
        paths = ["{id}", "{id}?wait=1", "{id}/cancel", "{id}/webhooks"]
        if kind == "jobs":
            paths.append("{id}/webhooks/redeliver")
        for template in paths:
            method = "POST" if template.endswith(("cancel", "redeliver")) else "GET"
            path = f"/v1/{kind}/" + template
            seen = stranger.open(path.format(id=theirs), method=method)
            unknown = stranger.open(path.format(id=never), method=method)
            assert seen.status_code == unknown.status_code == 404, path
            assert seen.get_data() == unknown.get_data().replace(never.encode(), theirs.encode()), path
            assert resource_headers(seen) == resource_headers(unknown), path
    # ...and the owner still sees both, untouched by the stranger's cancels.
    assert owner.get(f"/v1/jobs/{job['id']}").get_json()["status"] == "queued"
    assert owner.get(f"/v1/bulk/{bulk_id}").status_code == 200


def test_each_tenant_lists_its_own_jobs_newest_first_a_page_at_a_time(settings: Settings) -> None:
    mine, _ = new_tenant(settings)
    theirs, _ = new_tenant(settings)
    made = [mine.post("/v1/jobs", json={"images": [png_b64()]}).get_json()["id"] for _ in range(5)]
    other = theirs.post("/v1/jobs", json={"images": [png_b64()]}).get_json()["id"]
    seen: list[str] = []
    cursor = None
    while True:
        page = mine.get("/v1/jobs", query_string={"limit": 2, **({"cursor": cursor} if cursor else {})}).get_json()
        assert len(page["data"]) <= 2
        seen += [job["id"] for job in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert seen == made[::-1] and other not in seen
    assert [job["id"] for job in theirs.get("/v1/jobs").get_json()["data"]] == [other]
    assert mine.get("/v1/jobs", query_string={"limit": 0}).status_code == 400
    assert mine.get("/v1/jobs", query_string={"limit": "many"}).status_code == 400
    assert mine.get("/v1/jobs", query_string={"cursor": other}).status_code == 400  # not a cursor of this list


def test_bulk_buckets_are_the_key_s_and_none_by_default(settings: Settings) -> None:
    ObjectStorage.from_settings(settings).ensure_bucket()
    body = {"source": {"bucket": settings.s3_bucket, "prefix": "in/"}, "dry_run": True,
            "output": {"bucket": settings.s3_bucket, "prefix": "in/out/"}}
    none, _ = new_tenant(settings)
    response = none.post("/v1/bulk", json=body)
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"
    prefixed, _ = new_tenant(settings, KeyLimits(bulk_buckets=(f"{settings.s3_bucket}/in/",)))
    assert prefixed.post("/v1/bulk", json=body).status_code == 202
    outside = {**body, "output": {"bucket": settings.s3_bucket, "prefix": "elsewhere/"}}
    assert prefixed.post("/v1/bulk", json=outside).status_code == 403
    listed = prefixed.get("/v1/bulk").get_json()["data"]
    assert len(listed) == 1 and listed[0]["source"]["prefix"] == "in/"


def test_the_open_mode_is_one_built_in_tenant(make_settings: Callable[..., Settings]) -> None:
    open_settings = make_settings(auth="off")
    anyone = create_app(open_settings).test_client()
    assert anyone.get("/readyz").get_json()["auth"] == "off"
    job = anyone.post("/v1/jobs", json={"images": [png_b64()]}).get_json()
    assert anyone.get(f"/v1/jobs/{job['id']}").status_code == 200
    keyed, _ = new_tenant(make_settings())
    assert keyed.get(f"/v1/jobs/{job['id']}").status_code == 404  # the built-in tenant is a tenant like any
    assert job["id"] in [j["id"] for j in anyone.get("/v1/jobs").get_json()["data"]]


def test_the_api_refuses_to_start_without_a_key(make_settings: Callable[..., Settings], settings: Settings) -> None:
    empty = settings.redis_url.rsplit("/", 1)[0] + "/7"  # a database no key was made in
    redis.Redis.from_url(empty).flushdb()
    with pytest.raises(NoKeys, match="captioner keys create"):
        create_app(make_settings(redis_url=empty))
    create_app(make_settings(redis_url=empty, auth="off"))  # the open mode starts, with a warning
