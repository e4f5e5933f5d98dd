"""The rule that turns a chat message's text into BLIP's prompt: questions and instructions ask for the
unconditional caption; a caption's start is continued."""

from __future__ import annotations

import pytest

from common.caption_prefix import caption_prefix

UNCONDITIONAL = [
    "", "   ", "What is in this image?", "What's in this picture", "Describe this photo.", "Describe the image",
    "describe this image in detail", "Caption this image.", "Can you describe what you see?",
    "Please describe the image.", "Tell me about this picture", "Write a caption for this photo",
    "Generate a short description", "Give me a one-line caption", "Who is in the photo?", "How many dogs are there?",
    "Is there a cat?", "Explain this image.", "What does this show?", "Summarize the picture", "I want a caption",
    "Provide alt text for this image", "List the objects in the image", "Identify the animal.", "Look at this!",
    "A dog on a beach. Describe it.",
]
PREFIXES = [
    "a photograph of", "a painting of", "a picture of", "an image of", "A photo of", "the view from",
    "two dogs", "a close up of",
]


@pytest.mark.parametrize("text", UNCONDITIONAL)
def test_questions_and_instructions_ask_for_the_unconditional_caption(text: str) -> None:
    assert caption_prefix(text) is None


@pytest.mark.parametrize("text", PREFIXES)
def test_a_captions_start_is_continued(text: str) -> None:
    assert caption_prefix(text) == text
