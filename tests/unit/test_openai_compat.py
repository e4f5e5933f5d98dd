"""The OpenAI-compatible endpoints through the real API on real Redis (no worker): models, the requests refused
and their errors in OpenAI's shape. tests/integration/test_openai_sdk.py drives them with the SDK, captions and
all."""

from __future__ import annotations

import io
from typing import Any

import pytest
from botocore.exceptions import ClientError
from flask.testing import FlaskClient

from common.settings import Settings
from common.storage import ObjectStorage
from common.tenants import KeyLimits
from tests.conftest import api_client
from tests.unit.test_tenancy import new_tenant, png_b64

IMAGE_URL = f"data:image/png;base64,{png_b64()}"
IMAGE: dict[str, Any] = {"type": "image_url", "image_url": {"url": IMAGE_URL}}


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return api_client(settings)


def chat(client: FlaskClient, **overrides: Any) -> Any:
    body = {"model": "tiny_blip", "messages": [{"role": "user", "content": [IMAGE]}], **overrides}
    return client.post("/v1/chat/completions", json=body)


def openai_error(response: Any, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    error: dict[str, Any] = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] == param and error["message"]
    return error


def test_the_served_model_is_listed_and_found(client: FlaskClient, make_settings: Any) -> None:
    assert client.get("/v1/models").get_json() == {
        "object": "list", "data": [{"id": "tiny_blip", "object": "model", "created": 1_643_155_200,
                                    "owned_by": "captioner"}]}
    assert client.get("/v1/models/tiny_blip").get_json()["id"] == "tiny_blip"
    openai_error(client.get("/v1/models/gpt-4o"), 404, "model_not_found")
    named = api_client(make_settings(model_name="Salesforce/blip-image-captioning-base"))
    assert named.get("/v1/models/Salesforce/blip-image-captioning-base").status_code == 200


def test_another_model_is_not_found(client: FlaskClient) -> None:
    error = openai_error(chat(client, model="gpt-4o"), 404, "model_not_found")
    assert error["type"] == "invalid_request_error" and "tiny_blip" in error["message"]


@pytest.mark.parametrize(("param", "value"), [
    ("temperature", 0.7), ("top_p", 0.5), ("n", 2), ("logprobs", True), ("response_format", {"type": "json_object"}),
    ("tools", [{"type": "function", "function": {"name": "f"}}]), ("tool_choice", "auto"), ("audio", {"voice": "x"}),
    ("frequency_penalty", 0.5), ("modalities", ["text", "audio"]), ("functions", [{"name": "f"}]),
])
def test_what_blip_cannot_honour_is_refused_by_name(client: FlaskClient, param: str, value: Any) -> None:
    error = openai_error(chat(client, **{param: value}), 400, "unsupported_parameter", param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("param", "value"), [("max_tokens", 1000), ("max_completion_tokens", 0), ("n", "two")])
def test_values_out_of_range_are_named(client: FlaskClient, param: str, value: Any) -> None:
    openai_error(chat(client, **{param: value}), 400, "invalid_value", param)


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "no image here"}],
    [{"role": "user", "content": [IMAGE, IMAGE]}],
    [{"role": "user", "content": [IMAGE]}, {"role": "assistant", "content": "a dog"},
     {"role": "user", "content": [IMAGE]}],
])
def test_one_user_message_with_one_image(client: FlaskClient, messages: list[dict[str, Any]]) -> None:
    response = chat(client, messages=messages)
    assert response.status_code == 400
    assert response.get_json()["error"]["type"] == "invalid_request_error"


def test_errors_before_the_view_are_in_openai_shape_too(settings: Settings) -> None:
    anonymous = api_client(settings)
    anonymous.environ_base.pop("HTTP_AUTHORIZATION")
    error = openai_error(anonymous.get("/v1/models"), 401, "invalid_api_key")
    assert error["type"] == "invalid_request_error"
    native = anonymous.get("/v1/jobs")
    assert native.status_code == 401 and set(native.get_json()["error"]) == {"code", "message"}


