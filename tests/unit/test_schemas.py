"""The wire contract's own rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.schemas import CaptionTask, ErrorBody, GenerationOptions, ImageRef, ImageResult, JobStatus


def test_only_finished_states_are_terminal() -> None:
    terminal = {s for s in JobStatus if s.is_terminal()}
    assert terminal == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}


@pytest.mark.parametrize(
    "options",
    [
        {"max_new_tokens": 0},
        {"max_new_tokens": 129},
        {"num_beams": 9},
        {"repetition_penalty": 0.5},
        {"min_new_tokens": 10, "max_new_tokens": 5},
        {"temperature": 0.7},
    ],
)
def test_generation_options_are_bounded(options: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        GenerationOptions.model_validate(options)


def test_generation_options_are_hashable_and_equal_by_value() -> None:
    assert hash(GenerationOptions(num_beams=3)) == hash(GenerationOptions(num_beams=3))
    assert GenerationOptions() != GenerationOptions(num_beams=3)


def test_an_image_result_has_exactly_one_outcome() -> None:
    ImageResult(index=0, caption="x")
    ImageResult(index=0, error=ErrorBody(code="c", message="m"))
    with pytest.raises(ValidationError):
        ImageResult(index=0)
    with pytest.raises(ValidationError):
        ImageResult(index=0, caption="x", error=ErrorBody(code="c", message="m"))


def test_an_image_result_serialises_only_its_outcome() -> None:
    assert ImageResult(index=1, caption="x").model_dump(mode="json") == {"index": 1, "caption": "x"}
    failed = ImageResult(index=2, error=ErrorBody(code="c", message="m")).model_dump(mode="json")
    assert failed == {"index": 2, "error": {"code": "c", "message": "m"}}


def test_an_image_ref_has_exactly_one_source() -> None:
    with pytest.raises(ValidationError):
        ImageRef(index=0)
    with pytest.raises(ValidationError):
        ImageRef(index=0, key="k", url="https://example.com/a.jpg")
    with pytest.raises(ValidationError):
        ImageRef(index=0, key="k", stored_with_job=True)
    assert ImageRef(index=3, stored_with_job=True).stored_with_job


def test_a_caption_task_round_trips_through_json() -> None:
    task = CaptionTask(job_id="j", images=[ImageRef(index=0, key="k")], prompt="a photo of",
                       options=GenerationOptions(max_new_tokens=10))
    assert CaptionTask.model_validate(task.model_dump(mode="json")) == task
