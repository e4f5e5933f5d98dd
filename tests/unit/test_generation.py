"""The fast decoding loops against transformers' generate(), token for token, on the trained tiny model."""

from __future__ import annotations

import random
from functools import cache
from typing import Any

import pytest
import torch
from transformers import BlipForConditionalGeneration, BlipProcessor

from tests.conftest import TINY_MODEL
from tests.fixtures.shapes import random_scene, render
from worker.model import generation as generation_module
from worker.model.fast_blip import GRAPH_MAX_ROWS, FastBlip
from worker.model.generation import DecodeOptions, SpecialTokens, generate


@cache
def loaded() -> tuple[BlipForConditionalGeneration, BlipProcessor, FastBlip]:
    model = BlipForConditionalGeneration.from_pretrained(str(TINY_MODEL)).eval()
    processor = BlipProcessor.from_pretrained(str(TINY_MODEL))
    return model, processor, FastBlip(model, torch.device("cpu"), torch.float32)


def text_config() -> Any:
    return loaded()[0].config.text_config


@cache
def pixel_values() -> torch.Tensor:
    rng = random.Random(5)
    images = [render(random_scene(rng), rng.choice([(48, 48), (640, 480), (300, 500)]), rng) for _ in range(10)]
    _, processor, _ = loaded()
    pixels: torch.Tensor = processor(images=images, return_tensors="pt")["pixel_values"]
    return pixels


def prompt_ids(prompt: str | None) -> list[int]:
    """BOS, then the prompt's tokens without the tokenizer's [CLS] and [SEP], as BLIP's generate() feeds them."""
    inner = loaded()[1].tokenizer(prompt).input_ids[1:-1] if prompt else []
    return [text_config().bos_token_id, *inner]


def generate_tokens(prompt: str | None, generation: dict[str, float]) -> list[list[int]]:
    """generate()'s output per image: prompt and generated tokens, cut after EOS (the rest is fill)."""
    model, processor, _ = loaded()
    eos = text_config().sep_token_id
    kwargs: dict[str, Any] = {"max_new_tokens": 30, **generation, "do_sample": False}
    if prompt:
        kwargs["input_ids"] = processor.tokenizer([prompt] * len(pixel_values()), return_tensors="pt").input_ids
    with torch.inference_mode():
        rows = model.generate(pixel_values=pixel_values(), **kwargs).tolist()
    prompt_len = len(prompt_ids(prompt))
    out = []
    for row in rows:
        generated = row[prompt_len:]
        out.append(row[:prompt_len] + (generated[: generated.index(eos) + 1] if eos in generated else generated))
    return out


# Past the trained sentence the forced tokens differ per image, and so do the steps at which captions end.
UNEVEN_GREEDY: dict[str, float] = {"max_new_tokens": 16, "min_new_tokens": 8}
UNEVEN_BEAMS: dict[str, float] = {"num_beams": 3, "max_new_tokens": 20, "min_new_tokens": 8}

GENERATIONS: list[dict[str, float]] = [
    {},
    {"max_new_tokens": 4},
    {"num_beams": 3},
    {"num_beams": 2, "max_new_tokens": 5},
    # Forced long captions: past the trained sentence the model is unsure, so beams and penalties matter.
    {"max_new_tokens": 12, "min_new_tokens": 12},
    UNEVEN_GREEDY,
    UNEVEN_BEAMS,
    {"num_beams": 3, "max_new_tokens": 12, "min_new_tokens": 12},
    {"num_beams": 4, "max_new_tokens": 16, "min_new_tokens": 9},
    {"repetition_penalty": 1.5, "max_new_tokens": 14, "min_new_tokens": 10},
    {"repetition_penalty": 2.5, "num_beams": 4, "max_new_tokens": 14, "min_new_tokens": 10},
]


# The CPU's own path, and the GPU's choices run here on CPU in fp32: one fused kernel for the cross-attention,
# and the same-shape steps (FastBlip.step_at: the whole cache, later positions masked) that a GPU replays as
# CUDA graphs.
VARIANTS: dict[str, dict[str, object]] = {
    "cpu-path": {},
    "fused-cross-attention": {"fused_cross_attention": True},
    "static-steps": {"step_mode": "static"},
}