def test_a_bad_body_is_a_400_never_a_500(client: FlaskClient) -> None:
    assert client.post("/v1/chat/completions", data="{", content_type="application/json").status_code == 400
    assert client.post("/v1/chat/completions", data="x", content_type="text/plain").status_code == 415
    openai_error(client.post("/v1/chat/completions", json={"messages": []}), 400, "missing_required_parameter",
                 "model")


def respond(client: FlaskClient, **overrides: Any) -> Any:
    body = {"model": "tiny_blip", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": IMAGE_URL}]}], **overrides}
    return client.post("/v1/responses", json=body)


@pytest.mark.parametrize(("param", "value"), [
    ("stream", True), ("temperature", 0.5), ("tools", [{"type": "web_search"}]), ("reasoning", {"effort": "low"}),
    ("previous_response_id", "resp_1"), ("text", {"format": {"type": "json_object"}}), ("background", True),
])
def test_responses_refuse_by_name_too(client: FlaskClient, param: str, value: Any) -> None:
    openai_error(respond(client, **{param: value}), 400, "unsupported_parameter", param)


@pytest.mark.parametrize("given", [
    "a text alone", [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
    [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}],
    [{"role": "user", "content": [{"type": "input_video", "url": "x"}]}],
])
def test_a_response_needs_one_image_by_url(client: FlaskClient, given: Any) -> None:
    response = respond(client, input=given)
    assert response.status_code == 400 and response.get_json()["error"]["type"] == "invalid_request_error"


BATCH_LINES = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n' * 3


def upload(client: FlaskClient, data: bytes = BATCH_LINES, purpose: str = "batch") -> Any:
    return client.post("/v1/files", data={"file": (io.BytesIO(data), "requests.jsonl"), "purpose": purpose},
                       content_type="multipart/form-data")


def test_files_are_uploaded_listed_read_and_deleted_by_their_tenant_alone(settings: Settings) -> None:
    owner = api_client(settings)
    made = upload(owner)
    assert made.status_code == 200, made.get_data(as_text=True)
    found = made.get_json()
    assert found["object"] == "file" and found["id"].startswith("file-") and found["purpose"] == "batch"
    assert found["bytes"] == len(BATCH_LINES) and found["filename"] == "requests.jsonl"
    assert owner.get(f"/v1/files/{found['id']}").get_json() == found
    assert owner.get(f"/v1/files/{found['id']}/content").get_data() == BATCH_LINES
    listed = owner.get("/v1/files?limit=100").get_json()
    assert listed["object"] == "list" and found["id"] in [f["id"] for f in listed["data"]]

    stranger, _ = new_tenant(settings)
    for path in (f"/v1/files/{found['id']}", f"/v1/files/{found['id']}/content"):
        openai_error(stranger.get(path), 404, "not_found")
    openai_error(stranger.delete(f"/v1/files/{found['id']}"), 404, "not_found")
    assert found["id"] not in [f["id"] for f in stranger.get("/v1/files").get_json()["data"]]

    assert owner.delete(f"/v1/files/{found['id']}").get_json() == {"id": found["id"], "object": "file",
                                                                   "deleted": True}
    openai_error(owner.get(f"/v1/files/{found['id']}"), 404, "not_found")
    storage = ObjectStorage.from_settings(settings)
    with pytest.raises(ClientError):
        storage.get(f"files/{found['id']}", max_bytes=10**6)


def test_bad_uploads_are_refused_by_name(make_settings: Any) -> None:
    client = api_client(make_settings(max_file_lines=2, max_file_bytes=4096))
    openai_error(upload(client, purpose="fine-tune"), 400, "invalid_value", "purpose")
    assert upload(client, data=b"").status_code == 400
    assert upload(client).status_code == 413  # 3 lines
    assert upload(client, data=b"x" * 5000).status_code == 413
    no_purpose = client.post("/v1/files", data={"file": (io.BytesIO(b"{}"), "a.jsonl")},
                             content_type="multipart/form-data")
    openai_error(no_purpose, 400, "missing_required_parameter", "purpose")
    assert client.post("/v1/files", json={"file": "x"}).status_code == 415


def test_limits_answer_in_openai_shape(settings: Settings) -> None:
    client, _ = new_tenant(settings, KeyLimits(rate_limit="1/minute"))
    assert client.get("/v1/models").status_code == 200
    refused = client.get("/v1/models")
    error = openai_error(refused, 429, "rate_limit_exceeded")
    assert error["type"] == "requests" and refused.headers["Retry-After"]


def test_a_file_may_be_larger_than_a_jobs_body(make_settings: Any) -> None:
    """The Files API has its own body cap: a file between the jobs' cap and the files' is taken."""
    settings = make_settings(max_images_per_job=1, max_image_bytes=2048, max_file_bytes=1024 * 1024)
    assert settings.max_request_bytes < 200_000
    data = BATCH_LINES * 3000
    assert settings.max_request_bytes < len(data) < settings.max_file_bytes
    made = upload(api_client(settings), data=data)
    assert made.status_code == 200, made.get_data(as_text=True)
    assert made.get_json()["bytes"] == len(data)


def test_a_large_file_goes_through_disk_and_s3_in_parts_and_back_whole(settings: Settings) -> None:
    """Past the spool's memory (8 MiB) the upload is on disk, and S3 takes it in parts (boto3 uploads files over
    8 MiB as multipart uploads); its content reads back byte for byte, and its lines are counted across reads."""
    client = api_client(settings)
    line = b'{"custom_id": "r", "method": "POST", "url": "/v1/chat/completions", "body": {}}'
    data = b"\n".join([line] * 150_000)  # 12 MB, no newline at the end
    made = upload(client, data=data)
    assert made.status_code == 413 and "150000 lines" in made.get_json()["error"]["message"]
    data = b"\n".join([line + b" " * 700] * 15_000)
    made = upload(client, data=data)
    assert made.status_code == 200, made.get_data(as_text=True)
    assert made.get_json()["bytes"] == len(data) > 10 * 1024 * 1024
    assert client.get(f"/v1/files/{made.get_json()['id']}/content").get_data() == data


def test_batches_are_created_over_the_tenants_input_files_and_refused_by_name(settings: Settings) -> None:
    (owner, _), (stranger, _) = new_tenant(settings), new_tenant(settings)
    file_id = upload(owner).get_json()["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    created = owner.post("/v1/batches", json=body).get_json()
    assert (created["object"], created["status"], created["input_file_id"]) == ("batch", "validating", file_id)
    assert owner.get(f"/v1/batches/{created['id']}").get_json()["id"] == created["id"]
    assert [b["id"] for b in owner.get("/v1/batches").get_json()["data"]] == [created["id"]]
    openai_error(stranger.get(f"/v1/batches/{created['id']}"), 404, "not_found")
    openai_error(stranger.post(f"/v1/batches/{created['id']}/cancel"), 404, "not_found")
    openai_error(stranger.post("/v1/batches", json=body), 400, "invalid_value", "input_file_id")  # not theirs
    refused: list[tuple[dict[str, Any], str, str]] = [
        ({"endpoint": "/v1/embeddings"}, "invalid_value", "endpoint"),
        ({"completion_window": "48h"}, "invalid_value", "completion_window"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 3600}}, "unsupported_parameter",
         "output_expires_after"),
        ({"metadata": {str(i): "v" for i in range(17)}}, "invalid_value", "metadata"),
    ]
    for wrong, code, param in refused:
        openai_error(owner.post("/v1/batches", json=body | wrong), 400, code, param)
    openai_error(owner.post("/v1/batches", json={k: v for k, v in body.items() if k != "endpoint"}), 400,
                 "missing_required_parameter", "endpoint")
    assert owner.post(f"/v1/batches/{created['id']}/cancel").get_json()["status"] == "cancelling"
