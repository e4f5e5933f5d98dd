"""GET /v1/models and GET /v1/models/{id}: the one model this service serves (CAPTIONER_MODEL_NAME)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.services import services
from common.errors import ModelNotFound
from common.openai_objects import ModelList, ModelObject

blueprint = Blueprint("openai_models", __name__, url_prefix="/v1/models")

# When the served model "was created", as OpenAI's model objects say: BLIP's release, a fixed date, so the answer
# does not change from one process to the next.
_CREATED = 1_643_155_200  # 2022-01-26


def _model() -> ModelObject:
    return ModelObject(id=services().settings.served_model_id, created=_CREATED, owned_by="captioner")


@blueprint.get("")
def list_models() -> Response:
    return jsonify(ModelList(data=[_model()]).model_dump())


@blueprint.get("/<path:model_id>")
def get_model(model_id: str) -> Response:
    """A model by id; hub ids hold a slash (Salesforce/blip-image-captioning-base), hence a path."""
    found = _model()
    if model_id != found.id:
        raise ModelNotFound(f"The model {model_id!r} does not exist here; this service serves {found.id!r}.")
    return jsonify(found.model_dump())