@pytest.mark.parametrize("prompt", [None, "a photo of"])
@pytest.mark.parametrize("generation", GENERATIONS)
@pytest.mark.parametrize("compact_share", [0.0, 2.0], ids=["drop-finished-at-once", "never-drop"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_decoding_gives_generates_tokens(
    prompt: str | None, generation: dict[str, float], compact_share: float, variant: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(generation_module, "COMPACT_SHARE", compact_share)
    model, _, fast = loaded()
    for name, value in VARIANTS[variant].items():
        monkeypatch.setattr(fast, name, value)
    static_steps = count_calls(monkeypatch, fast, "step_at")
    ids = prompt_ids(prompt)
    options = DecodeOptions.parse(generation, model.generation_config)
    assert options is not None
    with torch.inference_mode():
        image_tokens = fast.encode(pixel_values())
        ours = generate(fast, image_tokens, ids, options, SpecialTokens(text_config().sep_token_id))
    expected = generate_tokens(prompt, generation)
    assert [ids + tokens for tokens in ours] == expected
    assert len({tuple(tokens) for tokens in expected}) > 3  # distinct images, distinct captions: a real test
    assert bool(static_steps) == (variant == "static-steps")  # the variant really ran


def count_calls(monkeypatch: pytest.MonkeyPatch, target: object, name: str) -> list[object]:
    calls: list[object] = []
    original = getattr(target, name)

    def counted(*args: object) -> object:
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(target, name, counted)
    return calls


@pytest.mark.parametrize("generation", [UNEVEN_GREEDY, UNEVEN_BEAMS])
def test_some_captions_finish_while_others_continue(generation: dict[str, float]) -> None:
    # What makes the drop-finished path above do something: rows leave the batch at different steps.
    assert len({len(tokens) for tokens in generate_tokens(None, generation)}) > 2


@pytest.mark.parametrize(
    "generation",
    [{"do_sample": True}, {"length_penalty": 0.5}, {"no_repeat_ngram_size": 2}, {"num_return_sequences": 2}],
)
def test_options_the_fast_loops_do_not_implement_go_to_generate(generation: dict[str, float]) -> None:
    assert DecodeOptions.parse(generation, loaded()[0].generation_config) is None


def test_a_model_default_the_fast_loops_do_not_implement_goes_to_generate() -> None:
    model, _, _ = loaded()
    config = model.generation_config.__class__.from_dict({**model.generation_config.to_dict(), "length_penalty": 2.0})
    assert DecodeOptions.parse({}, config) is None
    assert DecodeOptions.parse({}, model.generation_config) == DecodeOptions()


def test_the_vision_encoder_matches_transformers() -> None:
    model, _, fast = loaded()
    with torch.inference_mode():
        expected = model.vision_model(pixel_values=pixel_values()).last_hidden_state
        assert torch.allclose(fast.encode(pixel_values()), expected, atol=1e-4)


@pytest.mark.parametrize(
    ("rows", "expected"), [(10, "step_at"), (10 * 3, "step_at"), ((GRAPH_MAX_ROWS // 10 + 1) * 10, "step")]
)
def test_auto_step_mode_uses_static_steps_for_small_batches_only(
    rows: int, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "auto" (the GPU default) picks graphs, here their static steps, up to GRAPH_MAX_ROWS decoder rows.
    _, _, fast = loaded()
    monkeypatch.setattr(fast, "step_mode", "auto")
    beams = 3 if rows == 30 else 1
    steps = {name: count_calls(monkeypatch, fast, name) for name in ("step", "step_at")}
    images = pixel_values().repeat(rows // beams // 10, 1, 1, 1)
    options = DecodeOptions(max_new_tokens=4, min_new_tokens=4, num_beams=beams)
    with torch.inference_mode():
        generate(fast, fast.encode(images), prompt_ids(None), options, SpecialTokens(text_config().sep_token_id))
    assert len(steps[expected]) == 3 + (expected == "step")  # the prompt always goes through step()


def test_a_step_that_cannot_be_captured_as_a_graph_decodes_without_graphs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model, _, fast = loaded()
    monkeypatch.setattr(fast, "step_mode", "graph")
    monkeypatch.setattr(generation_module, "can_capture", lambda tensor: True)  # as on a GPU

    class Uncapturable:
        def __init__(self, *args: object) -> None:
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(generation_module, "_StepGraph", Uncapturable)
    generation: dict[str, float] = {"num_beams": 3, "max_new_tokens": 12, "min_new_tokens": 12}
    options = DecodeOptions.parse(generation, model.generation_config)
    assert options is not None
    with torch.inference_mode():
        ours = generate(fast, fast.encode(pixel_values()), prompt_ids(None), options,
                        SpecialTokens(text_config().sep_token_id))
    assert [prompt_ids(None) + tokens for tokens in ours] == generate_tokens(None, generation)
    assert fast.step_mode == "dynamic" and "decoding without graphs" in caplog.text
