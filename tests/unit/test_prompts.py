"""Prompts at the API's edge: counted in the served model's own tokens (as the worker feeds them), control characters
refused, and the worker refusing per image what its model has no room for, should one get through."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
from PIL import Image

from common.errors import InferenceError, ValidationFailed
from common.prompts import check_prompt, model_text
from common.settings import Settings
from tests.conftest import TINY_MODEL, api_client
from worker.model.captioner import BlipCaptioner

ROOT = Path(__file__).resolve().parents[2]

PROMPTS = ["a picture of", "A Photo OF", "a red circle, on a blue background!", "un café très noir",
           "一张照片", "a 🐱 on a mat", "supercalifragilisticexpialidocious", "a  picture\u3000of", "x" * 300]


@cache
def tiny() -> BlipCaptioner:
    return BlipCaptioner.load(str(TINY_MODEL), "cpu", "float32")


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_the_api_counts_a_prompt_as_the_worker_tokenizes_it(prompt: str) -> None:
    assert model_text(str(TINY_MODEL)).count(prompt) == len(tiny().prompt_ids(prompt)) - 1  # less BOS


def test_a_model_with_only_a_vocabulary_is_counted_the_same(tmp_path: Path) -> None:
    """A model saved without tokenizer.json (a slow tokenizer's vocab.txt): WordPiece on the vocabulary."""
    vocab = json.loads((TINY_MODEL / "tokenizer.json").read_text())["model"]["vocab"]
    (tmp_path / "vocab.txt").write_text("".join(f"{token}\n" for token in sorted(vocab, key=vocab.get)))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    for prompt in PROMPTS:
        assert model_text(str(tmp_path)).count(prompt) == model_text(str(TINY_MODEL)).count(prompt), prompt


def test_the_model_s_positions_are_read() -> None:
    assert model_text(str(TINY_MODEL)).positions == 64 == tiny().positions


def test_without_a_tokenizer_prompts_are_bounded_by_characters_and_the_api_says_so(
    tmp_path: Path, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="common.prompts"):
        text = model_text(str(tmp_path))
    assert text.tokenizer is None and text.positions is None and "characters only" in caplog.text
    settings = make_settings(model=str(tmp_path), max_prompt_tokens=2)
    check_prompt("a picture of a cat", 30, settings)  # tokens unknown: not refused
    with pytest.raises(ValidationFailed, match="characters"):
        check_prompt("x" * 301, 30, settings)


@pytest.mark.parametrize("char", ["\0", "\n", "\t", "\r", "\x1b", "\x7f", "\x85", "\ud800"])
def test_control_characters_and_lone_surrogates_are_refused(char: str, settings: Settings) -> None:
    with pytest.raises(ValidationFailed, match=f"U\\+{ord(char):04X}\\) at character 7"):
        check_prompt(f"a photo{char} of", 30, settings)


def test_prompts_over_the_token_limit_are_refused_even_when_short_in_characters(
    make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(max_prompt_tokens=5)
    check_prompt("a red circle on a", 30, settings)  # 5 tokens
    with pytest.raises(ValidationFailed, match="6 tokens of the model's tokenizer; the limit is 5"):
        check_prompt("a red circle on a blue", 30, settings)
    with pytest.raises(ValidationFailed, match="6 tokens"):
        check_prompt("!?!?!?", 30, settings)  # six characters, six tokens


def test_a_prompt_and_caption_past_the_model_s_positions_are_refused(settings: Settings) -> None:
    # The tiny model has 64 positions: its start token, the prompt's 3 and at most 60 new ones.
    check_prompt("a picture of", 60, settings)
    with pytest.raises(ValidationFailed, match="room for 60 new tokens after this prompt's 3, not 61"):
        check_prompt("a picture of", 61, settings)
    with pytest.raises(ValidationFailed, match="room for 63 new tokens after this prompt's 0, not 64"):
        check_prompt(None, 64, settings)


def test_jobs_and_bulk_jobs_refuse_bad_prompts_with_422(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(max_prompt_tokens=5)
    client = api_client(settings)
    for prompt in ["a\0picture", "a picture\nof", "a red circle on a blue"]:
        job = client.post("/v1/jobs", json={"images": [png_b64()], "prompt": prompt})
        assert job.status_code == 422 and job.get_json()["error"]["code"] == "validation_error", job.get_json()
        form = client.post("/v1/jobs", data={"images": (io.BytesIO(base64.b64decode(png_b64())), "a.png"),
                                             "prompt": prompt})
        assert form.status_code == 422 and form.get_json()["error"]["code"] == "validation_error", form.get_json()
        bulk = client.post("/v1/bulk", json={"source": {"bucket": settings.s3_bucket}, "prompt": prompt})
        assert bulk.status_code == 422 and bulk.get_json()["error"]["code"] == "validation_error", bulk.get_json()
    assert client.post("/v1/jobs", json={"images": [png_b64()], "prompt": "a picture of"}).status_code == 202


def test_the_worker_refuses_a_prompt_its_model_has_no_room_for_before_running_it() -> None:
    image = Image.new("RGB", (36, 36), (255, 0, 0))
    with pytest.raises(InferenceError, match="takes 40 of the model's 64 text positions"):
        tiny().caption([image], "a " * 40, {"max_new_tokens": 30})
    assert tiny().caption([image], "a " * 30, {"max_new_tokens": 30})  # 31 + 30 fit in 64


def test_a_hub_model_s_tokenizer_is_read_from_the_local_cache_and_never_downloaded(tmp_path: Path) -> None:
    """For a hub id, the Hugging Face cache's copy (as a worker's download leaves it); without one, no wait on the
    hub (unreachable here, it retries for most of a minute), only the warning."""
    snapshot = tmp_path / "hub" / "models--acme--tiny-blip" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("tokenizer.json", "config.json"):
        shutil.copy(TINY_MODEL / name, snapshot / name)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    probe = ("from common.prompts import model_text\n"
             "for model in ('acme/tiny-blip', 'acme/not-cached'):\n"
             "    text = model_text(model)\n"
             "    print(text.count('a picture of'), text.positions)\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", probe], env=os.environ | {"HF_HOME": str(tmp_path)}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split("\n")[:2] == ["3 64", "None None"], done.stderr
    assert time.monotonic() - started < 20, "waited on the hub"
