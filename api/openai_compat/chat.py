"""POST /v1/chat/completions: one image in, its caption out as a chat completion (or a stream of chunks).

The request is validated (common/openai_requests.py: what BLIP cannot honour is refused with a `400` naming the
parameter), captioned as a native job (api/openai_compat/captioning.py), and answered in OpenAI's shape
(common/openai_answers.py).
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, request, stream_with_context

from api.openai_compat.captioning import caption, check_model, parse_body
from common.openai_answers import chat_completion, completion_chunks
from common.openai_requests import ChatCompletionRequest

blueprint = Blueprint("openai_chat", __name__, url_prefix="/v1/chat")


@blueprint.post("/completions")
def create_chat_completion() -> Response:
    body = parse_body(request, ChatCompletionRequest)
    model_id = check_model(body.model)
    completion = chat_completion(caption(body.ask()), model_id)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return Response(stream_with_context(completion_chunks(completion, include_usage)),
                        mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})
    return Response(json.dumps(completion), mimetype="application/json")
