"""POST /v1/responses (the Responses API, not streamed): one `input_image` in, its caption out as `output_text` in a
response object. The same validation, captioning and refusals as chat completions."""

from __future__ import annotations

import json

from flask import Blueprint, Response, request

from api.openai_compat.captioning import caption, check_model, parse_body
from common.openai_answers import response_object
from common.openai_requests import ResponseRequest

blueprint = Blueprint("openai_responses", __name__, url_prefix="/v1/responses")


@blueprint.post("")
def create_response() -> Response:
    body = parse_body(request, ResponseRequest)
    model_id = check_model(body.model)
    return Response(json.dumps(response_object(caption(body.ask()), model_id, body)), mimetype="application/json")
